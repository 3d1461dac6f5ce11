// SPDX-License-Identifier: Apache-2.0
#pragma once
// A thread cache's large bins (large.cpp): with a page_resource upstream, checked mode off and
// the inline path on, the run classes above the slab classes, up to 256 KiB, are bins of the
// thread cache like the slab classes' (thread_cache.hpp): a free list of whole page runs, linked
// through each run's first word. The inline path serves them with the same code as the slab
// classes — one table lookup from the size to the bin, a pop or a push — so that sizes that
// straddle the largest slab class at random take no branch between two fronts, and a hit
// touches nothing but the bin and the run (as tcmalloc serves every size up to 256 KiB).
//
// A run in a bin stays allocated and tagged in the page layer (I12): to the page layer it is
// still its user's. The bins' slow paths (large.cpp) are the only places that talk to it: a miss
// takes a run of the bin's class from the page layer (allocate_tagged, asking the run's whole
// bytes), or the newest run of one of the next bins up (borrowing, below); a push into a full
// bin that may not grow sends the run back (deallocate_tagged, which validates it). A free on
// the inline path is not validated — as for the slab classes, unchecked mode promises nothing
// for a bad pointer; checked and hardened resources have no large bins, and every large free of
// theirs is validated by the page layer.
//
// Run classes, coarser than page_resource::class_pages() so that a run freed for one request
// fits the next one more often (as jemalloc's and tcmalloc's large classes): up to 8 pages
// exact, then four counts per doubling (10, 12, 14, 16, 20, 24, …, 56, 64 pages): at most a
// quarter more address space than asked, and no more RSS (pages past what the caller touches
// stay untouched). 19 bins; those above the resource's largest slab class are in use.
//
// Borrowing: with random sizes, each bin's count is a random walk that hits 0 often; a miss
// takes the newest run of one of the next borrow_bins bins up if it has at most half as many
// pages again as the request's class (borrowed_ok). The run keeps its pages; its user frees it
// with the bytes it asked, so it lands in the smaller class's bin, where it serves that class.
//
// Limits: a bin starts at large_initial_limit runs and doubles when it overflows and its thread
// also missed in it since it last grew (it both allocates and frees that class), within what
// the thread's other large bins leave of the ceiling, knobs.large_cache_bytes: the hard bound on
// the bytes one thread's large bins hold. A full bin that may not grow sends the freed run back to
// the page layer. A scavenge halves a bin that saw no slow-path visit since the last one (its runs
// too), which frees room under the ceiling for the busy ones.
//
// Accounting (stats()): a live run counts at its request's class, a cached one at its bin's
// class, as a slab object at its class size. A run's pages past that class (its excess: a run
// borrowed by a smaller class, and then cached in that class's bin) count in bytes_reserved
// only. The inline path moves runs between a class's users and its bin, which leaves every
// run's excess as it is; the slow paths that change one (a borrow, a validated push into the
// bin of the run's own pages, a give-back) add the change to the thread's large_excess.
//
// Invariants (L2, checked by slab_resource::check_invariants()):
//   - every run in large bin b is a live run of the page_resource upstream, tagged with this
//     resource's tag, of a class count of pages from b's class to half as many again
//     (borrowed_ok), its start a page; no run is in two bins (of any thread cache);
//   - count == the length of the list <= limit <= large_limit_max, and limit is 0 for bins out
//     of use; the sum over the bins of limit x run bytes == large_limit_bytes <= the ceiling.
// Owner thread only (count is atomic only so that stats() may read it), as every bin.
#include <bsalloc/page_resource.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "size_classes.hpp"

namespace bsalloc::detail {

struct large_runs {
  static constexpr std::size_t max_pages = 64;  // runs up to 256 KiB
  static constexpr std::size_t max_bytes = max_pages * page_size;
  static constexpr std::size_t bins = 19;
  static constexpr std::size_t borrow_bins = 2;  // a miss looks this many bins up

  /// The run class of a request of `pages` pages: the page count the bins' runs have.
  static constexpr std::size_t class_pages(std::size_t pages) noexcept {
    if (pages <= 8) return pages;
    const std::size_t step = std::size_t{1} << (std::bit_width(pages - 1) - 3);
    return (pages + step - 1) & ~(step - 1);
  }
  /// The bin of a run of `pages` pages (a class_pages() count of 2 … max_pages), or bins if
  /// no bin takes a run of that count.
  static constexpr std::size_t bin_of(std::size_t pages) noexcept {
    if (pages < 2 || pages > max_pages) return bins;
    if (pages <= 8) return pages - 2;
    const auto k = static_cast<unsigned>(std::bit_width(pages - 1));  // 2^(k-1) < pages <= 2^k
    const std::size_t step = std::size_t{1} << (k - 3);
    if ((pages & (step - 1)) != 0) return bins;  // not a class count
    return 7 + (k - 4) * 4 + (pages - (std::size_t{1} << (k - 1))) / step - 1;
  }
  /// The page count of bin b's class (bin_of's inverse).
  static constexpr std::size_t bin_pages(std::size_t b) noexcept {
    if (b < 7) return b + 2;
    const std::size_t k = (b - 7) / 4 + 4;  // 2^(k-1) < pages <= 2^k
    return (std::size_t{1} << (k - 1)) + ((b - 7) % 4 + 1) * (std::size_t{1} << (k - 3));
  }
};

/// The thread-cache class of large bin b, after the slab classes and bad_class.
constexpr int large_base = bad_class + 1;
constexpr std::size_t bin_total = static_cast<std::size_t>(large_base) + large_runs::bins;
static_assert(bin_total <= 255, "a class must fit the inline tables' bytes");

// The maps as tables, for the slow paths (no bit arithmetic there).
constexpr auto make_large_table(bool request) {
  std::array<std::uint8_t, large_runs::max_pages + 1> t{};
  for (std::size_t n = 0; n <= large_runs::max_pages; ++n)
    t[n] = static_cast<std::uint8_t>(
        request ? (n == 0 ? large_runs::bins : large_runs::bin_of(large_runs::class_pages(n)))
                : large_runs::bin_of(n));
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

/// bin_bytes[c]: what thread-cache bin c hands out — its class's object size, a large bin's
/// run bytes, 0 for bad_class. For the sanitizer annotations of the inline path.
inline constexpr auto bin_bytes = [] {
  std::array<std::uint32_t, bin_total> t{};
  for (int c = 0; c < class_count; ++c)
    t[static_cast<std::size_t>(c)] = static_cast<std::uint32_t>(class_size_of(c));
  for (std::size_t b = 0; b < large_runs::bins; ++b)
    t[static_cast<std::size_t>(large_base) + b] =
        static_cast<std::uint32_t>(large_runs::bin_pages(b) * page_size);
  return t;
}();

// Limits (see above). The ceiling is knobs.large_cache_bytes: the bytes a thread's large bins
// may hold all full (the sum of limit x run bytes over its bins, thread_cache::
// large_limit_bytes). Every bin in use starts at large_initial_limit runs (fewer if the ceiling
// holds fewer of each); a bin grows within what is left of the ceiling, to at most
// large_limit_max runs. Bins are seldom all full at once (each count is a random walk): they
// hold about half their limits' bytes.
inline constexpr std::uint16_t large_initial_limit = 4;
inline constexpr std::uint16_t large_limit_max = 16;
/// The limit every bin in use starts at: 0 (no large bins) if the ceiling does not hold one run
/// of each.
constexpr std::uint16_t large_start_limit(std::size_t ceiling,
                                          std::size_t bin_bytes_in_use) noexcept {
  if (bin_bytes_in_use == 0) return 0;
  return static_cast<std::uint16_t>(
      std::min<std::size_t>(large_initial_limit, ceiling / bin_bytes_in_use));
}

/// The wide row: the inline path's class for every size above the small table (small_max, or
/// the largest class if smaller) up to 256 KiB, in steps of 128 bytes (column (bytes + 127) /
/// 128): a slab class up to `largest`, then (with large bins) the large bin of the size's run
/// class, bad_class for anything the inline path does not serve (the slow path decides).
constexpr std::size_t wide_cols = large_runs::max_bytes / 128 + 1;
using wide_row = std::array<std::uint8_t, wide_cols>;
constexpr wide_row make_wide_row(std::size_t largest, bool large_bins) {
  wide_row t{};
  for (std::size_t i = 0; i < wide_cols; ++i) {
    const std::size_t size = std::max<std::size_t>(8, i * 128);
    int c = bad_class;
    if (size <= largest) {
      c = class_of(size);
    } else if (large_bins) {
      const std::size_t b = large_request_bin[page_resource::pages_for(size)];
      if (b != large_runs::bins) c = large_base + static_cast<int>(b);
    }
    t[i] = static_cast<std::uint8_t>(c);
  }
  return t;
}
/// The default resource's rows (largest class 32 KiB, with and without large bins), made at
/// compile time: a resource of that shape points at one of them instead of building its own.
inline constexpr wide_row wide_row_default = make_wide_row(std::size_t{32} << 10, true);
inline constexpr wide_row wide_row_default_no_bins = make_wide_row(std::size_t{32} << 10, false);
inline constexpr wide_row wide_row_bad = [] {
  wide_row t{};
  t.fill(static_cast<std::uint8_t>(bad_class));
  return t;
}();

/// One more (or less: n wraps) in a counter that only its owner thread writes.
inline void add_owned(std::atomic<std::size_t>& counter, std::size_t n) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

static_assert(large_runs::class_pages(8) == 8 && large_runs::class_pages(9) == 10 &&
              large_runs::class_pages(17) == 20 && large_runs::class_pages(33) == 40 &&
              large_runs::class_pages(64) == 64);
static_assert(large_runs::bin_of(2) == 0 && large_runs::bin_of(8) == 6 &&
              large_runs::bin_of(10) == 7 && large_runs::bin_of(16) == 10 &&
              large_runs::bin_of(20) == 11 && large_runs::bin_of(64) == 18 &&
              large_runs::bin_of(65) == large_runs::bins &&
              large_runs::bin_of(18) == large_runs::bins);
static_assert([] {
  for (std::size_t b = 0; b < large_runs::bins; ++b)
    if (large_runs::bin_of(large_runs::bin_pages(b)) != b) return false;
  return true;
}());
static_assert(large_request_bin[1] == large_runs::bins && large_request_bin[2] == 0 &&
              large_request_bin[17] == 11 && large_request_bin[64] == 18 &&
              large_run_bin[18] == large_runs::bins && large_run_bin[20] == 11);
static_assert(make_wide_row(32 << 10, true)[(32 << 10) / 128] == class_of(32 << 10) &&
              make_wide_row(32 << 10, true)[(32 << 10) / 128 + 1] ==
                  large_base + large_runs::bin_of(10) &&
              make_wide_row(32 << 10, false)[(32 << 10) / 128 + 1] == bad_class &&
              make_wide_row(32 << 10, true)[wide_cols - 1] == large_base + large_runs::bins - 1);

}  // namespace bsalloc::detail
