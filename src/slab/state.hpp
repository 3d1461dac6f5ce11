// SPDX-License-Identifier: Apache-2.0
#pragma once
// The slab layer's shared state: slab headers, geometry, core caches, thread caches, the large
// records, checked mode — declared here, defined one concern per file under src/slab/:
//   slabs.cpp         slab headers, geometry, new/return slabs, the upstream (serialised)
//   core_cache.cpp    take, put_back, refill and the whole-resource walks (under a core's lock)
//   flush.cpp         flush: a chain back to its slabs and its owners (runs of one slab)
//   remote.cpp        post, drain, the stash (the remote-free types: remote.hpp)
//   thread_cache.cpp  the TLS slot table, the registry of thread caches, thread exit, fork
//                     (the types: thread_cache.hpp)
//   large.cpp         the large path (records out of band: large_table.hpp)
//   checked.cpp       checked mode: allocation bitmap, request records, verdicts
//   hardened.cpp      hardened mode (encoded, validated free-list links; free-state tags) and
//                     the memcheck client requests (the "careful" path)
//   hardened_hit.cpp  hardened mode's thread-cache hit path and its far cases (known slabs)
//   slow_path.cpp     allocate_slow / deallocate_slow: classify once, dispatch to the above
// The facade (src/slab_resource.cpp) holds the inline fast path. The slab header,
// geometry, lists, take / put back, the empty-slab policy and the checked bitmap are the slab
// core's (include/bsalloc/detail/slab_core.hpp), its invariant walk in detail/slab_walk.hpp;
// object_pool uses both too.
//
// Lock order (a lock is only taken after those before it; none is held across an upstream call
// but upstream_lock, which is held exactly across one):
//   live_states_mutex -> upstream_lock (of every resource, newest first) -> registry_mutex ->
//   core locks -> checked_lock -> large_lock
// The fork handlers (thread_cache.cpp) take them all in that order.
#include <bsalloc/detail/config.hpp>
#include <bsalloc/detail/slab_core.hpp>
#include <bsalloc/locks.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_set>

#include "hardened_types.hpp"
#include "large_bins.hpp"
#include "large_table.hpp"
#include "remote.hpp"
#include "size_classes.hpp"
#include "thread_cache.hpp"

#ifdef BSALLOC_ASAN
#include <sanitizer/asan_interface.h>
#define BSALLOC_POISON_FREE(p, size) \
  ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + sizeof(void*), (size) - sizeof(void*))
#define BSALLOC_UNPOISON(p, size) ASAN_UNPOISON_MEMORY_REGION((p), (size))
#else
#define BSALLOC_POISON_FREE(p, size) ((void)0)
#define BSALLOC_UNPOISON(p, size) ((void)0)
#endif

// Debug builds check invariants inline, at the points that maintain them (tests also call the
// check_invariants() walks). Release builds compile the checks away.
#ifndef BSALLOC_ASSERT
#ifdef NDEBUG
#define BSALLOC_ASSERT(cond, what) ((void)0)
#else
#include <cstdio>
#include <cstdlib>
#define BSALLOC_ASSERT(cond, what)                                                                \
  ((cond) ? (void)0                                                                               \
          : (std::fprintf(stderr, "bsalloc: invariant %s broken at %s:%d (%s)\n", what, __FILE__, \
                          __LINE__, #cond),                                                       \
             std::abort()))
#endif
#endif

namespace bsalloc::detail {

// -- free-list links -----------------------------------------------------------------------------
// Every list threaded through free objects (thread-cache bins, slab free lists, remote chains,
// overflow stacks) stores its links through link_get / link_set and nothing else, so that any
// reader (a heap walk included) decodes them the same way. key 0 (unhardened): the link is the
// plain pointer. Hardened: the stored word is next ^ (address_of_link >> 12) ^ key — glibc's
// safe-linking with a per-resource random secret (key is never 0 then).
inline std::uintptr_t link_mask(const void* at, std::uintptr_t key) noexcept {
  return key == 0 ? 0 : (reinterpret_cast<std::uintptr_t>(at) >> 12) ^ key;
}
inline void* link_get(const void* at, std::uintptr_t key) noexcept {
  return reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(*static_cast<void* const*>(at)) ^
                                 link_mask(at, key));
}
inline void link_set(void* at, const void* next, std::uintptr_t key) noexcept {
  *static_cast<void**>(at) =
      reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(next) ^ link_mask(at, key));
}

constexpr std::uint32_t slab_magic = 0xb5a1ab5au;

struct slab_state;

// The slab header (detail/slab_core.hpp): the first 64 bytes of every slab; cls is the size
// class, owner the core cache, res this resource's state. Checked mode puts the allocation
// bitmap (one bit per object) and the request records (one 32-bit word per object) after it.
// magic/cls/owner/res never change after the slab is published; the owner core's lock guards
// the rest (S1, S2).
using slab = slab_header<slab_state>;
static_assert(sizeof(slab) <= slab_header_size);

// slab::tail is read without the owner's lock by hardened deallocations (hardened_fast.hpp: a
// pointer at or past it was never handed out), so the owner advances it with an atomic store.
// It only grows while the slab is live: a reader that got an object legitimately sees a tail past
// it.
inline char* tail_of(const slab* s) noexcept {
  return std::atomic_ref<char*>(const_cast<slab*>(s)->tail).load(std::memory_order_relaxed);
}
inline void advance_tail(slab* s, std::size_t size) noexcept {
  std::atomic_ref<char*>(s->tail).store(s->tail + size, std::memory_order_relaxed);
}

struct class_geom {
  std::size_t size = 0;
  std::size_t slab_bytes = 0;
  std::size_t offset = 0;  // first object, from the slab start
  // The header's colours (slab_core.hpp): 0, header at the slab start, where something reads it
  // there (checked, hardened, memcheck) or the slab is small.
  std::uintptr_t colour_mask = 0;
  std::uint32_t capacity = 0;
  std::uint32_t bitmap_words = 0;  // checked mode: one bit per object, after the header
  std::uint32_t cache_limit = 0;   // thread cache: most objects kept at first
  std::uint32_t cache_max = 0;     // ... and after growing (a bin that overflows doubles)
  // Hardened: x = address - (slab + offset) is an object's iff x < span, x & low == 0 and
  // x * inv <= lim (size = 2^k * m, m odd: low = 2^k - 1, inv = m's inverse mod 2^64,
  // lim = (2^64 - 1) / m: x * inv <= lim iff m divides x).
  std::size_t span = 0;
  std::uintptr_t slab_mask = 0;  // ~(slab_bytes - 1): an address's slab start, by masking
  std::uint64_t low = 0, inv = 0, lim = 0;
};

// Per CPU, created on the first use of that CPU (registry_mutex held while creating). Its
// remote-free part (atomics: inbox, overflow stacks) is core_remote (remote.hpp).
struct alignas(64) core_cache : core_remote {
  explicit core_cache(std::size_t capacity) : core_remote(capacity) {}
  using lists = slab_lists<slab_state>;  // the slab core's partial/full/empty lists
  alignas(64) std::mutex lock;
  std::array<lists, class_count> cls;  // lock
  slab_core_stats counters;            // lock
  // Lock, per class: objects out of this core's slabs (S3: == the sum of their `used`), the most
  // at once since construction or release(), and remote frees drained from the inbox.
  std::array<std::int64_t, class_count> out{}, peak{};
  std::array<std::size_t, class_count> remote_in{};
  remote_stash stash;               // lock (remote.hpp)
  std::uint64_t posts_drained = 0;  // lock: `posted` as the last drain read it
};

struct slab_list {  // slabs to give back upstream once no lock is held
  slab* head = nullptr;
  void push(slab* s) {
    s->next = head;
    head = s;
  }
};

// Lock held. After objects went back into s: s settles in its class's lists (the slab core's
// empty-slab policy, S4); a slab that leaves them is counted and queued for return_slabs, which
// gives it upstream once no lock is held.
inline void settle(core_cache& core, core_cache::lists& l, slab* s, std::size_t max_empty,
                   slab_list& returns) {
  if (slab* gone = slab_settle(l, s, max_empty)) {
    ++core.counters.slab_returns;
    returns.push(gone);
  }
}

// -- the state of one slab_resource --------------------------------------------------------------
struct slab_state {
  // Immutable after construction.
  std::pmr::memory_resource* upstream = nullptr;
  bool upstream_serial = false;  // the upstream is not known to be thread-safe: upstream_lock
  page_resource* upstream_pages = nullptr;  // the upstream if it is a page_resource (trim)
  slab_resource_options knobs;
  std::pmr::pool_options pool{};
  int classes = 0;  // classes in use: [0, classes)
  std::array<class_geom, class_count> geom{};
  std::size_t ncores = 0;
  std::array<std::size_t, 24> slab_sizes{};  // distinct slab sizes, for checked lookups
  std::size_t slab_size_count = 0;
  const slab_resource* self = nullptr;
  // The careful path (hardened.cpp): hardened mode or memcheck client requests. Both route every
  // call through the slow path; with neither, link reads and writes are plain.
  bool hardened = false;
  bool valgrind = false;     // running under memcheck: client requests for every object
  bool careful = false;      // hardened || valgrind
  bool pages_known = false;  // slabs come from page_resources: the page map vouches for them
  bool lean = false;  // hardened alone (not checked, no zero-on-free, no memcheck): lean path
  std::uintptr_t link_key = 0;  // hardened: free-list link secret (never 0), else 0
  std::uintptr_t tag_key = 0;   // hardened: free-state tag secret
  std::array<hardened_geom, class_count> hard{};  // hardened: the hit path's geometry
  std::uint64_t id = 0;
  std::uint32_t slot = no_slot;

  // Atomics.
  std::unique_ptr<std::atomic<core_cache*>[]> cores;  // created on first use (registry_mutex)
  std::atomic<std::size_t> slab_bytes_reserved{0};
  std::atomic<std::size_t> caches_created{0};
  std::atomic<std::size_t> pins{0};  // exiting threads flushing a cache detached from `caches`
  std::atomic<std::size_t> bin_shrinks{0};
  // Hardened: slabs gone back upstream, ever (bumped before each goes): known_slabs' epoch.
  mutable std::atomic<std::uint64_t> slab_deaths{0};

  // registry_mutex.
  thread_cache* caches = nullptr;
  // live_states_mutex (thread_cache.cpp).
  slab_state* live_prev = nullptr;
  slab_state* live_next = nullptr;

  std::mutex upstream_lock;  // held across each upstream call when upstream_serial
  std::mutex checked_lock;
  std::unordered_set<std::uintptr_t> checked_slabs;  // checked_lock
  yield_lock large_lock;  // held for a hash-table probe: a spin lock, not a futex
  large_table large;      // large_lock
  // Large blocks live: the table's and the tagged runs' (large.cpp), updated atomically.
  std::atomic<std::size_t> large_objects{0}, large_bytes{0};
  // Excess pages (large_bins.hpp, "Accounting"), in bytes, of runs whose thread exited: counted
  // in large_bytes, not in use (modulo 2^64, as the threads' large_excess).
  std::atomic<std::size_t> large_excess{0};
  // With a page_resource upstream, unchecked: this resource's owner tag on its large runs
  // (page_resource::allocate_tagged), so that they need no table record; 0 until the first one.
  std::atomic<std::uint32_t> large_tag{0};
  // The thread caches have large bins (large_bins.hpp): a page_resource upstream, checked mode
  // off, thread caches on, knobs.large_cache_bytes enough for one run in each bin in use, and the
  // inline path on without the careful path (not hardened, not under memcheck, which must see a
  // freed run as freed).
  bool large_bins_on = false;
  std::uint16_t large_start = 0;        // the limit a large bin in use starts at
  std::size_t large_ceiling_bytes = 0;  // what a thread's large bins may hold all full (L2)
  std::array<bool, large_runs::bins> large_bin_used{};  // the wide row maps some size to it
  // The inline path's row for alignments that are powers of two (make_wide_row), unless the
  // resource has the default shape (wide_row_default*).
  wide_row wide{};

  // -- upstream and slabs (slabs.cpp) ---------------------------------------------------------
  void* up_allocate(std::size_t bytes, std::size_t alignment);
  void up_deallocate(void* p, std::size_t bytes, std::size_t alignment);
  slab* slab_of(const void* p, int c) const {
    const auto& g = geom[static_cast<std::size_t>(c)];
    return slab_at<slab>(p, g.slab_bytes, g.colour_mask);
  }
  // The slab core's list operations (detail/slab_core.hpp), by their names here.
  static void unlink(slab*& head, slab* s) { slab_unlink(head, s); }
  static void link(slab*& head, slab* s) { slab_link(head, s); }
  static slab*& list_head(core_cache::lists& l, std::uint8_t which) { return l.head(which); }
  static void move(core_cache::lists& l, slab* s, std::uint8_t to) { slab_move(l, s, to); }
  slab* new_slab(std::size_t core, int c);
  /// Gives the slabs back upstream (no lock held); returns their bytes.
  std::size_t return_slabs(slab_list& l);

  // -- core caches (core_cache.cpp) -----------------------------------------------------------
  core_cache* core_if(std::size_t ci) const { return cores[ci].load(std::memory_order_acquire); }
  core_cache& core(std::size_t ci);  // creates it on first use
  std::size_t current_core() const;
  void put_back(core_cache& core, void* p, int c, slab_list& returns);
  /// Lock held. Applies the remote frees posted to core. With `to` (a refill, or a flush: class
  /// -1), chains are handed on or stashed; without, every object goes back into its slab.
  void drain(core_cache& core, slab_list& returns, handoff* to = nullptr);
  /// Lock held. drain(), unless nothing was posted to core since its last drain (no pop of an
  /// empty queue on the refill and flush paths). The whole-resource paths (trim, the heap walk,
  /// the invariants, the fork child) call drain() itself.
  void drain_posted(core_cache& core, slab_list& returns, handoff* to = nullptr) {
    if (core.posted.load(std::memory_order_acquire) != core.posts_drained) drain(core, returns, to);
  }
  std::uint32_t take(core_cache& core, int c, std::uint32_t n, void*& chain);
  std::uint32_t take_from(std::size_t ci, int c, std::uint32_t n, void*& chain, slab* fresh,
                          std::uint32_t most);
  /// Up to n objects from other cores' slabs whose lock is free (a thread that migrated).
  std::uint32_t take_elsewhere(std::size_t ci, int c, std::uint32_t n, void*& chain);
  /// n objects of class c (fewer if the upstream is out), or up to `most` (>= n) when posted
  /// remote frees come as whole chains.
  std::uint32_t refill(int c, std::uint32_t n, void*& chain, std::uint32_t most);
  /// Gives a chain of n objects back; returns the bytes of slabs that went back upstream.
  std::size_t flush(int c, void* chain, std::uint32_t n) {
    return careful ? flush_walk<true>(c, chain, n) : flush_walk<false>(c, chain, n);
  }
  // flush's walk (flush.cpp), with the careful test taken once for it rather than at every link.
  template <bool Careful>
  std::size_t flush_walk(int c, void* chain, std::uint32_t n);
  void post(core_cache& from, std::size_t owner, int c, void* head, void* tail,
            std::uint32_t count);
  /// Drains every core and gives its empty slabs back; returns their bytes.
  std::size_t drain_and_return_empty();
  /// Every slab back upstream, every core's lists and counts reset. No concurrent use.
  void free_slabs();
  /// After every inbox was drained or dropped, with no concurrent use: posts that never arrived
  /// (dropped, or cut by a fork) count as received, so that nothing seems in flight.
  void settle_remote_counts();
  /// Fork child, before any other thread exists: drains every inbox, recounts each core's `out`
  /// from its slabs (S3) and settles the remote counts (a post the fork cut off).
  void recount_after_fork() noexcept;

  // -- thread caches (thread_cache.cpp) -------------------------------------------------------
  /// Everything in tc goes back; returns the bytes of slabs that went upstream meanwhile.
  std::size_t flush_cache(thread_cache& tc);
  /// A slow-path visit of tc by its thread: now and then, bins that grew and went quiet shrink.
  void tick(thread_cache& tc) {
    if (++tc.slow_calls % scavenge_period == 0) scavenge(tc);
  }
  void scavenge(thread_cache& tc);
  /// Bin c of tc keeps its newest `keep` objects (keep >= 1); the rest goes back.
  void trim_bin(thread_cache& tc, int c, std::uint32_t keep);

  // -- large blocks (large.cpp) ---------------------------------------------------------------
  void* allocate_large(std::size_t bytes, std::size_t alignment);
  void deallocate_large(void* p, std::size_t bytes, std::size_t alignment);
  void free_large();
  std::uint32_t owner_tag();  // large_tag, drawn on first use
  // The large bins' slow paths (large_bins.hpp). A miss in bin b (or an alignment above the
  // inline path's): a run of b's class from the bin, or borrowed from a bin up, else null.
  void* allocate_from_bins(thread_cache& tc, std::size_t b, std::size_t alignment);
  // A run of ours (p, validated: a live run tagged by this resource, of `pages` pages, freed as
  // `bytes`) pushed into the bin of its pages; into a full bin that may not grow, back to the
  // page layer instead.
  void push_to_bins(thread_cache& tc, void* p, std::size_t pages, std::size_t bytes);
  // A run of tc's (validated, or taken out of a bin) back to the page layer, tc's counts with it.
  void give_back(thread_cache& tc, void* run);
  // Bin b keeps its newest `keep` runs; the rest go back to the page layer.
  void trim_large_bin(thread_cache& tc, std::size_t b, std::uint32_t keep);
  // Every run of tc's large bins goes back to the page layer; returns their bytes.
  std::size_t flush_large(thread_cache& tc);
  // A scavenge: each large bin that saw no slow-path visit since the last one halves.
  void scavenge_large(thread_cache& tc);
  // Thread exit (registry_mutex held, tc leaving stats()' sight, its owner the caller): tc's
  // counts of live large runs and their excess move into large_objects / large_bytes /
  // large_excess; what its bins hold is left to the flush that follows, outside the lock.
  void fold_large(thread_cache& tc);
  // release() and destruction: tc's bins are emptied without giving their runs back (they are
  // tagged and live: free_large() frees them) and its counts dropped (registry_mutex held).
  void forget_large(thread_cache& tc);

  // -- free-list links and the careful path (hardened.cpp) -----------------------------------
  /// The link stored in free object `at` of class c. Hardened: decoded and validated (null, or
  /// an object boundary of class c in a slab of this resource — in slab `same` if given), else
  /// an abort naming the object. Valgrind: read with the word made defined for the moment.
  void* next_of(const void* at, int c, const slab* same = nullptr) const {
    if (!careful) [[likely]]
      return link_get(at, 0);
    return next_careful(at, c, same);
  }
  void set_next(void* at, const void* next) const {
    if (!careful) [[likely]]
      return link_set(at, next, 0);
    set_next_careful(at, next);
  }
  /// Construction: hardened and valgrind from the knobs and the environment, the secrets.
  void init_careful();
  void* next_careful(const void* at, int c, const slab* same) const;
  [[gnu::noinline]] void* next_far(const void* at, void* next, int c, const slab* same) const;
  void set_next_careful(void* at, const void* next) const;
  /// Careful path: object p of class c leaves the free lists for a user asking `bytes`.
  void hand_out(void* p, int c, std::size_t bytes) const;
  /// Careful path: a user gives p (class c) back; aborts on a double free or a pointer that is
  /// not an object of this resource (hardened). Marks p free (tag, zero-on-free).
  void take_back(void* p, int c, std::size_t bytes, std::size_t alignment) const;
  /// Careful path: an object from a slab's untouched tail becomes free (tag).
  void mark_fresh(void* p, int c) const;
  /// Careful path: a new slab (everything after the header is no-access to memcheck) and a slab
  /// going back upstream (all accessible again).
  void slab_born(slab* s) const;
  void slab_dies(slab* s) const;
  /// Hardened: the slab header of s is valid for class c (magic, class, owner, resource).
  void check_slab(const slab* s, int c, const char* where) const;
  [[noreturn]] void corrupt(const void* p, const std::string& problem) const;

  // -- checked mode (checked.cpp) -------------------------------------------------------------
  [[noreturn]] void bad(const void* p, std::size_t bytes, std::size_t alignment,
                        const std::string& problem) const;
  std::atomic<std::uint64_t>* bitmap(slab* s) const { return slab_bitmap(s); }
  std::atomic<std::uint32_t>* records(slab* s) const {
    return reinterpret_cast<std::atomic<std::uint32_t>*>(bitmap(s) + geom[s->cls].bitmap_words);
  }
  void init_checked(slab* s);
  void forget_checked(slab* s);
  slab* registered_slab(const void* p) const;  // checked_lock held
  void mark_allocated(void* p, int c, std::size_t bytes, std::size_t alignment);
  // Aborts on a bad free. True when p was a large block: its record is already unlinked, the
  // caller gives it upstream as it is.
  bool check_deallocate(void* p, std::size_t bytes, std::size_t alignment, int c);
};

inline thread_cache* find_cache(const slab_state& st) {
  const tls_slot& s = t_slots[st.slot];
  return s.id == st.id ? s.cache : nullptr;
}

/// First object offset for n objects (alignment obj_align) in checked mode or not: the slab
/// core's, with a 4-byte request record per object in checked mode.
constexpr std::size_t slab_header_bytes(std::size_t n, std::size_t obj_align, bool checked,
                                        std::size_t header_area = slab_header_size) {
  return slab_first_object(n, obj_align, checked, 4, header_area);
}
/// Under memcheck (hardened.cpp). A resource colours its slab headers (slab_core.hpp) unless a
/// check reads them at the slab start: checked, hardened, memcheck.
bool running_under_memcheck();
inline bool header_colours(bool checked, bool hardened) {
  return !checked && !hardened && !running_under_memcheck();
}

}  // namespace bsalloc::detail
