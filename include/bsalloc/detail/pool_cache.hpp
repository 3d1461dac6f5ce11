// SPDX-License-Identifier: Apache-2.0
#pragma once
// object_pool's per-thread front (the non-template part; src/slab/pool_cache.cpp).
//
// Every thread-safe, unchecked pool has a dense slot (reused after its control block is gone)
// and a unique, never reused generation. Each thread has a table indexed by slot: per pool, a
// LIFO of free slots of that pool, touched only by the thread (no lock, no atomic
// read-modify-write). object_pool refills and flushes it in batches under the pool's lock.
//
// Invariants (per thread table entry e):
//   T1 e.count == length of the list at e.head; e.count <= the pool's cache_limit.
//   T2 e.count > 0 only while e.gen is the generation of the live pool holding that slot: the
//      pool counts cached slots as in use, so it cannot die while a thread caches its slots,
//      and its slot is not reused before it dies. Hence a non-empty entry always belongs to the
//      pool now holding the slot (allocation needs no generation check; a free does).
//   T3 a pool whose last handle is gone is "closed": key.slot reads no_pool_slot, so every
//      fast path misses. Its cached slots go back when the owning thread next frees into it,
//      when the thread's table grows (a sweep of closed pools), or when the thread exits.
#include <atomic>
#include <cstdint>

namespace bsalloc::detail {

inline constexpr std::uint32_t no_pool_slot = ~std::uint32_t{0};

/// Gives `count` cached slots linked from `head` back to the pool `owner`; `low` is the
/// entry's low-water count since its last flush or refill (for the pool's peak).
using pool_flush_fn = void (*)(void* owner, void* head, std::uint32_t count,
                               std::uint32_t low) noexcept;

/// In each pool's control block. All but `slot` are set once, before the pool is shared.
struct pool_cache_key {
  std::atomic<std::uint32_t> slot{no_pool_slot};  // home while open, no_pool_slot once closed
  std::uint32_t home = no_pool_slot;              // the slot held until the control block dies
  std::uint64_t gen = 0;
  void* owner = nullptr;
  pool_flush_fn flush = nullptr;
};

struct pool_tls_entry {
  std::uint64_t gen;  // the generation of the pool this entry caches for (0: none)
  void* head;         // free slots linked through their first word
  std::uint32_t count;
  std::uint32_t low;  // lowest count since the last refill or flush (<= count)
  pool_cache_key* key;
};

struct pool_tls_state {
  pool_tls_entry* table;  // cap entries (malloc'd), or nullptr
  std::uint32_t cap;
  std::uint8_t status;  // 0: no table yet, 1: live (exit flush armed), 2: thread exiting
};

extern thread_local constinit pool_tls_state t_pool_cache;

/// Gives the key a slot and a generation (no slot if none can be had: no caching).
void pool_cache_register(pool_cache_key& key, void* owner, pool_flush_fn flush) noexcept;
/// The control block is dying: its slot may be reused.
void pool_cache_unregister(pool_cache_key& key) noexcept;
/// The calling thread's entry for key (created, the table grown, as needed), or nullptr when
/// this thread cannot cache (exiting, out of memory, pool closed or uncached).
pool_tls_entry* pool_cache_entry(pool_cache_key& key) noexcept;
/// Flushes every entry of the calling thread's table (all pools).
void pool_cache_flush_thread() noexcept;
/// Cached slots of every thread-table entry (calling thread): for tests and stats.
std::uint64_t pool_cache_thread_slots() noexcept;

}  // namespace bsalloc::detail
