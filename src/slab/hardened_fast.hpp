// SPDX-License-Identifier: Apache-2.0
#pragma once
// Hardened mode's thread-cache hit path. The facade's inline path computes the class and finds
// the thread cache as for any resource; a hardened resource's thread caches carry a different id
// (hardened_id_bit), so the inline id test fails and a second test tail-jumps, with the cache and
// the class, to allocate_hardened / deallocate_hardened (hardened_hit.cpp), which use these.
// An unhardened resource never gets here. The careful, out-of-line checks are in hardened.cpp;
// invariants H1 and H2 are stated there, V1 in hardened_types.hpp (known_slabs).
//
// The common case costs one combined test per call: an address x is an object boundary of the
// class in slab s = x & slab_mask iff d = x - s - offset has d < span and d * div_mul < div_mul
// (hardened_geom in state.hpp: no division, no shift) — once s is known to be a live slab of this
// resource and class: for a pop (x the decoded link) the popped object's slab (validated when the
// object became the head), for a push (x the freed pointer) the head's slab (live, validated).
// When that fails — x in another slab, null, not at a boundary, a bad tag, an empty bin — the
// function returns "no" and the caller tail-calls pop_far / push_far (hardened_hit.cpp), which
// accept a slab this thread validated before (known_slabs: one load and two compares, V1) and else
// check everything (page map, slab header), abort naming the pointer when something is bad, and
// remember the slab.
#include <cstdint>

#include "../page/internal.hpp"
#include "state.hpp"

namespace bsalloc::detail {

// The full checks (the far and slow paths): p is an object boundary of class c in slab s (p's
// slab, by masking), and s is a slab of st for class c (H2): a user-space address whose page the
// page map knows (when the slabs come from page_resources) before its header is read.
inline bool is_object(const slab_state& st, const void* p, int c, const slab* s) {
  const auto& g = st.geom[static_cast<std::size_t>(c)];
  const std::uint64_t x =
      reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(s) - g.offset;
  return x < g.span && (x & g.low) == 0 && x * g.inv <= g.lim;
}
inline bool is_slab(const slab_state& st, const slab* s, int c) {
  return (reinterpret_cast<std::uintptr_t>(s) >> 47) == 0 &&
         (!st.pages_known || page_map_find(s).owner != nullptr) && s->magic == slab_magic &&
         s->cls == c && s->res == &st;
}

/// x is an object boundary of class geometry h in the slab at s.
[[gnu::always_inline]] inline bool at_boundary(const hardened_geom& h, std::uintptr_t s,
                                               std::uintptr_t x) noexcept {
  const std::uint64_t d = x - s - h.offset;
  return d < h.span && d * h.div_mul < h.div_mul;
}

/// x is an object boundary of class geometry h in the slab that holds address `base`.
[[gnu::always_inline]] inline bool in_slab_of(const hardened_geom& h, std::uintptr_t base,
                                              std::uintptr_t x) noexcept {
  return at_boundary(h, base & h.slab_mask, x);
}

/// The slab at s (an address's slab, by masking) is one this thread validated for class c (V1).
[[gnu::always_inline]] inline bool known_slab(const slab_state& st, const thread_cache& tc,
                                              std::uintptr_t s, std::size_t c) noexcept {
  return tc.known.slab[known_slot(s)] == (s | c) &&
         tc.known.epoch == st.slab_deaths.load(std::memory_order_relaxed);
}

/// hardened_pop's other case (hardened_hit.cpp): the head's tag is intact and its link decodes to
/// `next`, not in the head's slab: accepted in a known slab (V1), else the full check (null: the
/// last object); then the pop.
[[gnu::noinline]] void* pop_far(const slab_state& st, bin& b, int c, std::uintptr_t next);
/// The full check of the head of bin c of tc (page map, header; aborts naming it if its link or
/// its tag is bad), then the pop; the slab of the link remembered (V1).
[[gnu::noinline]] void* pop_check(const slab_state& st, thread_cache& tc, int c);

/// Pops the head p of bin b, class c (not empty), when its tag is intact and its link checks out
/// within p's own slab (H2 for the new head); else tail-calls pop_check (a bad tag: the full
/// check names p) or pop_far (the link leaves p's slab, or is null). No other call, so no frame.
[[gnu::always_inline]] inline void* hardened_pop(const slab_state& st, bin& b, std::size_t c,
                                                 void* p) {
  const hardened_geom& h = st.hard[c];
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto* w = static_cast<std::uintptr_t*>(p);
  BSALLOC_UNPOISON(w + 1, sizeof *w);
  if (w[1] != (a ^ st.tag_key)) [[unlikely]]
    return pop_check(st, cache_of(b, c), static_cast<int>(c));  // names p
  const std::uintptr_t next = w[0] ^ (a >> 12) ^ st.link_key;
  if (!in_slab_of(h, a, next)) [[unlikely]]
    return pop_far(st, b, static_cast<int>(c), next);
  BSALLOC_UNPOISON(p, st.geom[c].size);
  b.head = reinterpret_cast<void*>(next);
  b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  w[0] = 0;
  w[1] = 0;
  return p;
}

/// hardened_push's other case (hardened_hit.cpp): p in a known slab (V1), else every check of
/// take_back (page map, header, boundary, double free; aborts naming p), then the push. Bin c
/// has room.
[[gnu::noinline]] void push_far(const slab_state& st, bin& b, int c, void* p, std::size_t bytes,
                                std::size_t alignment);

/// Pushes p (class c) onto bin b, which has room, when p is an object boundary
/// in the head's slab (live, validated) that the slab has handed out (before its tail) and that
/// does not carry its free tag; false otherwise — an empty bin, p in another slab, a pointer
/// never handed out, a double free: the caller then tail-calls push_far. No call in here.
[[gnu::always_inline]] inline bool hardened_push(const slab_state& st, bin& b, std::size_t c,
                                                 void* p) {
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
  // The count reloaded rather than kept from the limit test: one register fewer to save.
  b.count.store(b.count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return true;
}

}  // namespace bsalloc::detail
