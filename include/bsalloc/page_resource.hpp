// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::page_resource — a buddy page allocator that is a std::pmr::memory_resource.
//
// Glossary
//   page    4 KiB, the unit of everything here.
//   pfn     a page's absolute number: address >> page_shift.
//   block   2^order pages, aligned to its own size in the address space (its pfn is a multiple
//           of 2^order), either free (on its region's free list for that order) or allocated.
//   region  one contiguous run of pages under management, from the OS (mmap) or from a caller
//           (constructor buffer or add_region). Buddies merge only inside one region.
//   dirty   a free page of an OS region that may still be resident (it was handed out and
//           given back since it was last purged). Each page has a `resident` bit; the head of a
//           free block has a `dirty` hint, set if any of its pages may be resident. Purging
//           (MADV_DONTNEED over the resident span) clears both.
//
// Invariants (check_invariants() verifies every one of them; the lock guards all state)
//   I1  the blocks of a region tile it exactly: every page lies in exactly one block, and only
//       a block's head page carries a head state (free / allocated / purging); the others none.
//   I2  a block of order k at pfn p has p % 2^k == 0 and lies wholly inside its region.
//   I3  free block of order k  <=>  it is on free list k of its region; the list is doubly
//       linked by page index, free_tail is its last block, and bit k of the region's nonempty
//       mask is set iff the list is not empty. Blocks with the dirty hint are pushed at the
//       front, clean ones appended at the back: allocation takes the front, so it reuses
//       resident pages before it faults in purged ones.
//   I4  no free block has a free buddy of the same order (they would have been merged), unless
//       one of the two is being purged (out of the lists, lock not held for the madvise).
//   I5  sum over regions of free pages + allocated pages + purging pages == managed pages.
//   I6  dirty_free_pages == number of free pages with the resident bit; only OS regions have
//       resident bits; allocated pages (cached runs included) have none.
//   I7  a free block whose dirty hint is clear has no resident page.
//
//   I8  (run metadata) every allocated block of a run records the run's head index; the head
//       block carries the run-head flag and the run's page count, so a pointer is accepted by
//       deallocate_pages only at the head of a live run, with exactly that count.
//   I9  (page map) every managed page maps to (this, its region) in the process page map;
//       nothing else maps to this resource.
//   I10 (run cache) a cached run is an allocated run whose head has the cached mark, held by
//       exactly one core cache bin of its page count; the caches' page counts add up.
//   I11 (run marks) the head of every allocated run has the mark live (its user holds it),
//       cached (in a run-cache bin) or parked (given back by its user to a layer above, which
//       keeps it for its next request: park_tagged); every other page's mark is none. Every
//       free changes the mark from live by one compare-and-swap (to cached on the cache path,
//       to parked by park_tagged, to none on the locked path), so of two frees of one run,
//       however they race, exactly one wins and the other throws std::invalid_argument naming
//       the pointer.
//   I12 (owner tags) the second page of a live run whose head block has two pages or more holds
//       the run's tag and the bytes its user asked for (atomically accessed: prev = tag, next =
//       the run's bytes minus those); 0 = untagged. mark_run clears it; a tag outlives its
//       run only if the run's user freed it other than by deallocate_tagged (its bug). Inner
//       pages of other blocks carry nothing anyone reads.
//
// An allocation of `count` pages that is not a power of two is a run of blocks: the greedy
// decomposition of [0, count) into aligned power-of-two blocks. Every block but the last of a
// run carries the `continued` flag.
//
// Run cache: with options.cache_bytes_per_core > 0 (global_page_resource() has it), freed runs
// of up to max_cached_run_pages pages go to a small per-core (sched_getcpu) cache, by page count,
// and are handed out again from there: large-block churn takes neither the buddy lock nor a
// split or merge. Cached runs count as retained memory: the purge policy, trim() and
// flush_cache() return them to the buddy lists.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <bsalloc/page_map.hpp>
#include <bsalloc/page_resource_stats.hpp>
#include <bsalloc/page_types.hpp>

namespace bsalloc {

class page_resource;
namespace detail {
struct page_access;
struct page_parking;
}  // namespace detail

class page_resource : public std::pmr::memory_resource {
 public:
  /// Grows from the OS on demand.
  page_resource();
  explicit page_resource(const page_resource_options& options);
  /// Manages a caller's fixed buffer: never calls the OS, never writes outside the buffer (its
  /// metadata lives at the buffer's start), throws std::bad_alloc when full.
  explicit page_resource(std::span<std::byte> buffer);
  ~page_resource() override;
  page_resource(const page_resource&) = delete;
  page_resource& operator=(const page_resource&) = delete;

  /// Hot-adds caller memory. Unaligned edges are trimmed to pages and the region's metadata is
  /// carved from its start. Throws std::invalid_argument, naming the range and the first page in
  /// conflict, if it overlaps memory that any live page_resource manages (this one included):
  /// its pages or its metadata, as the process page map records them; or if it cannot hold one
  /// page with its metadata. std::length_error past max_regions. Nothing is written to the
  /// memory before it is accepted. Returns the new region's index.
  std::size_t add_region(std::span<std::byte> memory);

  /// `count` pages (0 counts as 1), aligned to `alignment` (a power of two; page alignment at
  /// least). A count that is not a power of two wastes no pages. Throws std::bad_alloc when no
  /// memory can be had, std::invalid_argument for a bad alignment.
  void* allocate_pages(std::size_t count, std::size_t alignment = page_size) {
    return allocate_pages(count, alignment, page_constraint{});
  }
  void* allocate_pages(std::size_t count, std::size_t alignment, page_constraint where);
  /// Gives back what allocate_pages(count, …) returned. Throws std::invalid_argument naming the
  /// pointer if it is not the start of a live allocation of exactly `count` pages; nothing is
  /// changed then.
  void deallocate_pages(void* p, std::size_t count);

  /// Gives back the live run that starts at `p`, whatever its size (free() without a size).
  /// Throws std::invalid_argument naming the pointer if `p` is not the start of a live run.
  void deallocate_run(void* p);

  /// Grows or shrinks the live run at `p` from old_count to new_count pages in place: shrinking
  /// gives the tail back, growing takes free buddy pages right after the run. Returns false,
  /// changing nothing, when the pages after the run are not free. Throws std::invalid_argument
  /// like deallocate_pages for a `p` / old_count that is not a live run.
  bool resize_pages(void* p, std::size_t old_count, std::size_t new_count);

  /// The block that holds `p`, or nothing if `p` is outside every region. O(1): the page map
  /// finds the region, then at most max_order + 1 probes of its page metadata.
  std::optional<block_info> find_block(const void* p) const;
  /// The live run that holds `p` (any byte of it), or nothing.
  std::optional<run_info> find_run(const void* p) const;
  bool owns(const void* p) const noexcept { return owner_of(p) == this; }
  /// Bytes usable at `p` (its page count x page_size), for `p` the start of a live run; throws
  /// std::invalid_argument naming the pointer otherwise.
  std::size_t usable_size(const void* p) const;
  /// The page_resource managing the page of `p`, or nullptr: the process page map, O(1), no lock.
  static page_resource* owner_of(const void* p) noexcept;

  /// Owner tags, for a layer above that keeps no table of the runs it hands out (slab_resource's
  /// large blocks): a live run of at least two pages carries a nonzero 32-bit tag and the bytes
  /// its user asked for in the metadata of its second page, outside the run (I12).
  /// allocate_tagged is allocate(bytes, alignment) that also tags the run; `tagged` false: the
  /// run could not carry a tag (one page), the caller keeps its own record. `pages`, if more
  /// than the memory_resource interface would take (class_pages), is the run's page count.
  void* allocate_tagged(std::size_t bytes, std::size_t alignment, std::uint32_t tag, bool& tagged,
                        std::size_t pages = 0);
  /// If `p` is the start of a live run tagged `tag`: clears the tag (one compare-and-swap: of
  /// two racing calls one wins), frees the run whatever its size, sets `bytes` to the recorded
  /// bytes and returns true. Otherwise changes nothing and returns false. No lookup is repeated.
  bool deallocate_tagged(void* p, std::uint32_t tag, std::size_t& bytes);
  struct tagged_run {
    void* start;
    std::size_t bytes;  // as recorded by allocate_tagged
  };
  /// Parking: a layer above that caches runs of its own (a cache that must refuse a second
  /// free of a run it holds) takes a freed tagged run out of its user's hands without giving it
  /// back here. park_tagged(p, tag, out) is deallocate_tagged's check (p the start of a live run
  /// tagged `tag`) followed by one compare-and-swap of the run mark, live -> parked (I11): a second
  /// free of p, by any path, then finds no live run and throws naming p. On success `out`
  /// describes the run (its `meta` is opaque, for unpark / free_parked only) and `bytes` is
  /// what its user had asked for. False: nothing changed (not a live run tagged `tag`).
  /// unpark hands a parked run to a new user asking `bytes` (<= out.pages x page_size), tagged
  /// `tag` again; free_parked gives it back here as deallocate_tagged would. Both only on a
  /// run parked by the caller, once; a parked run is allocated for trim(), stats() and
  /// check_invariants(), and not reported by tagged_runs().
  struct parked_run {
    void* start = nullptr;
    void* meta = nullptr;  // opaque: the run head's metadata
    std::size_t pages = 0;
  };
  bool park_tagged(void* p, std::uint32_t tag, parked_run& out, std::size_t& bytes) noexcept;
  void unpark(const parked_run& r, std::size_t bytes, std::uint32_t tag) noexcept;
  void free_parked(const parked_run& r);
  /// Up to out.size() live runs tagged `tag`, in address order within a region, from `cursor`
  /// on (0 to begin; updated): returns how many, 0 at the end. Under the lock, a walk of the
  /// blocks (not the pages). take_tagged_runs also clears the tags it reports.
  std::size_t tagged_runs(std::uint32_t tag, std::span<tagged_run> out,
                          std::uint64_t& cursor) const;
  std::size_t take_tagged_runs(std::uint32_t tag, std::span<tagged_run> out, std::uint64_t& cursor);

  /// Returns every run in the run cache to the buddy lists (merging them).
  void flush_cache();

  /// Purges every free resident page of the OS regions and unmaps OS regions that are wholly
  /// free. Returns the bytes given back.
  std::size_t trim();
  /// Returns everything at once: OS regions are unmapped, caller regions become wholly free.
  /// Every pointer handed out before is invalid afterwards. Safe against a trim() or purge
  /// running on another thread (it waits for the purge in flight); any other call racing it
  /// is a use after free.
  void release();

  page_resource_stats stats() const;
  /// Verifies I1–I11; throws std::logic_error naming the broken invariant.
  void check_invariants() const;
  const page_resource_options& options() const noexcept { return options_; }

  /// Pages that hold `bytes` (at least one). No overflow: SIZE_MAX gives SIZE_MAX / page_size + 1.
  static constexpr std::size_t pages_for(std::size_t bytes) noexcept {
    return bytes == 0 ? 1 : (bytes >> page_shift) + ((bytes & (page_size - 1)) != 0);
  }
  /// The page count the memory_resource interface allocates for a request of `pages` pages:
  /// up to 16 pages exact, then rounded up to a multiple of an eighth of the power of two below
  /// (17-32 pages to even counts, 33-64 to multiples of 4, ...): at most 1/8 more address space
  /// (the extra pages are never touched, so no more RSS), and far fewer distinct run sizes for
  /// the run cache to hold. allocate_pages / deallocate_pages take counts as given.
  static constexpr std::size_t class_pages(std::size_t pages) noexcept {
    if (pages <= 16) return pages;
    const std::size_t step = (std::size_t{1} << (std::bit_width(pages - 1) - 1)) / 8;
    return (pages + step - 1) & ~(step - 1);
  }

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

 private:
  static constexpr std::uint32_t no_page = std::numeric_limits<std::uint32_t>::max();

  friend struct detail::page_access;
  friend struct detail::page_parking;  // park_tagged / unpark inline (src/page/parking.hpp)
  struct core_cache;
  struct purger_state;

  // 12 bytes a page, kept outside the pages handed out.
  struct page_meta {
    std::uint8_t state;  // meta_none / meta_free / meta_allocated / meta_purging
    std::uint8_t order;
    std::uint8_t flags;  // flag_dirty (free), flag_continued / flag_run_head (allocated)
    std::uint8_t run;    // run mark: run_live / run_cached on a live run head, else 0; only
                         // ever accessed atomically (a free claims the run by a CAS on it)
    std::uint32_t prev;  // free: list links (page indices in the region); allocated: prev =
    std::uint32_t next;  // the run head's index, next = the run's page count (head block)
  };
  static_assert(sizeof(page_meta) == 12);

  struct region {
    std::uintptr_t base = 0;  // first managed page
    std::uint32_t pages = 0;
    std::uint32_t free_pages = 0;
    std::uint32_t nonempty = 0;  // bit k: free list k not empty
    std::array<std::uint32_t, max_order + 1> free_head{};
    std::array<std::uint32_t, max_order + 1> free_tail{};
    page_meta* meta = nullptr;
    std::uintptr_t span_begin = 0, span_end = 0;  // everything the region occupies (overlap)
    bool os_backed = false;
    bool in_use = false;
    void* os_map = nullptr;  // OS regions: one mapping, the pages then their metadata
    std::size_t os_map_bytes = 0;
  };

  struct purge_victim {
    std::size_t region;
    std::uint32_t index;
    unsigned order;
  };

  void init_region(region& r);
  std::size_t insert_region(const region& r);  // lock held; throws (nothing changed)
  void remove_region(std::size_t ri,
                     bool clear_map = true) noexcept;         // lock held: page map, index, slot
  std::size_t region_of(std::uintptr_t addr) const noexcept;  // any_region if not ours
  // The run head at p, validated; throws naming p (and count, if nonzero) otherwise.
  std::uint32_t checked_run(std::uintptr_t addr, std::size_t count, std::size_t& ri,
                            const char* what) const;
  std::size_t live_run_pages(const void* p) const noexcept;  // 0: not a live run head
  // The head meta of the live run at p if its head block has two pages or more (so that the
  // next page's meta holds the tag, I12), else nullptr.
  page_meta* tag_slot(const void* p) const noexcept;
  // The metadata of p's page in region r (p one of r's managed pages).
  static page_meta* meta_in(const region& r, const void* p) noexcept;
  // A live run at p of count pages, head meta m, untagged: to the run cache or the buddy lists.
  void free_claimed(void* p, std::size_t count, page_meta* m);
  std::size_t scan_tagged(std::uint32_t tag, std::span<tagged_run> out, std::uint64_t& cursor,
                          bool take);
  void free_run_locked(region& r, std::uint32_t index, std::uint32_t count);
  // Lock held, after checked_run: takes the run from its user (mark live -> none); throws
  // naming p if a racing free took it first.
  void claim_run(region& r, std::uint32_t head, const void* p, std::size_t count, const char* what);
  bool should_purge_locked();
  core_cache& this_core() const noexcept;
  page_run_cache_counters cache_counters() const noexcept;
  void* cache_take(std::size_t count) noexcept;
  bool cache_put(void* p, std::size_t count, page_meta* head) noexcept;  // p validated
  [[gnu::noinline]] void* allocate_slow(std::size_t count, std::size_t alignment,
                                        page_constraint where);
  void* allocate_attempt(  // allocate_slow without the out-of-memory report
      std::size_t count, std::size_t alignment, page_constraint where);
  [[gnu::noinline]] void deallocate_slow(void* p, std::size_t count);
  std::size_t cached_pages() const noexcept;
  void drain_caches(bool all);
  void clear_core(std::size_t c) noexcept;
  std::size_t check_cache_locked() const;  // C1-C3; returns the number of cached runs
  std::vector<std::size_t> core_cached_bytes()
      const;                   // lock held: forget the core's runs (release)
  void lock_all() noexcept;    // fork prepare: mutex_, then every core cache
  void unlock_all() noexcept;  // fork parent / child
  void after_fork_child() noexcept;
  void start_purger();
  void stop_purger() noexcept;
  void purger_loop();
  std::optional<block_info> find_block_locked(const void* p) const;
  void* try_allocate_locked(std::size_t count, unsigned order, page_constraint where);
  // A big run of `count` pages at any page of a span of free blocks, where it covers the most
  // resident pages (span.cpp); false: take a block as usual.
  bool take_span_locked(std::size_t count, void*& out);
  bool take_from_region(std::size_t ri, unsigned order, std::uintptr_t below, std::uint32_t& index,
                        bool& dirty);
  void mark_run(region& r, std::uint32_t head, std::uint32_t count);
  void unmark_run(region& r, std::uint32_t head, std::uint32_t count);
  void free_range(region& r, std::uint32_t from, std::uint32_t to);
  void carve_run(region& r, std::uint32_t head, std::uint32_t count, unsigned order, bool dirty);
  void free_block(region& r, std::uint32_t index, unsigned order, bool dirty);
  // Whether any of pages [index, index + count) has the resident bit (free pages only have it).
  static bool any_resident(const region& r, std::uint32_t index, std::uint32_t count);
  void push_free(region& r, std::uint32_t index, unsigned order, bool dirty);
  void remove_free(region& r, std::uint32_t index, unsigned order);
  void* grow(std::size_t count, unsigned order);  // a new OS region and the run from it
  std::size_t purge(std::size_t keep_bytes, unsigned min_block_order);
  unsigned policy_min_order() const noexcept;
  static bool unmap_region(region& r) noexcept;
  [[noreturn]] void throw_bad_pointer(const void* p, std::size_t count, const char* why) const;
  [[noreturn]] static void throw_bad_pointer(const char* what, const void* p, std::size_t count,
                                             const char* why);

  static std::uint64_t pfn(std::uintptr_t addr) noexcept { return addr >> page_shift; }
  std::uintptr_t page_addr(const region& r, std::uint32_t index) const noexcept {
    return r.base + (std::uintptr_t{index} << page_shift);
  }

  page_resource_options options_;
  mutable std::mutex mutex_;
  // Everything below is guarded by mutex_.
  std::array<region, max_regions> regions_{};
  std::size_t region_count_ = 0;  // regions in use
  std::size_t os_regions_made_ = 0;
  std::size_t managed_pages_ = 0;
  std::size_t allocated_pages_ = 0;
  std::size_t peak_allocated_pages_ = 0;
  std::size_t dirty_free_pages_ = 0;
  std::size_t purging_pages_ = 0;
  std::size_t purged_bytes_ = 0;
  std::size_t os_mapped_bytes_ = 0;
  std::size_t os_maps_ = 0;
  std::size_t os_unmaps_ = 0;
  std::size_t span_runs_ = 0;  // big runs carved over resident pages (take_span_locked)
  bool purge_running_ = false;
  std::condition_variable purge_done_;  // signalled when purge_running_ goes false
  // The purge in flight (its blocks are meta_purging, out of the lists): kept here, not on the
  // purging thread's stack, so that a child forked during the madvise can put them back.
  std::array<purge_victim, 64> victims_{};
  std::array<std::pair<std::uint32_t, std::uint32_t>, 64> victim_spans_{};  // resident [lo, hi)
  std::size_t victim_count_ = 0;
  std::chrono::steady_clock::time_point last_purge_{};
  // Run cache: one per core (index sched_getcpu() % core_count_), each under its own lock.
  std::unique_ptr<core_cache[]> cores_;
  std::size_t core_count_ = 0;
  std::size_t cache_page_limit_ = 0;  // options_.cache_bytes_per_core in pages
  // Background purger (options_.background_purge).
  std::unique_ptr<purger_state> purger_;
  // Live-resource registry (registry.cpp, under its mutex): fork handlers walk it.
  page_resource* live_prev_ = nullptr;
  page_resource* live_next_ = nullptr;
};

/// The process-wide page_resource (grows from the OS), never destroyed: the default upstream of
/// the rest of bsalloc.
page_resource& global_page_resource() noexcept;

}  // namespace bsalloc
