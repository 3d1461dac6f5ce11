// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::slab_resource — per-core slab pools behind a small per-thread cache; a one-line swap
// for std::pmr::synchronized_pool_resource.
//
//   bsalloc::slab_resource pool;                 // upstream: bsalloc::global_page_resource()
//   std::pmr::vector<int> v{&pool};
//   fmt::print("{}", pool.stats());
//
// Glossary
//   class          one object size (8 B … 64 KiB, at most 12.5 % apart above 64 B). A request no
//                  class serves (larger, more aligned) goes to the upstream, which decides; its
//                  record (pointer, bytes, alignment) is kept out of band, nothing is written into
//                  the block.
//   slab           slab_bytes(class) from the upstream, aligned to its own size; a 64-byte header
//                  in its first KiB (at a colour chosen by its address from 64 KiB slabs up;
//                  at its start in checked and hardened mode), then objects. An object's slab
//                  is found by masking its address, its header by adding the colour.
//   core cache     per CPU (sched_getcpu() modulo the number of caches), created on the first use
//                  of that CPU: per class the partial, full and empty slab lists, guarded by the
//                  core's mutex. Each slab has one owner core; only code holding that core's lock
//                  touches the slab.
//   thread cache   per thread and resource: per class a LIFO list of free objects, touched by its
//                  thread only, no lock, no atomic read-modify-write. Refilled from and flushed to
//                  the core caches in batches. Found through the thread's slot table: every live
//                  resource owns a dense slot (reused after it is destroyed), so any number of
//                  live resources keep their caches side by side.
//   remote free    a flush of objects whose slab belongs to another core: chained through the
//                  objects themselves, one message per (owner, class) posted to the owner's
//                  fixed-capacity Boost.Lockfree queue — or, when that is full, pushed onto the
//                  owner's per-class lock-free overflow stack. The owner drains both when its
//                  lock is taken and its count of posts moved since its last drain. The owner's
//                  lock is never taken for a remote free.
//
// Invariants (check_invariants() verifies them; it needs no concurrent use)
//   S1  for every slab: used + |free list| + unused tail == capacity.
//   S2  a slab is on exactly one list of its owner core and class: full iff no free object and no
//       unused tail, empty iff used == 0, partial otherwise.
//   S3  per class: sum of used over all slabs == objects held by users + objects in thread caches
//       + objects in remote messages not drained yet + objects in the core caches' stashes of
//       drained remote chains. Each core cache counts, per class, the
//       objects out of its own slabs (under its lock): that count == the sum of used over its
//       slabs; and once every inbox is drained, every remote free counted sent was received.
//   S4  per core and class, empty slabs <= options().max_empty_slabs_per_class.
//   T1  per thread cache: every bin holds at most its limit; the bytes by which limits grew
//       above their initial values add up to at most knobs().thread_cache_bytes.
//   L1  the large records: one per live large block, in an open-addressing table never over
//       half full; or, with a page_resource upstream and checked mode off, in the page run's
//       metadata (page_resource::allocate_tagged, I12) for runs of two pages or more.
//   L2  a thread cache's large bins: each run a live run of the page_resource upstream, tagged
//       by this resource, of a class count of pages from its bin's class to half as many again,
//       in no other bin; each bin's count is its list's length and within its limit, and the
//       limits' bytes add up to at most knobs().large_cache_bytes.
//
// Thread safety: allocate/deallocate from any thread. release(), the destructor and
// check_invariants() need that no other thread uses the resource at the same time. Calls to an
// upstream that is not known to be thread-safe are serialised (page_resource, slab_resource, a
// budget_resource over one of these, new_delete_resource() and synchronized_pool_resource are
// known; see upstream_thread_safe). An out-of-memory or over-budget handler called from inside a
// serialised upstream call runs under that lock: it must not call back into this slab_resource.
// fork() from a thread while others allocate is safe: every lock of the slab layer is taken
// around it (pthread_atfork), and the child can allocate and free.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <cstddef>
#include <cstdint>
#include <memory_resource>
#include <string>
#include <vector>

#include <bsalloc/detail/config.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/stats.hpp>

namespace bsalloc {

/// bsalloc's own knobs; the defaults need no tuning.
struct slab_resource_options {
  /// Empty slabs each core cache keeps per class (the most recently emptied); when one more
  /// empties, the one empty longest goes back upstream.
  std::size_t max_empty_slabs_per_class = 1;
  /// Messages each core's remote-free queue holds (1 … 65534), a chain of objects each; its
  /// nodes (64 bytes a message) are allocated with the core cache, on the first use of its CPU.
  /// A full queue spills to a lock-free overflow stack, so nothing is dropped.
  std::size_t remote_queue_capacity = 128;
  /// Core caches; 0 = one per configured CPU. sched_getcpu() is taken modulo this number.
  std::size_t caches = 0;
  /// Smallest slab (a power of two, 4 KiB … 1 MiB). A class's slab holds at least 16 objects
  /// and is at least this big — unless pool_options::max_blocks_per_chunk asks for fewer
  /// objects per slab: then slabs hold that many and are as small as that allows (>= 4 KiB).
  /// Smaller slabs suit small fixed arenas (less memory parked in partly used slabs); larger ones
  /// mean fewer trips to the upstream.
  std::size_t min_slab_bytes = std::size_t{64} << 10;
  /// Per-thread front cache. Off: every call goes to the core cache under its lock.
  bool thread_cache = true;
  /// How far one thread's cache (per resource) may grow its bins above their initial limits,
  /// in bytes across all classes (on top of their initial limits, about 1 MiB of objects when
  /// every default class is in use; tcmalloc bounds a whole thread cache at 4 MiB). Bins grow
  /// only where their thread both allocates and frees their class, and bins that grew and went
  /// quiet shrink back.
  std::size_t thread_cache_bytes = std::size_t{4} << 20;
  /// The large bins: what one thread's bins of large runs may hold at most, in bytes per thread
  /// and resource (too little for one run of each large bin: none). With a page_resource
  /// upstream, the inline path on and checked and hardened modes off, the run classes above the
  /// slab classes up to 256 KiB are bins of the thread cache, served by the inline path as the
  /// slab classes are: a large block that a thread frees stays in its bin (still allocated in
  /// the page layer) for that thread's next request of its run class, or of a class up to a
  /// third smaller. A bin starts at 4 runs and grows for a thread that both allocates and frees
  /// its class, to at most 16, the bins' limits together within this bound (their contents are
  /// about half of it: each bin's count goes up and down). Given back by trim() (the calling
  /// thread's), thread exit, release(), the destructor, and the thread's own slow path once a
  /// bin goes quiet. Counted in stats().large_cached_bytes (reserved, not in use).
  std::size_t large_cache_bytes = std::size_t{24} << 20;
  /// Detect double free, foreign pointers and size/alignment mismatches (against the size and
  /// alignment each allocation asked for); abort with a message naming the pointer and the
  /// problem. Costs an atomic bit flip and a lookup per call, 4 bytes and a bit per object.
  bool checked = BSALLOC_CHECKED_DEFAULT;
  /// The upstream may be called from several threads at once. Off (the default) calls are
  /// serialised by a lock unless the upstream is a page_resource, a slab_resource, a
  /// budget_resource over one of these, std::pmr::new_delete_resource() or a
  /// std::pmr::synchronized_pool_resource.
  bool upstream_thread_safe = false;
  /// Hardened mode: free-list links are encoded with a per-resource random secret and their own
  /// address (as glibc's safe-linking) and validated whenever one is followed; every free object
  /// carries a free-state tag. A use-after-free write into a free object, or a double free,
  /// aborts with a message naming the pointer — never is a wild pointer handed out. Slab headers
  /// are validated on every slow-path use; 8-byte requests take 16-byte objects. A thread-cache
  /// hit takes a short validated path after the inline class lookup (the inline fast path of an
  /// unhardened resource is unchanged). See
  /// docs/hardening.md for what it detects and costs.
  bool hardened = false;
  /// Hardened mode only: freed objects are zeroed, and an object handed out again is checked to
  /// be still all zero (a use-after-free write anywhere in it aborts). Allocations come back
  /// zeroed. Costs a pass over the object on each free and each allocation.
  bool hardened_zero_on_free = false;
};

struct slab_class_stats {
  std::size_t object_size = 0;
  std::size_t slab_bytes = 0;
  std::size_t slabs = 0;           ///< slabs held from the upstream
  std::size_t objects_in_use = 0;  ///< held by users now
  std::size_t bytes_in_use = 0;    ///< objects_in_use * object_size
  /// Most objects out of slabs at once (users, thread caches, remote frees not drained yet),
  /// counted per core cache and summed: exact when one core cache serves the class (caches = 1,
  /// or one thread that stays on its CPU), otherwise an upper bound — the cores' peaks need not
  /// fall at the same moment. Never below objects_in_use. release() resets it.
  std::size_t peak_objects = 0;
};

struct slab_core_stats {
  std::size_t allocations = 0;            ///< objects handed out by this core's slabs
  std::size_t deallocations = 0;          ///< objects given back to this core's slabs locally
  std::size_t remote_frees_sent = 0;      ///< objects this core's threads posted to other cores
  std::size_t remote_frees_received = 0;  ///< objects drained from this core's queue
  /// ... of which handed on whole to a refilling thread (a posted chain that fit its bin), at
  /// once or from the core's stash
  std::size_t remote_handed_on = 0;
  /// ... of which kept whole in the core's stash for a later refill of their class
  std::size_t remote_kept = 0;
  std::size_t remote_overflows = 0;  ///< messages that found the queue full
  std::size_t slab_refills = 0;      ///< slabs taken from the upstream
  std::size_t slab_returns = 0;      ///< slabs given back to the upstream
};

struct slab_resource_stats {
  std::size_t objects_in_use = 0;  ///< small objects held by users
  std::size_t bytes_in_use = 0;    ///< their class bytes, plus large bytes
  std::size_t bytes_reserved = 0;  ///< slab bytes and large blocks held from the upstream
  std::size_t large_objects = 0;   ///< requests passed to the upstream, live
  /// Their bytes: as asked, except a block of a large bin's run class (up to 256 KiB), which
  /// counts its run class's whole pages, as a small object counts its class size.
  std::size_t large_bytes = 0;
  std::size_t large_cached_runs = 0;   ///< large runs free in thread caches' large bins
  std::size_t large_cached_bytes = 0;  ///< their bytes (whole pages); in bytes_reserved
  std::size_t thread_caches = 0;
  std::size_t thread_caches_created = 0;  ///< ever (one per thread and resource, if never lost)
  std::size_t core_caches = 0;            ///< core caches created (on the first use of their CPU)
  std::size_t thread_cache_grown_bytes = 0;  ///< thread caches' growth, each <= thread_cache_bytes
  std::size_t bin_shrinks = 0;               ///< bins shrunk back after their class went quiet
  std::size_t cached_objects = 0;            ///< free objects sitting in thread caches
  std::vector<slab_class_stats> classes;     ///< classes with any slab or any peak
  std::vector<slab_core_stats> cores;
};

/// One live allocation, as a heap walk reports it.
struct heap_block {
  const void* ptr = nullptr;
  std::size_t bytes = 0;  ///< the class size (the request's size where it is known), or large
  bool large = false;     ///< served by the upstream (a large block)
};

std::string to_string(const slab_resource_stats& s);
std::string to_json(const slab_resource_stats& s);

namespace detail {
struct slab_state;
struct bin;
}  // namespace detail

class slab_resource : public std::pmr::memory_resource {
 public:
  static constexpr std::size_t max_pool_block = std::size_t{64} << 10;

  // The upstream, when none is given, is bsalloc::global_page_resource() — deliberately, not
  // std::pmr::get_default_resource() as the standard pool resources use: slabs must be aligned
  // to their size, which the page resource gives without waste.
  slab_resource();
  explicit slab_resource(std::pmr::memory_resource* upstream);
  slab_resource(const std::pmr::pool_options& options, std::pmr::memory_resource* upstream);
  explicit slab_resource(const std::pmr::pool_options& options);
  slab_resource(const std::pmr::pool_options& options, const slab_resource_options& knobs,
                std::pmr::memory_resource* upstream = &global_page_resource());
  ~slab_resource() override;
  slab_resource(const slab_resource&) = delete;
  slab_resource& operator=(const slab_resource&) = delete;

  std::pmr::memory_resource* upstream_resource() const noexcept;
  /// The options in effect: largest_required_pool_block is the largest class (requests above
  /// it go to the upstream); max_blocks_per_chunk the most objects one slab holds (never more
  /// than asked for; 0 asks for the default).
  std::pmr::pool_options options() const noexcept;
  const slab_resource_options& knobs() const noexcept;

  /// Frees everything: every slab and large block goes back to the upstream, every thread
  /// cache is emptied. No other thread may use the resource meanwhile.
  void release();
  /// Flushes the calling thread's cache, drains every core's remote frees and returns every
  /// empty slab upstream. Returns the bytes given back (slabs freed while flushing included).
  /// If the upstream is a bsalloc::page_resource, trims it too (what it gives back to the OS is
  /// not counted).
  std::size_t trim();

  slab_resource_stats stats() const;
  /// Verifies S1–S4, T1 and L1; throws std::logic_error naming the broken invariant.
  void check_invariants() const;

  /// The class that serves (bytes, alignment), or -1 when the upstream does (or the alignment
  /// is not a power of two). Never overflows.
  static int size_class(std::size_t bytes, std::size_t alignment) noexcept;
  static std::size_t class_size(int cls) noexcept;
  /// True if large blocks above the slab classes, up to 256 KiB, come from the thread caches'
  /// large bins (see slab_resource_options::large_cache_bytes): stats() and the heap walk then
  /// count such a block at its run's bytes, large_run_size().
  bool large_bins() const noexcept;
  /// The bytes of the run a large bin serves a request of `bytes` with (whole pages: exact up
  /// to 8, then four run classes per doubling), or 0 for one page or less and above 256 KiB.
  static std::size_t large_run_size(std::size_t bytes) noexcept;

  /// Heap walk (src/slab/walk.cpp; bsalloc/heap_walk.hpp has for_each_allocation): every
  /// object out of a slab and every large block, sorted by address. Safe while other threads
  /// allocate: each core's slabs are read under that core's lock (remote frees waiting for it are
  /// taken in first), the large blocks under theirs. Every object allocated before the call and
  /// not freed until it returns is in it, exactly once; objects allocated or freed meanwhile may
  /// or may not be. Outside checked mode, objects in other threads' caches (and remote frees
  /// posted meanwhile) are out of their slabs and are reported too (`cached` cannot be told
  /// apart from live): the calling thread's cache is known and left out. In checked mode the
  /// allocation bitmap is read instead: exactly the objects held by users.
  std::vector<heap_block> live_blocks() const;

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

 private:
  [[gnu::noinline]] void* allocate_slow(std::size_t bytes, std::size_t alignment);
  void* allocate_attempt(std::size_t bytes, std::size_t alignment);  // allocate_slow, unreported
  [[gnu::noinline]] void deallocate_slow(void* p, std::size_t bytes, std::size_t alignment);
  // Hardened mode (src/slab/hardened_hit.cpp): the validated thread-cache hit path, reached by a
  // tail jump from the inline path once it has found the bin (no frame, nothing recomputed).
  [[gnu::noinline]] void* allocate_hardened(std::size_t bytes, std::size_t alignment,
                                            detail::bin* b, std::size_t cls);
  [[gnu::noinline]] void deallocate_hardened(void* p, std::size_t bytes, std::size_t alignment,
                                             detail::bin* b, std::size_t cls);

  detail::slab_state* state_;
  std::uint64_t id_;    // never reused: names this resource in thread caches
  std::uint32_t slot_;  // its slot in every thread's cache table (dense, reused after destruction)
  std::uint64_t hardened_id_;  // id_ | detail::hardened_id_bit: a hardened resource's cache id
  // Requests with alignment <= 16 below small_bound_ (the smaller of 8 KiB and the largest class,
  // + 1) take the inline path through the small table, the rest below wide_bound_ through the
  // wide row of their alignment (wide_rows_: every slab class, then the large bins up to 256 KiB
  // when the resource has them). Both bounds
  // are 0 in checked mode, under memcheck and in hardened mode with zero-on-free, so that every
  // call takes the slow path. A hardened resource's thread caches are registered under
  // id_ | hardened_id_bit: the inline path finds the bin, its id test fails, and a second test
  // sends it to the hardened hit path with the bin (the unhardened hit path is unchanged).
  std::uint32_t small_bound_;
  std::uint32_t wide_bound_;
  // Per alignment 0..16: the resource's wide row (slab_state::wide) for powers of two, a row of
  // bad_class for the others (src/slab/large_bins.hpp, make_wide_row).
  const std::uint8_t* wide_rows_[17];
  bool checked_;
  bool hardened_;
};

}  // namespace bsalloc

template <>
struct fmt::formatter<bsalloc::slab_resource_stats>
    : bsalloc::detail::stats_formatter<bsalloc::slab_resource_stats> {};
