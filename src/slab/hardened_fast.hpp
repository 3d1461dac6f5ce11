// SPDX-License-Identifier: Apache-2.0
#pragma once
// Hardened mode's thread-cache hit path. The facade's inline path computes the class and finds
// the bin as for any resource; a hardened resource's thread caches carry a different id
// (hardened_id_bit), so the inline id test fails and a second test tail-jumps, with the bin and
// the class, to allocate_hardened / deallocate_hardened (end of hardened.cpp), which use these.
// An unhardened resource never gets here. The careful, out-of-line checks are in hardened.cpp;
// invariants H1 and H2 are stated there.
//
// The common case costs one combined test per call: an address x is an object boundary of the
// class inside the slab that holds `base` iff d = x - (base & slab_mask) - offset has d < span
// and d * div_mul < div_mul (hardened_geom in state.hpp: no division, no shift). For a pop, base
// is the popped object (its slab was validated when it became the head), x the decoded link;
// for a push, base is the bin's head (live, so its slab is live and was validated), x the freed
// pointer. When that fails — x in another slab, null, not at a boundary, a bad tag, an empty
// bin — the function returns "no" and the caller tail-calls pop_far / push_far, which check
// everything (page map, slab header) and abort naming the pointer when something is bad.
#include <cstdint>

#include "state.hpp"

namespace bsalloc::detail {

/// x is an object boundary of class geometry h in the slab that holds `base`.
[[gnu::always_inline]] inline bool in_slab_of(const hardened_geom& h, std::uintptr_t base,
                                              std::uintptr_t x) noexcept {
  const std::uint64_t d = x - (base & h.slab_mask) - h.offset;
  return d < h.span && d * h.div_mul < h.div_mul;
}

/// Pops the head p of b (class c, not empty) when its link checks out within p's own slab (H2
/// for the new head) and its tag is intact; nullptr otherwise (a null link included) — the
/// caller then tail-calls pop_far, which checks the link fully (another slab: page map, header)
/// and aborts naming the object if the link or the tag is bad. No call in here, so no frame.
[[gnu::always_inline]] inline void* hardened_pop(const slab_state& st, bin& b, std::size_t c,
                                                 void* p) {
  const hardened_geom& h = st.hard[c];
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto* w = static_cast<std::uintptr_t*>(p);
  const std::uintptr_t next = w[0] ^ (a >> 12) ^ st.link_key;
  if (!in_slab_of(h, a, next)) [[unlikely]]
    return nullptr;
  BSALLOC_UNPOISON(w + 1, sizeof *w);
  if (w[1] != (a ^ st.tag_key)) [[unlikely]]
    return nullptr;
  BSALLOC_UNPOISON(p, st.geom[c].size);
  b.head = reinterpret_cast<void*>(next);
  b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  w[0] = 0;
  w[1] = 0;
  return p;
}

/// hardened_pop's other case (hardened.cpp): the full check of the head's link (null: the last
/// object), then the pop.
[[gnu::noinline]] void* pop_far(const slab_state& st, bin& b, int c);
/// hardened_push's other case (hardened.cpp): every check of take_back (page map, header,
/// boundary, double free; aborts naming p), then the push. b has room.
[[gnu::noinline]] void push_far(const slab_state& st, bin& b, int c, void* p, std::size_t bytes,
                                std::size_t alignment);

/// Pushes p (class c) onto b, which has room (n objects), when p is an object boundary in the
/// head's slab (live, validated) that the slab has handed out (before its tail) and that does
/// not carry its free tag; false otherwise — an empty bin, p in another slab, a pointer never
/// handed out, a double free: the caller then tail-calls push_far. No call in here.
[[gnu::always_inline]] inline bool hardened_push(const slab_state& st, bin& b, std::uint32_t n,
                                                 std::size_t c, void* p) {
  const hardened_geom& h = st.hard[c];
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const auto head = reinterpret_cast<std::uintptr_t>(b.head);
  if (!in_slab_of(h, head, a)) [[unlikely]]
    return false;
  // Never handed out (the slab's untouched tail): push_far names it.
  if (a >= reinterpret_cast<std::uintptr_t>(
               tail_of(reinterpret_cast<const slab*>(head & h.slab_mask)))) [[unlikely]]
    return false;
  auto* w = static_cast<std::uintptr_t*>(p);
  const std::uintptr_t tag = a ^ st.tag_key;
  BSALLOC_UNPOISON(w + 1, sizeof *w);
  if (w[1] == tag) [[unlikely]]
    return false;
  w[1] = tag;
  BSALLOC_POISON_FREE(p, st.geom[c].size);
  w[0] = head ^ (a >> 12) ^ st.link_key;
  b.head = p;
  b.count.store(n + 1, std::memory_order_relaxed);
  return true;
}

}  // namespace bsalloc::detail
