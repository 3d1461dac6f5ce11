// SPDX-License-Identifier: Apache-2.0
#pragma once
// malloc / free's inline fast path: a hit in the calling thread's cache of the engine's slab
// layer, reached without the pmr interface. Everything else (a miss, a full bin, no cache yet,
// a large or foreign pointer, checked / hardened mode, memcheck, re-entrant calls, the first
// call) goes to the out-of-line paths in api.cpp and engine.cpp.
//
//   malloc(n), n <= 64 KiB   class = malloc_class[(n + 15) / 16]: one load (every class a
//                            request of alignment 16 can get is a multiple of 16, so sizes
//                            within one 16-byte step share a class); then the thread's slot
//                            for the engine's slab_state (t_slots[slot].id == id), and a pop
//                            from bin[class].
//   free(p)                  the page map says p is on the engine's slab pages (a slab object
//                            or nothing: slab pages hold only slabs); the slab is p masked to
//                            1 MiB, its header names the class; a push onto bin[class] if it
//                            is below its limit.
// Both are the slab layer's own inline bin pop / push (slab_resource::do_allocate /
// do_deallocate), on the same structures (src/slab/state.hpp): the thread cache cannot tell
// which path an object took.
//
// Invariants
//   F1  g_fast.id is the engine's slab_state id iff the engine is built and neither checked
//       mode nor the careful path (hardened, memcheck) is on; otherwise an id no resource has
//       (no_fast_id), so that no thread's slot matches and every call takes the slow path.
//   F2  g_fast.owner is &engine.slab_pages while g_fast.id is live, else no_owner.
//   F3  malloc_class[i] is the class of a 16-aligned request of 16 * i bytes (i = 0: 16 bytes),
//       and class_size_of(malloc_class[i]) >= 16 * i, a multiple of 16.
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "../page/internal.hpp"
#include "../slab/state.hpp"
#include "../slab/unsized.hpp"
#include "engine.hpp"

namespace bsalloc::detail::mx {

constexpr std::uint64_t no_fast_id = ~std::uint64_t{0};  // never a resource's id (F1)

struct fast_state {
  std::atomic<std::uint64_t> id{no_fast_id};    // F1
  std::atomic<std::uintptr_t> owner{no_owner};  // F2: &engine.slab_pages while id is live
  std::atomic<std::uint32_t> slot{no_slot};     // the slab_state's slot (no_slot: t_slots[0])
};
extern fast_state g_fast;

/// F3: the class of malloc(n) for n <= 64 KiB, indexed by (n + 15) / 16.
inline constexpr auto malloc_class = [] {
  std::array<std::uint8_t, max_small / 16 + 1> t{};
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<std::uint8_t>(size_class(i == 0 ? 16 : i * 16, 16));
  return t;
}();
static_assert(class_size_of(malloc_class[2]) == 32 && class_size_of(malloc_class[0]) == 16);
static_assert(class_size_of(malloc_class[(1025 + 15) / 16]) == 1152);
static_assert(class_size_of(malloc_class[max_small / 16]) == max_small);

/// The calling thread's slot for the engine's slab layer, or null: no cache yet, the fast path
/// is off, or the thread is inside bsalloc (t_busy: its cache may be in the middle of a change).
/// The slot's cache is never null when its id matches.
inline const tls_slot* fast_slot() noexcept {
  const tls_slot& s = t_slots[g_fast.slot.load(std::memory_order_relaxed)];
  if (s.id != g_fast.id.load(std::memory_order_relaxed) || t_busy) [[unlikely]]
    return nullptr;
  return &s;
}

/// A thread-cache hit for malloc(bytes), bytes <= 64 KiB, or null.
inline void* fast_malloc(std::size_t bytes) noexcept {
  const tls_slot* s = fast_slot();
  if (!s) [[unlikely]]
    return nullptr;
  const std::size_t cls = malloc_class[(bytes + 15) >> 4];
  bin& b = s->cache->bins[cls];
  void* p = b.head;
  if (!p) [[unlikely]]
    return nullptr;
  b.head = link_get(p, 0);
  b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  BSALLOC_UNPOISON(p, class_size_of(static_cast<int>(cls)));
  return p;
}

/// True when the fast path is on and the page map says p is on the engine's slab pages: p's
/// slab header is readable (p is a slab object, or no live pointer at all — checked mode's
/// concern, which has the fast path off). page_map_find() with only the owner compared.
inline bool fast_owned(const void* p) noexcept {
  const std::uint64_t pfn = reinterpret_cast<std::uintptr_t>(p) >> page_shift;
  if (pfn >> (page_map_address_bits - page_shift)) [[unlikely]]
    return false;
  const std::uint64_t* leaf =
      page_map_root[pfn >> page_map_leaf_bits].load(std::memory_order_acquire);
  if (!leaf) [[unlikely]]
    return false;
  const std::uint64_t e =
      std::atomic_ref(
          const_cast<std::uint64_t&>(leaf[pfn & ((std::uint64_t{1} << page_map_leaf_bits) - 1)]))
          .load(std::memory_order_acquire);
  return (e >> 8) == g_fast.owner.load(std::memory_order_relaxed);
}

/// Pushes p (fast_owned) onto its bin; false when the bin is full, the thread has no cache or
/// is inside bsalloc.
inline bool fast_free(void* p) noexcept {
  const tls_slot* s = fast_slot();
  if (!s) [[unlikely]]
    return false;
  // F1: the fast path runs only for an engine neither checked nor careful, whose slabs colour
  // (enable_fast asserts it): the mask is a constant here.
  const std::uint16_t cls = slab_at<slab>(p, slab_bytes, slab_colour_mask(slab_bytes, true))->cls;
  bin& b = s->cache->bins[cls];
  const std::uint32_t n = b.count.load(std::memory_order_relaxed);
  if (n >= b.limit) [[unlikely]]
    return false;
  link_set(p, b.head, 0);
  b.head = p;
  b.count.store(n + 1, std::memory_order_relaxed);
  BSALLOC_POISON_FREE(p, class_size_of(cls));
  return true;
}

/// Turns the fast path on for engine e (start(), after the engine is built; F1, F2).
void enable_fast(const slab_state& st, bool checked) noexcept;

}  // namespace bsalloc::detail::mx
