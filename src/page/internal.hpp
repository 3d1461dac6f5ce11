// SPDX-License-Identifier: Apache-2.0
#pragma once
// Internals shared by the page layer's files (src/page_resource.cpp and src/page/*.cpp).
//
// Layers, bottom up:
//   os.cpp         mmap / madvise / munmap behind four functions, with the fault-injection hook
//   page_map.cpp   process-wide address -> (page_resource, region), two-level radix
//   buddy.cpp      free lists, split, merge, runs (lock held)
//   span.cpp       big runs placed over resident pages (lock held)
//   run_cache.cpp  per-core cache of freed runs in front of the buddy lock
//   regions.cpp    add_region, OS regions (grow), region insertion and removal
//   purge.cpp      purge policy, trim, release, background purger
//   registry.cpp   live resources and the fork handlers
//   invariants.cpp check_invariants(), stats()
#include <bsalloc/locks.hpp>
#include <bsalloc/page_resource.hpp>

#include <thread>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>

namespace bsalloc {

namespace detail {
// Runs a run-cache bin of `pages`-page runs holds: 32 of one page down to 4 of 16 pages or more
// (about 64 pages' worth where that is at least 4 runs).
constexpr std::size_t bin_capacity(std::size_t pages) {
  return std::clamp<std::size_t>(64 / pages, 4, 32);
}
constexpr std::size_t max_bin_capacity = 32;
constexpr auto bin_capacities = [] {
  std::array<std::uint8_t, max_cached_run_pages + 1> cap{};
  for (std::size_t n = 1; n <= max_cached_run_pages; ++n)
    cap[n] = static_cast<std::uint8_t>(bin_capacity(n));
  return cap;
}();
// Where bin n starts in a core's entry array.
constexpr auto bin_offsets = [] {
  std::array<std::size_t, max_cached_run_pages + 2> off{};
  for (std::size_t n = 1; n <= max_cached_run_pages; ++n) off[n + 1] = off[n] + bin_capacity(n);
  return off;
}();
}  // namespace detail

// One core's run cache (run_cache.cpp): bins by page count, under its own lock.

struct alignas(64) page_resource::core_cache {
  struct entry {
    void* run;
    page_meta* head;
  };
  yield_lock lock;
  std::atomic<std::size_t> pages{0};  // written under lock; read by the policy without it
  // Counters of the slow branches only (the hits cost nothing to leave uncounted), written
  // under lock (a relaxed load and store: no read-modify-write), read by stats() without it:
  // takes that found their bin empty, frees sent on to the buddy lists (bin full or budget spent).
  std::atomic<std::uint64_t> misses{0}, overflows{0};
  std::array<std::uint8_t, max_cached_run_pages + 1> count{};
  std::array<entry, detail::bin_offsets[max_cached_run_pages + 1]> entries;
  entry* bin(std::size_t n) noexcept { return &entries[detail::bin_offsets[n]]; }
  const entry* bin(std::size_t n) const noexcept { return &entries[detail::bin_offsets[n]]; }
};

// The background purger's thread (purge.cpp).
struct page_resource::purger_state {
  std::thread thread;
  std::mutex mutex;
  std::condition_variable wake;
  bool stop = false;
};

}  // namespace bsalloc

namespace bsalloc::detail {

// page_meta::state
constexpr std::uint8_t meta_none = 0;
constexpr std::uint8_t meta_free = 1;
constexpr std::uint8_t meta_allocated = 2;
constexpr std::uint8_t meta_purging = 3;
// page_meta::flags
constexpr std::uint8_t flag_dirty = 1;      // head of a free block: may hold resident pages
constexpr std::uint8_t flag_continued = 2;  // head of an allocated block: the run goes on
constexpr std::uint8_t flag_resident = 4;   // any page of an OS region: touched since purged
constexpr std::uint8_t flag_run_head = 8;   // head of the first block of an allocated run

constexpr std::uintptr_t align_up(std::uintptr_t v, std::uintptr_t a) {
  return (v + a - 1) & ~(a - 1);
}
constexpr std::uintptr_t align_down(std::uintptr_t v, std::uintptr_t a) {
  return v & ~(a - 1);
}

// Largest k such that a block of 2^k pages starting at absolute pfn `abs` is aligned and fits
// in `room` pages.
inline unsigned greedy_order(std::uint64_t abs, std::uint64_t room) {
  unsigned k = abs == 0 ? max_order : std::min<unsigned>(std::countr_zero(abs), max_order);
  const unsigned fit = static_cast<unsigned>(std::bit_width(room) - 1);
  return std::min(k, fit);
}

// Pages [from, to) of a region whose first page has absolute pfn `base_pfn`, tiled by aligned
// blocks, each the largest that starts there and fits (the greedy decomposition): f(index, order)
// for each, in address order.
template <class F>
inline void for_each_greedy_block(std::uint64_t base_pfn, std::uint32_t from, std::uint32_t to,
                                  F&& f) {
  for (std::uint32_t q = from; q < to;) {
    const unsigned k = greedy_order(base_pfn + q, to - q);
    f(q, k);
    q += std::uint32_t{1} << k;
  }
}

// Order of the buddy block a run of `count` pages is carved from (its head's alignment, unless
// the run was resized in place: resize_pages keeps the head; or, above span_min_run_pages,
// carved from a span of free blocks at any page: take_span_locked).
inline unsigned run_order(std::size_t count) {
  return static_cast<unsigned>(std::bit_width(count - 1));
}

// page_meta::run, the run mark (I11): none on every page but the head of an allocated run,
// which is live while its user holds it, cached while it sits in a run-cache bin and parked
// while a layer above keeps it for itself. A free
// claims the run by one compare-and-swap from live; so the mark is only ever accessed
// atomically (relaxed: the locks and the run's hand-over order everything else), even where a
// lock is held, since a racing (double) free may CAS it without one.
constexpr std::uint8_t run_none = 0;
constexpr std::uint8_t run_live = 1;
constexpr std::uint8_t run_cached = 2;
constexpr std::uint8_t run_parked = 3;  // held by a layer above (page_resource::park_tagged)
inline std::uint8_t run_mark(const std::uint8_t& c) noexcept {
  return std::atomic_ref(const_cast<std::uint8_t&>(c)).load(std::memory_order_relaxed);
}
inline void set_run_mark(std::uint8_t& c, std::uint8_t v) noexcept {
  std::atomic_ref(c).store(v, std::memory_order_relaxed);
}
inline bool claim_run_mark(std::uint8_t& c, std::uint8_t to) noexcept {
  std::uint8_t expect = run_live;
  return std::atomic_ref(c).compare_exchange_strong(expect, to, std::memory_order_relaxed);
}
// The owner-tag fields of a run's second page (I12: prev = tag, next = the run's bytes minus
// those asked): written by the run's user without the lock, so always accessed atomically.
inline std::uint32_t load_tag_field(const std::uint32_t& v) noexcept {
  return std::atomic_ref(const_cast<std::uint32_t&>(v)).load(std::memory_order_relaxed);
}
inline void store_tag_field(std::uint32_t& v, std::uint32_t x) noexcept {
  std::atomic_ref(v).store(x, std::memory_order_relaxed);
}
// Writes a whole page_meta; its run mark atomically (see above).
template <class Meta>
inline void set_meta(Meta& m, std::uint8_t state, unsigned order, unsigned flags, std::uint8_t mark,
                     std::uint32_t prev, std::uint32_t next) noexcept {
  m.state = state;
  m.order = static_cast<std::uint8_t>(order);
  m.flags = static_cast<std::uint8_t>(flags);
  set_run_mark(m.run, mark);
  m.prev = prev;
  m.next = next;
}

// ---- placement (buddy.cpp, span.cpp) --------------------------------------------------------
// Runs of up to 2^small_run_order pages (slabs) take blocks below small_area_order first, else
// the lowest-addressed free block among the first small_run_scan of the bigger lists.
constexpr unsigned small_run_order = 4;
constexpr unsigned small_area_order = 5;
constexpr std::size_t small_run_scan = 64;
// Runs above span_min_run_pages (1 MiB) go where they cover the most resident pages: in the
// spans of adjacent free blocks around resident blocks of at least span_min_order, at most
// span_scan_steps block visits and span_scan_pages resident bits read (32 Ki: tens of
// microseconds at worst, against the faults of the pages it saves). Smaller runs find blocks of
// their order often enough.
constexpr std::size_t span_min_run_pages = 256;
constexpr unsigned span_min_order = 4;
constexpr std::size_t span_scan_steps = 512;
constexpr std::size_t span_scan_pages = std::size_t{1} << 15;

// ---- OS layer (os.cpp) ----------------------------------------------------------------------
/// Anonymous private read-write mapping, MAP_NORESERVE; nullptr on failure.
void* os_map(std::size_t bytes) noexcept;
/// A mapping of `bytes` whose start is aligned to `align` (a power of two); nullptr on failure.
void* os_map_aligned(std::size_t bytes, std::size_t align) noexcept;
bool os_unmap(void* p, std::size_t bytes) noexcept;
/// MADV_DONTNEED: the pages read as zero afterwards and are not resident.
bool os_purge(void* p, std::size_t bytes) noexcept;
/// MADV_HUGEPAGE; failure is harmless (no transparent huge pages).
void os_hugepage(void* p, std::size_t bytes) noexcept;

// ---- page map (page_map.cpp) ----------------------------------------------------------------
/// Records region `region` of `owner`: its managed pages [base, base + pages x page) map to
/// (owner, region), the rest of its span [span_begin, span_end) — its metadata — to
/// page_map_metadata. First checks, under one process-wide lock (so that two resources adding
/// overlapping memory at once cannot both succeed), that no page of the span is recorded yet;
/// if one is, records nothing and returns it. Throws std::bad_alloc if a leaf of the map cannot
/// be mapped (nothing recorded then).
struct page_map_conflict {
  std::uintptr_t page = 0;  // 0: no conflict
  bool metadata = false;    // the page holds some page_resource's metadata (else a managed page)
};
page_map_conflict page_map_claim(std::uintptr_t span_begin, std::uintptr_t span_end,
                                 std::uintptr_t base, std::size_t pages, const page_resource* owner,
                                 std::size_t region);
/// page_map_claim without the check, for a span whose leaves exist (trim() putting back a
/// region the OS refused to unmap).
void page_map_record(std::uintptr_t span_begin, std::uintptr_t span_end, std::uintptr_t base,
                     std::size_t pages, const page_resource* owner, std::size_t region) noexcept;
/// Forgets the pages [first, last).
void page_map_clear(std::uintptr_t first, std::uintptr_t last) noexcept;
struct page_map_hit {
  page_resource* owner;  // nullptr: not bsalloc memory
  std::size_t region;
};
constexpr unsigned page_map_address_bits = 47;
constexpr unsigned page_map_leaf_bits = 18;  // a leaf covers 1 GiB
constexpr std::size_t page_map_root_entries =
    std::size_t{1} << (page_map_address_bits - page_shift - page_map_leaf_bits);
// An entry packs (owner address << 8) | (region + 1); 0 means "not bsalloc memory", and
// page_map_metadata (no owner) a page of some page_resource's metadata: not handed out, but
// managed, so that no other region may overlap it.
static_assert(max_regions < 254);
constexpr std::uint64_t page_map_metadata = 0xff;
extern std::atomic<std::uint64_t*> page_map_root[page_map_root_entries];

inline page_map_hit page_map_find(const void* p) noexcept {
  const std::uint64_t pfn = reinterpret_cast<std::uintptr_t>(p) >> page_shift;
  if (pfn >> (page_map_address_bits - page_shift)) [[unlikely]]
    return {nullptr, any_region};
  const std::uint64_t* leaf =
      page_map_root[pfn >> page_map_leaf_bits].load(std::memory_order_acquire);
  if (!leaf) return {nullptr, any_region};
  const std::uint64_t e =
      std::atomic_ref(
          const_cast<std::uint64_t&>(leaf[pfn & ((std::uint64_t{1} << page_map_leaf_bits) - 1)]))
          .load(std::memory_order_acquire);
  if (e == 0) return {nullptr, any_region};
  // page_map_metadata decodes to no owner (region 254, never looked at).
  return {reinterpret_cast<page_resource*>(e >> 8), static_cast<std::size_t>(e & 0xff) - 1};
}

/// The raw entry for `p`'s page (0, page_map_metadata, or an owner's entry): check_invariants().
std::uint64_t page_map_entry(const void* p) noexcept;

}  // namespace bsalloc::detail

namespace bsalloc {
// Owner tags (I12, tags.cpp and run_cache.cpp). Without the lock: the head of a live run does
// not change until its user frees it, and only its user calls this for it.
[[gnu::always_inline]] inline page_resource::page_meta* page_resource::meta_in(
    const region& r, const void* p) noexcept {
  return &r.meta[(reinterpret_cast<std::uintptr_t>(p) - r.base) >> page_shift];
}

[[gnu::always_inline]] inline page_resource::page_meta* page_resource::tag_slot(
    const void* p) const noexcept {
  const detail::page_map_hit hit = detail::page_map_find(p);
  if (hit.owner != this) [[unlikely]]
    return nullptr;
  page_meta* m = meta_in(regions_[hit.region], p);
  if (reinterpret_cast<std::uintptr_t>(p) % page_size != 0 ||
      detail::run_mark(m->run) != detail::run_live || m->order == 0) [[unlikely]]
    return nullptr;
  return m;  // m + 1 lies inside the head block (order >= 1): no block's head
}
}  // namespace bsalloc

namespace bsalloc::detail {

// ---- registry (registry.cpp) ----------------------------------------------------------------
void register_resource(page_resource* r);
void unregister_resource(page_resource* r) noexcept;
// Installs the page layer's pthread_atfork handlers (once). Layers above call it before installing
// their own, so that their prepare handlers run first (reverse order of installation).
void install_page_fork_handlers();
// global_page_resource() is built once, under this mutex, and not with a function-local static:
// fork() while another thread was inside a static's guard would leave the child a guard that
// nobody releases, and every later global_page_resource() call in the child would block. The
// fork handlers hold this mutex across fork() (taken first: the constructor registers the
// resource, which takes the registry's mutex).
extern std::mutex global_page_resource_mutex;

}  // namespace bsalloc::detail
