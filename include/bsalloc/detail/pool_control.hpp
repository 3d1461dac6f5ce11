// SPDX-License-Identifier: Apache-2.0
#pragma once
// object_pool's control block, its lifetime protocol and its geometry (the slab core's, with
// compile-time sizes). Part of <bsalloc/object_pool.hpp>; include that.
//
// Lifetime protocol
//   The control block lives while handles > 0 or in_use > 0, both counted under its lock. Whoever
//   brings the second of them to zero (the last handle's destructor, or the free of the last
//   object after the last handle is gone — they may race on two threads, the lock orders them)
//   sees both at zero under the lock, and after unlocking returns every slab and the control
//   block upstream: nobody else can reach the control block any more. Everything a thread needs
//   after unlocking (the upstream pointer) it copies out before unlocking (pool_after_unlock).
//   With no handle left no allocation can happen, so slabs that become empty go back upstream at
//   once (max_empty() is 0), and the kept empty slab goes back when the last handle does.
//   Thread caches (thread-safe, unchecked pools; pool_cache.hpp): a slot in a thread's cache
//   counts as in use (in_use and the slabs' `used` include it), so the control block cannot die
//   while any thread caches its slots. When the last handle goes, the pool closes
//   (key.slot = no_pool_slot: every fast path misses) and the dropping thread flushes its own
//   cache; another thread's cached slots come back when it next frees an object of the pool,
//   when its table grows, or when it exits — the last of those frees may be the one that
//   destroys the control block, by the rule above.
//
// Lock order: a pool's lock, then (rarely: registry growth) the upstream resource's. Slabs are
// taken from and given back to the upstream with the pool's lock released.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <string>
#include <string_view>
#include <vector>

#include <bsalloc/locks.hpp>
#include <bsalloc/pool_ptr.hpp>  // auto_slab_bytes

#include <bsalloc/detail/config.hpp>  // BSALLOC_ASAN
#include <bsalloc/detail/pool_cache.hpp>
#include <bsalloc/detail/slab_core.hpp>

#ifdef BSALLOC_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace bsalloc::detail {

/// "T" out of a __PRETTY_FUNCTION__ of a template with parameter T (GCC and Clang forms).
std::string_view pool_type_name_from(std::string_view pretty) noexcept;

template <class T>
std::string_view pool_type_name() noexcept {
  return pool_type_name_from(__PRETTY_FUNCTION__);
}

/// Checked mode's verdict: prints "bsalloc: object_pool<type>: op(pointer): problem" to stderr
/// and aborts.
[[noreturn]] void pool_bad_pointer(std::string_view type, const char* op, const void* p,
                                   std::string_view problem) noexcept;
[[noreturn]] void pool_misaligned_slab(std::string_view type, const void* slab,
                                       std::size_t slab_bytes);
[[noreturn]] void pool_invariant_broken(std::string_view type, const std::string& what);

// AddressSanitizer: free slots are poisoned but for the link word, so a use after free of an
// object in a pool is reported.
inline void pool_poison(const void* p, std::size_t n) noexcept {
#ifdef BSALLOC_ASAN
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}
inline void pool_unpoison(const void* p, std::size_t n) noexcept {
#ifdef BSALLOC_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

// Memcheck (src/object_pool.cpp; no-ops unless built with <valgrind/memcheck.h> and running under
// memcheck): a pool constructed under memcheck has no thread cache, each slab is a memcheck
// memory pool and each slot handed out a chunk of it; free slots are no-access but for their link
// word, as under ASan.
bool pool_memcheck() noexcept;  // running under memcheck (decided once per process)
void pool_vg_slab_born(const void* slab, const void* first, std::size_t n) noexcept;
void pool_vg_slab_dies(const void* slab, std::size_t n) noexcept;
void pool_vg_alloc(const void* slab, const void* p, std::size_t n) noexcept;
void pool_vg_free(const void* slab, const void* p) noexcept;  // p's link word stays accessible

/// The magic of a live object_pool slab: a constant mixed with the slab's own address (above
/// the page bits), so that neither a header given back (zeroed) nor user data that happens to
/// sit at a slab-aligned address passes for one by holding a fixed value. One compare.
inline constexpr std::uint32_t pool_slab_key = 0xb5a1b001u;
inline std::uint32_t pool_slab_magic(const void* slab) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(slab);
  return pool_slab_key ^ static_cast<std::uint32_t>(a >> 12);
}
template <class Slab>
inline bool pool_slab_live(const Slab* slab) noexcept {
  return slab->magic == pool_slab_magic(slab);
}

/// A slot: room for one T, at least one pointer (the free-list link), aligned to at least a
/// pointer. Every slab reserves room for the checked bitmap (checked is chosen at run time).
template <class T, std::size_t SlabBytes>
struct pool_geometry {
  static constexpr std::size_t slot_align = std::max(alignof(T), alignof(void*));
  static constexpr std::size_t slot_size = round_up(std::max(sizeof(T), sizeof(void*)), slot_align);
  static constexpr std::size_t capacity_for(std::size_t bytes) noexcept {
    return slab_capacity(bytes, slot_size, slot_align, true);
  }
  static constexpr std::size_t auto_bytes() noexcept {
    std::size_t bytes = std::size_t{64} << 10;
    while (capacity_for(bytes) < 8) bytes *= 2;
    return bytes;
  }
  static constexpr std::size_t slab_bytes = SlabBytes == auto_slab_bytes ? auto_bytes() : SlabBytes;
  static constexpr std::size_t objects_per_slab = capacity_for(slab_bytes);
  static constexpr std::size_t first_slot = slab_first_object(objects_per_slab, slot_align, true);
  static constexpr std::size_t bitmap_words = (objects_per_slab + 63) / 64;
  // Per thread and pool: at most cache_limit free slots (about 8 KiB), moved in batches.
  static constexpr std::uint32_t cache_limit =
      static_cast<std::uint32_t>(std::clamp<std::size_t>(8192 / slot_size, 4, 64));
  static constexpr std::uint32_t cache_batch = cache_limit / 2;
};

// The state every handle and every slab of one pool shares. Its slabs are the slab core's
// (slab_core.hpp: S1, S2, S4, S5 with max_empty() empty slabs kept); res points here.
// Invariants (check_invariants() verifies them; `lock` guards every field but the consts):
//   C1 at most one empty slab is kept, and only while handles > 0 (max_empty(), S4).
//   C2 checked mode has no thread cache: set allocation bits == used (S5, exact).
//   C3 in_use == sum of used over the slabs (slots in thread caches count as used: S3); peak >=
//      in_use when the pool has no thread cache. With one, peak leaves out cached slots (it is
//      brought up to date at each refill and flush, from the entry's low-water count).
//   C4 registry holds exactly the slabs' addresses, sorted ascending; lists.slabs its size.
//   C5 the control block exists iff handles > 0 or in_use > 0.
template <class Lock>
struct alignas(64) pool_control {
  using slab = slab_header<pool_control>;

  pool_control(std::pmr::memory_resource* up, bool check, pool_flush_fn flush)
      : checked(check),
        memcheck(pool_memcheck()),
        extra(check || memcheck),
        upstream(up),
        registry(up) {
    if (is_thread_safe_lock_v<Lock> && !check && !memcheck) pool_cache_register(key, this, flush);
  }

  /// S4's bound: one empty slab is kept while a handle can still allocate.
  std::size_t max_empty() const noexcept { return handles > 0 ? 1 : 0; }

  [[no_unique_address]] mutable Lock lock;
  slab_lists<pool_control> lists;  // allocation takes from the partial list's head
  std::size_t in_use = 0;
  std::size_t peak = 0;
  const bool checked;
  const bool memcheck;  // constructed under memcheck: client requests, no thread cache
  const bool extra;     // checked || memcheck: the one flag the locked path tests
  std::pmr::memory_resource* const upstream;
  std::size_t handles = 1;
  std::pmr::vector<std::uintptr_t> registry;  // from upstream: a pool takes nothing elsewhere
  // The thread caches' view (no slot: none). Read by every thread's fast path: on a cache line
  // of its own, away from handles and the registry, which copies of handles and slab traffic
  // write.
  alignas(64) pool_cache_key key;
};

/// What a thread does after it released the lock: give a slab back, destroy the pool.
template <class Lock>
struct pool_after_unlock {
  std::pmr::memory_resource* upstream;
  slab_header<pool_control<Lock>>* release = nullptr;
  pool_control<Lock>* dead = nullptr;  // set for the one thread that saw handles == in_use == 0
};

}  // namespace bsalloc::detail
