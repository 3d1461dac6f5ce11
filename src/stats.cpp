// SPDX-License-Identifier: Apache-2.0
// Text and JSON forms of bsalloc's stats structs (printed through fmt, see stats.hpp).
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include "format.hpp"

#include <iterator>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join: in <fmt/format.h> up to fmt 10, in <fmt/ranges.h> from 11

namespace bsalloc {

std::string detail::human_bytes(std::size_t bytes) {
  static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

namespace {

using detail::human_bytes;

}  // namespace

std::string to_string(const page_resource_stats& s) {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it, "page_resource: {} managed, {} allocated (peak {}), {} free\n",
                 human_bytes(s.managed_bytes), human_bytes(s.allocated_bytes),
                 human_bytes(s.peak_allocated_bytes), human_bytes(s.free_bytes));
  fmt::format_to(
      it,
      "  os: {} mapped, {} maps, {} unmaps; {} purged in all; {} big runs over resident pages\n",
      human_bytes(s.os_mapped_bytes), s.os_maps, s.os_unmaps, human_bytes(s.purged_bytes),
      s.span_runs);
  fmt::format_to(it, "  free: {} resident, {} purged; run cache: {} resident",
                 human_bytes(s.dirty_free_bytes), human_bytes(s.free_purged_bytes),
                 human_bytes(s.cached_bytes));
  if (!s.core_cached_bytes.empty()) {
    fmt::format_to(it, " (per core:");
    for (const std::size_t b : s.core_cached_bytes) fmt::format_to(it, " {}", human_bytes(b));
    fmt::format_to(it, ")");
  }
  if (const auto& c = s.run_cache; c.misses + c.overflows != 0)
    fmt::format_to(it, "; {} misses, {} overflowed", c.misses, c.overflows);
  fmt::format_to(it, "\n");
  fmt::format_to(it, "  free blocks by order:");
  for (std::size_t k = 0; k < s.free_blocks.size(); ++k)
    if (s.free_blocks[k]) fmt::format_to(it, " {}:{}", k, s.free_blocks[k]);
  fmt::format_to(it, "\n  {:>3} {:>18} {:>12} {:>10} {:>10} {}\n", "#", "start", "size", "free pg",
                 "total pg", "source");
  for (std::size_t i = 0; i < s.regions.size(); ++i) {
    const auto& r = s.regions[i];
    fmt::format_to(it, "  {:>3} {:>#18x} {:>12} {:>10} {:>10} {}\n", i, r.start,
                   human_bytes(r.bytes), r.free_pages, r.total_pages,
                   r.os_backed ? "os" : "caller");
  }
  return out;
}

std::string to_json(const page_resource_stats& s) {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it,
                 "{{\"page_size\":{},\"managed_bytes\":{},\"allocated_bytes\":{},"
                 "\"peak_allocated_bytes\":{},\"free_bytes\":{},\"dirty_free_bytes\":{},"
                 "\"free_purged_bytes\":{},\"cached_bytes\":{},\"core_cached_bytes\":[{}],"
                 "\"purged_bytes\":{},\"os_mapped_bytes\":{},\"os_maps\":{},\"os_unmaps\":{},"
                 "\"span_runs\":{},\"free_blocks\":[{}],\"regions\":[",
                 s.page_size, s.managed_bytes, s.allocated_bytes, s.peak_allocated_bytes,
                 s.free_bytes, s.dirty_free_bytes, s.free_purged_bytes, s.cached_bytes,
                 fmt::join(s.core_cached_bytes, ","), s.purged_bytes, s.os_mapped_bytes, s.os_maps,
                 s.os_unmaps, s.span_runs, fmt::join(s.free_blocks, ","));
  for (std::size_t i = 0; i < s.regions.size(); ++i) {
    const auto& r = s.regions[i];
    fmt::format_to(it,
                   "{}{{\"start\":{},\"bytes\":{},\"free_pages\":{},\"total_pages\":{},"
                   "\"source\":\"{}\"}}",
                   i ? "," : "", r.start, r.bytes, r.free_pages, r.total_pages,
                   r.os_backed ? "os" : "caller");
  }
  out += "]}";
  return out;
}

std::string to_string(const slab_resource_stats& s) {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it,
                 "slab_resource: {} objects in use ({}), {} reserved from upstream; "
                 "{} large ({}); {} thread caches holding {} objects and {} large runs ({})\n",
                 s.objects_in_use, human_bytes(s.bytes_in_use), human_bytes(s.bytes_reserved),
                 s.large_objects, human_bytes(s.large_bytes), s.thread_caches, s.cached_objects,
                 s.large_cached_runs, human_bytes(s.large_cached_bytes));
  fmt::format_to(it,
                 "  {} core caches; {} thread caches created; bins grown by {}, shrunk {} times\n",
                 s.core_caches, s.thread_caches_created, human_bytes(s.thread_cache_grown_bytes),
                 s.bin_shrinks);
  fmt::format_to(it, "  {:>8} {:>9} {:>6} {:>10} {:>11} {:>10}\n", "class", "slab", "slabs",
                 "in use", "bytes", "peak");
  for (const auto& c : s.classes)
    fmt::format_to(it, "  {:>8} {:>9} {:>6} {:>10} {:>11} {:>10}\n", c.object_size,
                   human_bytes(c.slab_bytes), c.slabs, c.objects_in_use,
                   human_bytes(c.bytes_in_use), c.peak_objects);
  fmt::format_to(it, "  {:>4} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>8} {:>8}\n",
                 "core", "allocs", "frees", "remote out", "remote in", "handed on", "kept",
                 "overflow", "refills", "returns");
  for (std::size_t i = 0; i < s.cores.size(); ++i) {
    const auto& c = s.cores[i];
    fmt::format_to(it, "  {:>4} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>8} {:>8}\n", i,
                   c.allocations, c.deallocations, c.remote_frees_sent, c.remote_frees_received,
                   c.remote_handed_on, c.remote_kept, c.remote_overflows, c.slab_refills,
                   c.slab_returns);
  }
  return out;
}

std::string to_json(const slab_resource_stats& s) {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it,
                 "{{\"objects_in_use\":{},\"bytes_in_use\":{},\"bytes_reserved\":{},"
                 "\"large_objects\":{},\"large_bytes\":{},\"large_cached_runs\":{},"
                 "\"large_cached_bytes\":{},\"thread_caches\":{},"
                 "\"thread_caches_created\":{},\"core_caches\":{},"
                 "\"thread_cache_grown_bytes\":{},\"bin_shrinks\":{},"
                 "\"cached_objects\":{},\"classes\":[",
                 s.objects_in_use, s.bytes_in_use, s.bytes_reserved, s.large_objects, s.large_bytes,
                 s.large_cached_runs, s.large_cached_bytes, s.thread_caches,
                 s.thread_caches_created, s.core_caches, s.thread_cache_grown_bytes, s.bin_shrinks,
                 s.cached_objects);
  for (std::size_t i = 0; i < s.classes.size(); ++i) {
    const auto& c = s.classes[i];
    fmt::format_to(it,
                   "{}{{\"object_size\":{},\"slab_bytes\":{},\"slabs\":{},"
                   "\"objects_in_use\":{},\"bytes_in_use\":{},\"peak_objects\":{}}}",
                   i ? "," : "", c.object_size, c.slab_bytes, c.slabs, c.objects_in_use,
                   c.bytes_in_use, c.peak_objects);
  }
  out += "],\"cores\":[";
  for (std::size_t i = 0; i < s.cores.size(); ++i) {
    const auto& c = s.cores[i];
    fmt::format_to(it,
                   "{}{{\"allocations\":{},\"deallocations\":{},\"remote_frees_sent\":{},"
                   "\"remote_frees_received\":{},\"remote_handed_on\":{},\"remote_kept\":{},"
                   "\"remote_overflows\":{},\"slab_refills\":{},\"slab_returns\":{}}}",
                   i ? "," : "", c.allocations, c.deallocations, c.remote_frees_sent,
                   c.remote_frees_received, c.remote_handed_on, c.remote_kept, c.remote_overflows,
                   c.slab_refills, c.slab_returns);
  }
  out += "]}";
  return out;
}

}  // namespace bsalloc
