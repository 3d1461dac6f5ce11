// SPDX-License-Identifier: Apache-2.0
#pragma once
// Hardened mode's thread-cache hit path, inlined into the facade's do_allocate / do_deallocate
// behind the one flag test at their slow label (an unhardened resource never gets here). The
// careful, out-of-line checks are in hardened.cpp; invariants H1 and H2 are stated there.
//
// The common case costs one combined test per call: an address x is an object boundary of class
// c inside the slab of `base` iff d = x - (base & slab_mask) - offset has d < span,
// d & low == 0 and d * inv <= lim (a division-free divisibility test with no variable shift;
// class_geom in state.hpp). For a pop, base is the popped object (its slab was validated when it
// became the head), x the decoded link; for a push, base is the bin's head (live, so its slab is
// live and was validated), x the freed pointer. When that fails — x in another slab, not at a
// boundary, a bad tag, an empty bin — the function returns "no" and the caller tail-calls the
// slow path, which checks everything (page map, slab header) and aborts naming the pointer when
// something is bad.
#include <cstdint>

#include "state.hpp"

namespace bsalloc::detail {

/// x is an object boundary of class geometry g in the slab that holds `base`.
[[gnu::always_inline]] inline bool in_slab_of(const class_geom& g, std::uintptr_t base,
                                              std::uintptr_t x) noexcept {
  const std::uint64_t d = x - (base & g.slab_mask) - g.offset;
  return d < g.span && (d & g.low) == 0 && d * g.inv <= g.lim;
}

/// The hardened bin for (bytes, alignment) as the lean path serves it, or nullptr (the slow path
/// decides). c: its class.
[[gnu::always_inline]] inline bin* hardened_bin(const slab_state& st, std::uint32_t slot,
                                                std::uint64_t id, std::size_t bytes,
                                                std::size_t alignment, int& c) noexcept {
  if (bytes >= st.lean_bound || alignment > inline_max_align) return nullptr;
  c = bytes <= small_max ? small_class(bytes, alignment) : medium_class(bytes, alignment);
  c += c == 0;  // room for the link and the tag: 8 B takes 16 B
  // Classes not in use and bad_class (an alignment not a power of two) need no test: their bins
  // are always empty and full (limit 0), so pop and push both go to the slow path.
  const tls_slot& ts = t_slots[slot];
  if (ts.id != id) return nullptr;
  return &ts.cache->bins[static_cast<std::size_t>(c)];
}

/// Pops the head of b (class c, not empty) when its link checks out within its own slab (H2
/// for the new head) and its tag is intact; nullptr otherwise — the caller then tail-calls
/// pop_far, which checks the link fully (another slab: page map, header) and aborts naming the
/// object if the link or the tag is bad. No call in here, so no frame.
[[gnu::always_inline]] inline void* hardened_pop(const slab_state& st, bin& b, int c) {
  void* p = b.head;
  const class_geom& g = st.geom[static_cast<std::size_t>(c)];
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto* w = static_cast<std::uintptr_t*>(p);
  const std::uintptr_t next = w[0] ^ (a >> 12) ^ st.link_key;
  if (next && !in_slab_of(g, a, next)) [[unlikely]]
    return nullptr;
  BSALLOC_UNPOISON(w + 1, sizeof *w);
  if (w[1] != (a ^ st.tag_key)) [[unlikely]]
    return nullptr;
  BSALLOC_UNPOISON(p, g.size);
  b.head = reinterpret_cast<void*>(next);
  b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  w[0] = 0;
  w[1] = 0;
  return p;
}

/// hardened_pop's other case (hardened.cpp): the full check of the head's link, then the pop.
[[gnu::noinline]] void* pop_far(const slab_state& st, bin& b, int c);
/// hardened_push's other case (hardened.cpp): every check of take_back (page map, header,
/// boundary, double free; aborts naming p), then the push. b has room.
[[gnu::noinline]] void push_far(const slab_state& st, bin& b, int c, void* p, std::size_t bytes,
                                std::size_t alignment);

/// Pushes p (class c) onto b, which has room, when p is an object boundary in the head's slab
/// (live, validated) that does not carry its free tag; false otherwise — an empty bin, p in
/// another slab, a double free: the caller then tail-calls push_far. No call in here.
[[gnu::always_inline]] inline bool hardened_push(const slab_state& st, bin& b, std::uint32_t n,
                                                 int c, void* p) {
  const class_geom& g = st.geom[static_cast<std::size_t>(c)];
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const auto head = reinterpret_cast<std::uintptr_t>(b.head);
  if (!in_slab_of(g, head, a)) [[unlikely]]
    return false;
  auto* w = static_cast<std::uintptr_t*>(p);
  const std::uintptr_t tag = a ^ st.tag_key;
  BSALLOC_UNPOISON(w + 1, sizeof *w);
  if (w[1] == tag) [[unlikely]]
    return false;
  w[1] = tag;
  BSALLOC_POISON_FREE(p, g.size);
  w[0] = head ^ (a >> 12) ^ st.link_key;
  b.head = p;
  b.count.store(n + 1, std::memory_order_relaxed);
  return true;
}

}  // namespace bsalloc::detail
