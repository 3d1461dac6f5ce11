// SPDX-License-Identifier: Apache-2.0
#pragma once
// A thread cache's large runs (large.cpp): with a page_resource upstream and checked mode off,
// a large block of up to large_cache::max_pages pages that a thread frees is parked
// (page_resource::park_tagged: one compare-and-swap of its run mark, no lock) in that thread's
// cache for the resource, and its next large request of the same run class (or of one up to a
// third smaller: borrowing, below) takes it back
// (page_resource::unpark: plain stores) — no lock, no sched_getcpu(), no shared counter.
//
// Its own run classes, coarser than page_resource::class_pages() so that a run freed for one
// request fits the next one more often (as jemalloc's and tcmalloc's large classes): up to 8
// pages exact, then four counts per doubling (10, 12, 14, 16, 20, 24, …, 56, 64 pages): at
// most a quarter more address space than asked, and no more RSS (the pages past what the
// caller touches stay untouched). 19 bins. Each bin is LIFO (the newest run is the warmest)
// and holds at most per_bin runs; a full bin gives its oldest run back to the page layer, and
// a run that would take the cache over its budget (large_budget()) is not parked. A request
// whose bin is empty takes a run of one of the next bins up (borrow_bins) if that has at most
// half as many pages again as its class (borrowed_ok): with random sizes, each bin's count is
// a random walk that hits 0 often, and the next bins up usually hold a run.
//
// Invariants (L2, checked by slab_resource::check_invariants()):
//   - every entry of bin b is a run of upstream_pages, parked (run mark, I11), tagged with this
//     resource's tag, of bin b's page count, its meta the run head's; no run is in two entries
//     (of any thread cache);
//   - pages == the sum over the entries of their page counts, pages x page_size <= the
//     budget's ceiling (large_budget_growth x knobs.large_cache_bytes), runs == the number of
//     entries.
// take_newest(), take_out() and put_in() are the only writers of the bins and the totals (and
// fork's recount); slab_resource's large front (large.cpp) reaches them with no other work on a
// hit. Owner thread only; the counters are atomic only so that stats() may read them (relaxed).
// Made with its thread cache (4.9 KiB), freed with it.
#include <bsalloc/page_resource.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace bsalloc::detail {

struct large_cache {
  static constexpr std::size_t max_pages = 64;  // runs up to 256 KiB
  static constexpr std::size_t bins = 19;
  static constexpr std::size_t per_bin = 16;
  static constexpr std::size_t borrow_bins = 2;  // a miss looks this many bins up

  /// The run class of a request of `pages` pages: the page count the cache's runs have.
  static constexpr std::size_t class_pages(std::size_t pages) noexcept {
    if (pages <= 8) return pages;
    const std::size_t step = std::size_t{1} << (std::bit_width(pages - 1) - 3);
    return (pages + step - 1) & ~(step - 1);
  }
  /// The bin of a run of `pages` pages (a class_pages() count of 2 … max_pages), or bins if
  /// the cache takes no run of that count.
  static constexpr std::size_t bin_of(std::size_t pages) noexcept {
    if (pages < 2 || pages > max_pages) return bins;
    if (pages <= 8) return pages - 2;
    const auto k = static_cast<unsigned>(std::bit_width(pages - 1));  // 2^(k-1) < pages <= 2^k
    const std::size_t step = std::size_t{1} << (k - 3);
    if ((pages & (step - 1)) != 0) return bins;  // not a class count
    return 7 + (k - 4) * 4 + (pages - (std::size_t{1} << (k - 1))) / step - 1;
  }

  /// The page count of bin b's runs (bin_of's inverse).
  static constexpr std::size_t bin_pages(std::size_t b) noexcept {
    if (b < 7) return b + 2;
    const std::size_t k = (b - 7) / 4 + 4;  // 2^(k-1) < pages <= 2^k
    return (std::size_t{1} << (k - 1)) + ((b - 7) % 4 + 1) * (std::size_t{1} << (k - 3));
  }

  // An entry: a parked run without its page count (its bin's).
  struct entry {
    void* start = nullptr;
    void* meta = nullptr;
  };
  std::array<std::uint8_t, bins> count{};
  std::array<std::array<entry, per_bin>, bins> runs{};
  bool active = false;  // a large call since the last scavenge
  // L2: the runs parked here and their pages (atomic for stats(); owner writes only) ...
  std::atomic<std::size_t> parked_runs{0}, pages{0};
  // ... and what this cache's thread changed in slab_state::large_objects / large_bytes
  // (modulo 2^64: a thread may free more than it allocated). Folded into those when the cache
  // goes (thread exit); stats() adds them up.
  std::atomic<std::size_t> objects_delta{0}, bytes_delta{0};
};

// The same two maps as tables, for the hit paths (no bit arithmetic there).
constexpr auto make_large_table(bool request) {
  std::array<std::uint8_t, large_cache::max_pages + 1> t{};
  for (std::size_t n = 0; n <= large_cache::max_pages; ++n)
    t[n] = static_cast<std::uint8_t>(
        request ? (n == 0 ? large_cache::bins : large_cache::bin_of(large_cache::class_pages(n)))
                : large_cache::bin_of(n));
  return t;
}
/// large_request_bin[n]: the bin that serves a request of n pages (n <= max_pages), or bins.
inline constexpr auto large_request_bin = make_large_table(true);
/// large_run_bin[n]: the bin of a run of n pages (n <= max_pages), or bins (not a class count).
inline constexpr auto large_run_bin = make_large_table(false);

/// A run of `run_pages` may serve a request of class `class_pages`: it is no smaller and has
/// at most half as many pages again (the address space a borrowed run wastes; RSS only where
/// an earlier user touched the pages past the request).
constexpr bool borrowed_ok(std::size_t class_pages, std::size_t run_pages) noexcept {
  return run_pages >= class_pages && 2 * run_pages <= 3 * class_pages;
}

/// The budget grows with what the thread holds: a quarter of its live large bytes through this
/// resource (large blocks of any size it allocated minus those it freed, when positive: blocks
/// handed to other threads to free count as live here), at least `base`
/// (knobs.large_cache_bytes) and at most large_budget_growth x base. A thread that keeps many
/// large blocks live and replaces them churns through more sizes than a fixed budget holds
/// runs for; one with few keeps the base. Checked when a run is parked; a park past it gives
/// the cache's oldest runs back until it fits (slab_state::over_budget), so the cache follows
/// the budget down as the thread frees.
inline constexpr std::size_t large_budget_growth = 4;
constexpr std::size_t large_budget_ceiling(std::size_t base) noexcept {
  return base > SIZE_MAX / large_budget_growth ? SIZE_MAX : base * large_budget_growth;
}
inline std::size_t large_budget(const large_cache& lc, std::size_t base) noexcept {
  const std::size_t live = lc.bytes_delta.load(std::memory_order_relaxed);
  const std::size_t quarter =
      static_cast<std::ptrdiff_t>(live) > 0 ? live / 4 : 0;  // negative: frees more than it made
  return std::max(base, std::min(quarter, large_budget_ceiling(base)));
}

/// One more (or less: n wraps) in a counter that only its owner thread writes.
inline void add_owned(std::atomic<std::size_t>& counter, std::size_t n) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

/// large_bin_pages[b] == large_cache::bin_pages(b), for the hit path.
inline constexpr auto large_bin_pages = [] {
  std::array<std::uint8_t, large_cache::bins> t{};
  for (std::size_t b = 0; b < large_cache::bins; ++b)
    t[b] = static_cast<std::uint8_t>(large_cache::bin_pages(b));
  return t;
}();

/// Takes the newest entry of bin b (not empty) out of the cache: a hit.
inline page_resource::parked_run take_newest(large_cache& lc, std::size_t b) noexcept {
  const large_cache::entry e = lc.runs[b][--lc.count[b]];
  const std::size_t pages = large_bin_pages[b];
  add_owned(lc.parked_runs, std::size_t(-1));
  add_owned(lc.pages, 0 - pages);
  return {e.start, e.meta, pages};
}
/// Takes entry i of bin b out of the cache (the entries above it move down one).
inline page_resource::parked_run take_out(large_cache& lc, std::size_t b, std::size_t i) noexcept {
  auto& bin = lc.runs[b];
  const large_cache::entry e = bin[i];
  const std::size_t n = lc.count[b] - 1u;
  for (; i < n; ++i) bin[i] = bin[i + 1];
  bin[n] = e;  // on top: take_newest takes it and its counts
  return take_newest(lc, b);
}
/// Puts a parked run into bin b, which has room. The entry is written before the count, so
/// that a fork at any point leaves the child no stale entry below count.
inline void put_in(large_cache& lc, std::size_t b, const page_resource::parked_run& r) noexcept {
  const std::uint8_t n = lc.count[b];
  lc.runs[b][n] = {r.start, r.meta};
  std::atomic_ref(lc.count[b]).store(static_cast<std::uint8_t>(n + 1), std::memory_order_release);
  add_owned(lc.parked_runs, 1);
  add_owned(lc.pages, r.pages);
}

static_assert(large_cache::class_pages(8) == 8 && large_cache::class_pages(9) == 10 &&
              large_cache::class_pages(17) == 20 && large_cache::class_pages(33) == 40 &&
              large_cache::class_pages(64) == 64);
static_assert(large_cache::bin_of(2) == 0 && large_cache::bin_of(8) == 6 &&
              large_cache::bin_of(10) == 7 && large_cache::bin_of(16) == 10 &&
              large_cache::bin_of(20) == 11 && large_cache::bin_of(64) == 18 &&
              large_cache::bin_of(65) == large_cache::bins &&
              large_cache::bin_of(18) == large_cache::bins);
static_assert([] {
  for (std::size_t b = 0; b < large_cache::bins; ++b)
    if (large_cache::bin_of(large_cache::bin_pages(b)) != b) return false;
  return true;
}());
static_assert(large_request_bin[1] == large_cache::bins && large_request_bin[2] == 0 &&
              large_request_bin[17] == 11 && large_request_bin[64] == 18 &&
              large_run_bin[18] == large_cache::bins && large_run_bin[20] == 11);

}  // namespace bsalloc::detail
