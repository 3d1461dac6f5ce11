// SPDX-License-Identifier: Apache-2.0
// The page_resource heap walk (through its public lookups) and the leak reports.
#include <bsalloc/heap_walk.hpp>

#include <algorithm>
#include <iterator>
#include <map>

#include <fmt/format.h>

#include "../format.hpp"
#include "budget_internal.hpp"

namespace bsalloc {

std::vector<heap_block> live_blocks(const page_resource& r) {
  std::vector<heap_block> out;
  for (const page_region_stats& reg : r.stats().regions) {
    std::uintptr_t p = reg.start;
    const std::uintptr_t end = reg.start + reg.bytes;
    while (p < end) {
      const auto b = r.find_block(reinterpret_cast<const void*>(p));
      if (!b) break;  // the region went away meanwhile
      const auto head = reinterpret_cast<std::uintptr_t>(b->head);
      if (b->state == block_state::allocated && head == p) {
        const auto run = r.find_run(b->head);
        if (run && run->start == b->head && !run->cached)
          out.push_back({run->start, run->pages * page_size, true});
      }
      // The next block: past this one (which may have changed since; blocks are aligned to
      // their size, so the end of one is never inside a block that lived throughout).
      p = std::max(p + page_size, head + (page_size << b->order));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const heap_block& a, const heap_block& b) { return std::less<>{}(a.ptr, b.ptr); });
  return out;
}

std::string leak_report(std::size_t max_blocks) {
  std::string out;
  auto it = std::back_inserter(out);
  detail::for_each_live_budget([&](const budget_resource& b, const budget_stats& s) {
    if (s.in_use == 0 && s.count == 0) return;
    fmt::format_to(it, "bsalloc: budget '{}' leaks {} in {} allocation(s)\n", s.name,
                   detail::human_bytes(s.in_use), s.count);
    std::size_t shown = 0;
    for_each_allocation(b, [&](const heap_block& blk) {  // tracking only; under its lock
      if (shown++ < max_blocks) fmt::format_to(it, "  {} bytes at {}\n", blk.bytes, blk.ptr);
    });
    if (shown > max_blocks) fmt::format_to(it, "  ... {} more\n", shown - max_blocks);
  });
  return out;
}

std::string leak_report(const slab_resource& r, std::string_view name, std::size_t max_blocks) {
  const auto all = r.live_blocks();
  if (all.empty()) return {};
  std::size_t bytes = 0;
  std::map<std::size_t, std::size_t> by_size;
  for (const heap_block& b : all) {
    bytes += b.bytes;
    ++by_size[b.bytes];
  }
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it, "bsalloc: slab_resource '{}' has {} block(s) live, {}\n", name, all.size(),
                 detail::human_bytes(bytes));
  for (const auto& [size, n] : by_size) fmt::format_to(it, "  {} x {} bytes\n", n, size);
  for (std::size_t i = 0; i < all.size() && i < max_blocks; ++i)
    fmt::format_to(it, "  {} bytes at {}{}\n", all[i].bytes, all[i].ptr,
                   all[i].large ? " (large)" : "");
  return out;
}

}  // namespace bsalloc
