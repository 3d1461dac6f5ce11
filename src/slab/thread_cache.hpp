// SPDX-License-Identifier: Apache-2.0
#pragma once
// The thread cache's types (thread_cache.cpp has its policy: bin pop / push / refill / flush /
// grow / scavenge, the TLS slot table, the registry, thread exit and fork): a thread cache's
// bins (the slab classes', then the large bins': large_bins.hpp), and the slot table that the
// inline path indexes.
#include <bsalloc/detail/config.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "hardened_types.hpp"
#include "large_bins.hpp"
#include "size_classes.hpp"

namespace bsalloc::detail {

struct slab_state;

// A thread cache's list of one class. Owner thread only; count is atomic only so that stats()
// may read it (relaxed) from another thread.
struct bin {
  void* head = nullptr;
  std::atomic<std::uint32_t> count{0};
  std::uint16_t limit = 0;  // <= cache_max <= 2048; 0 for classes not in use and bad_class
  std::uint16_t flags = 0;  // bin_refilled | bin_active | the refill step << bin_step_shift
};
enum : std::uint16_t {
  bin_refilled = 1,  // refilled since the limit last grew
  bin_active = 2,    // refilled or overflowed since the last scavenge
  // Slab classes: refills so far (at most bin_step_max), reset when a scavenge finds the bin
  // quiet. A refill of an empty bin takes bin_first_refill << step objects, at most half the
  // limit (slow start, as tcmalloc's): a thread that allocates a few objects of a class in each
  // of many resources (one resource per subsystem) takes a few, not half a bin, from each.
  bin_step_shift = 2,
  bin_step_mask = 7 << bin_step_shift,
};
constexpr std::uint32_t bin_first_refill = 8;
constexpr std::uint32_t bin_step_max = 7;
/// How many objects a refill of b takes (slow start), and b's next step.
inline std::uint32_t refill_want(bin& b) noexcept {
  const std::uint32_t step = (b.flags & bin_step_mask) >> bin_step_shift;
  if (step < bin_step_max) b.flags = static_cast<std::uint16_t>(b.flags + (1u << bin_step_shift));
  const std::uint32_t half = b.limit / 2u;
  const std::uint32_t want = bin_first_refill << step;
  return want < half ? want : half > 0 ? half : 1;
}
/// Other cores a refill asks for slabs (lock free only) before it takes a new slab.
constexpr std::size_t steal_probes = 8;
/// Slow-path visits of a thread cache between two looks for bins that went quiet.
constexpr std::uint32_t scavenge_period = 256;

struct thread_cache {
  // Owner thread. The slab classes', bad_class's (always empty), then the large bins
  // (large_base + b). First: cache_of(bin, class) finds the cache (hardened).
  std::array<bin, bin_total> bins;
  slab_state* res;     // registry_mutex
  thread_cache* prev;  // registry_mutex: res->caches list
  thread_cache* next;  // registry_mutex
  // Owner thread (atomic only for stats()): bytes the bins' limits grew above their initial
  // limits, at most knobs.thread_cache_bytes.
  std::atomic<std::size_t> grown_bytes{0};
  std::uint32_t slow_calls = 0;  // owner thread
  known_slabs known;             // owner thread; hardened mode only
  // Owner thread (atomic only for stats()), modulo 2^64 (a thread may give back runs that
  // another took): the large runs this thread took from the page layer for its large bins'
  // classes minus those its bins gave back, their pages, and the excess pages its borrows and
  // give-backs moved (large_bins.hpp, "Accounting"). Over all threads, live runs are the sum of
  // large_taken minus the runs in the bins, and live bytes the pages taken minus the bins'
  // class pages minus the excess.
  std::atomic<std::size_t> large_taken{0}, large_taken_pages{0}, large_excess{0};
  // Owner thread: the sum over the large bins of limit x run bytes, within the ceiling (L2).
  std::size_t large_limit_bytes = 0;
  void* block = nullptr;  // the allocation that holds it (make_thread_cache)
};

static_assert(std::is_standard_layout_v<thread_cache> && offsetof(thread_cache, bins) == 0);
/// The thread cache whose bin of class c is b.
inline thread_cache& cache_of(bin& b, std::size_t c) noexcept {
  return *reinterpret_cast<thread_cache*>(&b - c);
}

// -- thread-local slot table (thread_cache.cpp) --------------------------------------------------
// Every live resource has a dense slot (reused after its destruction) and a unique id. Each
// thread has a table of max_slots entries, reserved (not committed) virtual memory, so the fast
// path indexes it with no bounds check; a thread that has no table yet points at
// `no_slots`, which is all zeros and never written.
struct tls_slot {
  std::uint64_t id;  // the resource's id while this thread has a cache for it; 0: none
  thread_cache* cache;
};
constexpr std::uint32_t max_slots = std::uint32_t{1} << 16;
constexpr std::uint32_t no_slot = 0;  // resources beyond max_slots - 1 live: no thread cache
// A hardened resource (without zero-on-free) registers its caches under its id | this bit, so
// that the inline path's id test fails for it after the bin is found (hardened hit path).
constexpr std::uint64_t hardened_id_bit = std::uint64_t{1} << 63;
extern tls_slot no_slots[max_slots];
extern thread_local constinit tls_slot* t_slots __attribute__((tls_model(BSALLOC_TLS_MODEL)));

std::mutex& registry_mutex();
/// A fresh slot for a new resource (registry_mutex not held); no_slot when none is left.
std::uint32_t acquire_slot(std::uint64_t id);
/// A thread cache for st (its large bins too) in one block, or nullptr;
/// free_thread_cache gives it back.
thread_cache* make_thread_cache(const slab_state& st) noexcept;
void free_thread_cache(thread_cache* tc) noexcept;
/// The calling thread's cache for (id, slot), creating it unless caches are off.
thread_cache* cache_for(slab_state& st);
/// The calling thread's cache for st if it has one.
inline thread_cache* find_cache(const slab_state& st);
/// Destruction and release(): every thread cache of st is dropped. See thread_cache.cpp.
void drop_caches(slab_state& st, bool destroying);
/// Fork safety: st joins / leaves the list the fork handlers lock.
void register_live(slab_state& st);
void unregister_live(slab_state& st);

}  // namespace bsalloc::detail
