// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::page_resource's constants, options and statistics (included by page_resource.hpp,
// which holds the glossary and the invariants): what a caller configures and what stats()
// reports, apart from the resource itself.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <bsalloc/stats.hpp>

namespace bsalloc {

inline constexpr unsigned page_shift = 12;
inline constexpr std::size_t page_size = std::size_t{1} << page_shift;
/// Largest block: 2^max_order pages (4 GiB).
inline constexpr unsigned max_order = 20;
/// Runs of at most this many pages go to the run cache (256 KiB).
inline constexpr std::size_t max_cached_run_pages = 64;
/// The run cache's budget per core in global_page_resource() (8 MiB). Churn of blocks of
/// 4 KiB - 256 KiB with random sizes keeps every bin near its random-walk mean: the budget,
/// not the bins' capacities, decides how often a run misses the cache (about 20 % of
/// allocations and of frees at 4 MiB, 10 % at 8 MiB, for the large_touch64 benchmark).
inline constexpr std::size_t global_cache_bytes_per_core = std::size_t{8} << 20;
/// Most regions one page_resource manages at a time.
inline constexpr std::size_t max_regions = 128;
inline constexpr std::size_t any_region = std::numeric_limits<std::size_t>::max();

struct page_resource_options {
  /// Size of the first region reserved from the OS; later ones grow geometrically.
  std::size_t os_region_bytes = std::size_t{64} << 20;
  /// Free memory kept resident; beyond it free blocks are purged with MADV_DONTNEED (down to
  /// half of it), at most once per purge_interval — or at once beyond 4 x retain_bytes.
  std::size_t retain_bytes = std::size_t{16} << 20;
  /// Shortest time between two purges below 4 x retain_bytes. Memory freed and reused within it
  /// is not purged and faulted in again; zero purges whenever retain_bytes is exceeded.
  std::chrono::milliseconds purge_interval{1000};
  /// Grow from the OS when no region can serve a request.
  bool grow_from_os = true;
  /// Bytes of freed runs (of up to max_cached_run_pages pages) each core may keep for reuse
  /// without the buddy lock; 0 turns the run cache off. global_page_resource() uses
  /// global_cache_bytes_per_core.
  std::size_t cache_bytes_per_core = 0;
  /// madvise(MADV_HUGEPAGE) on OS regions (2 MiB aligned); purging then skips free spans of
  /// less than a huge page inside a huge page that is partly in use.
  bool huge_pages = false;
  /// A background thread that runs the purge policy every purge_interval, so that an idle
  /// process gives freed memory back within about 2 x purge_interval. Stopped by the destructor.
  bool background_purge = false;
};

struct page_region_stats {
  std::uintptr_t start = 0;  ///< first managed page
  std::size_t bytes = 0;     ///< managed bytes (metadata excluded)
  std::size_t free_pages = 0;
  std::size_t total_pages = 0;
  bool os_backed = false;
};

/// The run cache's misses since construction, summed over the cores (each counted under its
/// core's lock; a snapshot read without the locks). Only the misses are counted, so that a hit
/// costs nothing more: the hits are the caller's allocations of cacheable runs minus these.
struct page_run_cache_counters {
  std::uint64_t misses = 0;     ///< allocations that found their bin empty (to the buddy lock)
  std::uint64_t overflows = 0;  ///< frees that found the bin full or the core's budget spent
};

struct page_resource_stats {
  std::size_t page_size = bsalloc::page_size;
  std::size_t managed_bytes = 0;         ///< allocatable bytes of all regions (no metadata)
  std::size_t allocated_bytes = 0;       ///< pages handed out (run cache excluded)
  std::size_t peak_allocated_bytes = 0;  ///< highest allocated_bytes seen
  std::size_t free_bytes = 0;
  std::size_t dirty_free_bytes = 0;   ///< free and possibly resident (OS regions)
  std::size_t free_purged_bytes = 0;  ///< free and given back to the OS (or a caller region's)
  std::size_t cached_bytes = 0;       ///< in the run cache: freed, resident, not yet reused
  std::vector<std::size_t> core_cached_bytes;  ///< cached_bytes per core cache
  page_run_cache_counters run_cache;           ///< run cache misses and overflows
  std::size_t purged_bytes = 0;                ///< total ever returned to the OS by MADV_DONTNEED
  std::size_t os_mapped_bytes = 0;             ///< reserved from the OS now, metadata included
  std::size_t os_maps = 0;                     ///< regions ever reserved from the OS
  std::size_t os_unmaps = 0;                   ///< regions ever returned to the OS
  /// Runs above 1 MiB placed at any page, over the resident pages of free blocks, rather than at
  /// the start of a block of their buddy order (since construction).
  std::size_t span_runs = 0;
  std::array<std::size_t, max_order + 1> free_blocks{};  ///< free blocks per order
  std::vector<page_region_stats> regions;
};

std::string to_string(const page_resource_stats& s);
std::string to_json(const page_resource_stats& s);

}  // namespace bsalloc

template <>
struct fmt::formatter<bsalloc::page_resource_stats>
    : bsalloc::detail::stats_formatter<bsalloc::page_resource_stats> {};
