// SPDX-License-Identifier: Apache-2.0
// page_resource's introspection: stats() and check_invariants() (I1–I10, see the header).
#include "internal.hpp"

namespace bsalloc {
using namespace detail;

page_resource_stats page_resource::stats() const {
  page_resource_stats s;
  std::lock_guard lock(mutex_);
  const std::size_t cached = cached_pages();
  s.managed_bytes = managed_pages_ << page_shift;
  s.allocated_bytes = (allocated_pages_ - std::min(cached, allocated_pages_)) << page_shift;
  s.peak_allocated_bytes = peak_allocated_pages_ << page_shift;
  s.dirty_free_bytes = dirty_free_pages_ << page_shift;
  s.cached_bytes = cached << page_shift;
  s.core_cached_bytes = core_cached_bytes();
  s.run_cache = cache_counters();
  s.purged_bytes = purged_bytes_;
  s.os_mapped_bytes = os_mapped_bytes_;
  s.os_maps = os_maps_;
  s.os_unmaps = os_unmaps_;
  s.span_runs = span_runs_;
  s.regions.reserve(region_count_);
  for (std::size_t ri = 0; ri < max_regions; ++ri) {
    const region& r = regions_[ri];
    if (!r.in_use) continue;
    s.free_bytes += std::size_t{r.free_pages} << page_shift;
    for (unsigned k = 0; k <= max_order; ++k)
      for (std::uint32_t i = r.free_head[k]; i != no_page; i = r.meta[i].next) ++s.free_blocks[k];
    s.regions.push_back(
        {r.base, std::size_t{r.pages} << page_shift, r.free_pages, r.pages, r.os_backed});
  }
  s.free_purged_bytes = s.free_bytes - s.dirty_free_bytes;
  return s;
}

void page_resource::check_invariants() const {
  std::lock_guard lock(mutex_);
  // Every core lock too, for the whole walk: the cached marks of run heads change under them.
  for (std::size_t c = 0; c < core_count_; ++c) cores_[c].lock.lock();
  struct unlock_cores {
    const page_resource* r;
    ~unlock_cores() {
      for (std::size_t c = r->core_count_; c-- > 0;) r->cores_[c].lock.unlock();
    }
  } unlock{this};
  auto fail = [](std::size_t ri, std::size_t page, const char* what) {
    throw std::logic_error(fmt::format(
        "bsalloc::page_resource invariant broken (region {}, page {}): {}", ri, page, what));
  };
  std::size_t free_total = 0, allocated_total = 0, purging_total = 0, dirty_total = 0, pages = 0;
  std::size_t cached_heads = 0, regions = 0;
  for (std::size_t ri = 0; ri < max_regions; ++ri) {
    const region& r = regions_[ri];
    if (!r.in_use) continue;
    ++regions;
    pages += r.pages;
    const std::uint64_t base_pfn = pfn(r.base);
    for (std::uint32_t i = 0; i < r.pages; ++i) {  // I9
      const page_map_hit hit = page_map_find(reinterpret_cast<const void*>(page_addr(r, i)));
      if (hit.owner != this || hit.region != ri) fail(ri, i, "I9: page map entry wrong");
    }
    for (std::uintptr_t a = r.span_begin; a < r.span_end; a += page_size)  // I9: metadata
      if ((a < r.base || a >= page_addr(r, r.pages)) &&
          page_map_entry(reinterpret_cast<const void*>(a)) != page_map_metadata)
        fail(ri, (a - r.span_begin) >> page_shift, "I9: metadata page not marked in the page map");
    for (const std::uintptr_t a : {r.span_begin - page_size, r.span_end})  // I9: nothing else
      if (page_map_find(reinterpret_cast<const void*>(a)).owner == this && region_of(a) == ri)
        fail(ri, 0, "I9: a page next to the region maps to it");
    std::array<std::size_t, max_order + 1> free_heads{};
    std::size_t region_free = 0;
    std::uint32_t run_head = no_page, run_left = 0;  // the run being walked (I8)
    for (std::uint32_t i = 0; i < r.pages;) {
      const page_meta& m = r.meta[i];
      if (m.state == meta_none) fail(ri, i, "I1: page outside every block");
      const unsigned k = m.order;
      if (k > max_order || ((base_pfn + i) & ((std::uint64_t{1} << k) - 1)) != 0)
        fail(ri, i, "I2: block not aligned to its size");
      if (std::uint64_t{i} + (std::uint64_t{1} << k) > r.pages)
        fail(ri, i, "I2: block runs past its region");
      for (std::uint32_t t = 1; t < (std::uint32_t{1} << k); ++t) {
        if (r.meta[i + t].state != meta_none) fail(ri, i + t, "I1: head state inside a block");
        if (run_mark(r.meta[i + t].run) != run_none)
          fail(ri, i + t, "I11: run mark on a page that is not a run head");
      }
      if (!(m.state == meta_allocated && (m.flags & flag_run_head)) && run_mark(m.run) != run_none)
        fail(ri, i, "I11: run mark on a block that is not a run head");
      const std::size_t size = std::size_t{1} << k;
      if (m.state != meta_allocated && run_left != 0) fail(ri, i, "I8: run cut short");
      if (m.state == meta_free) {
        ++free_heads[k];
        region_free += size;
        std::size_t resident = 0;
        for (std::size_t t = 0; t < size; ++t)
          if (r.meta[i + t].flags & flag_resident) ++resident;
        if (resident && !r.os_backed) fail(ri, i, "I6: resident mark outside an OS region");
        if (resident && !(m.flags & flag_dirty)) fail(ri, i, "I7: resident pages, no dirty hint");
        dirty_total += resident;
        const std::uint64_t buddy_abs = (base_pfn + i) ^ size;
        if (k < max_order && buddy_abs >= base_pfn && buddy_abs - base_pfn + size <= r.pages) {
          const page_meta& b = r.meta[buddy_abs - base_pfn];
          if (b.state == meta_free && b.order == k) fail(ri, i, "I4: free buddies not merged");
        }
      } else if (m.state == meta_allocated) {
        allocated_total += size;
        for (std::size_t t = 0; t < size; ++t)
          if (r.meta[i + t].flags & flag_resident)
            fail(ri, i, "I6: resident mark on an allocated page (mark_run clears it)");
        if (m.flags & flag_run_head) {
          if (run_left != 0) fail(ri, i, "I8: run head inside another run");
          if (m.next == 0) fail(ri, i, "I8: run head without a page count");
          run_head = i;
          run_left = m.next;
          const std::uint8_t mark = run_mark(m.run);
          if (mark == run_cached) ++cached_heads;
          if (mark != run_cached && mark != run_live && mark != run_parked)
            fail(ri, i, "I11: allocated run head marked neither live, cached nor parked");
          // I12: a live run's tag records at most the run's bytes (tag first: its writer
          // publishes the bytes before it).
          if ((mark == run_live || mark == run_parked) && m.order != 0 &&
              std::atomic_ref(const_cast<std::uint32_t&>(r.meta[i + 1].prev))
                      .load(std::memory_order_acquire) != 0 &&
              std::atomic_ref(const_cast<std::uint32_t&>(r.meta[i + 1].next))
                      .load(std::memory_order_relaxed) > (std::uint64_t{m.next} << page_shift))
            fail(ri, i, "I12: owner tag records more bytes than its run holds");
        } else if (run_left == 0) {
          fail(ri, i, "I8: allocated block outside every run (no run head)");
        }
        if (m.prev != run_head) fail(ri, i, "I8: block does not record its run head");
        if (size > run_left) fail(ri, i, "I8: block runs past its run's page count");
        run_left -= static_cast<std::uint32_t>(size);
        if (bool(m.flags & flag_continued) != (run_left != 0))
          fail(ri, i, "I8: continued flag does not match the run");
      } else {
        purging_total += size;
      }
      i += static_cast<std::uint32_t>(size);
    }
    if (run_left != 0) fail(ri, r.pages, "I8: run runs past its region");
    for (unsigned k = 0; k <= max_order; ++k) {
      std::size_t len = 0;
      std::uint32_t prev = no_page;
      for (std::uint32_t i = r.free_head[k]; i != no_page; i = r.meta[i].next) {
        if (i >= r.pages || r.meta[i].state != meta_free || r.meta[i].order != k)
          fail(ri, i, "I3: free list holds a block that is not free of that order");
        if (r.meta[i].prev != prev) fail(ri, i, "I3: free list back link broken");
        prev = i;
        if (++len > free_heads[k]) fail(ri, i, "I3: free list longer than its free blocks");
      }
      if (len != free_heads[k]) fail(ri, 0, "I3: free block missing from its list");
      if (r.free_tail[k] != prev) fail(ri, 0, "I3: free list tail is not its last block");
      bool seen_clean = false;
      for (std::uint32_t i = r.free_head[k]; i != no_page; i = r.meta[i].next) {
        const bool hinted = r.meta[i].flags & flag_dirty;
        if (hinted && seen_clean) fail(ri, i, "I3: a dirty block behind a clean one");
        seen_clean = seen_clean || !hinted;
      }
      if (bool(r.nonempty & (1u << k)) != (len != 0)) fail(ri, 0, "I3: nonempty mask wrong");
    }
    if (region_free != r.free_pages) fail(ri, 0, "I5: region free page count wrong");
    free_total += region_free;
  }
  if (regions != region_count_) fail(any_region, 0, "I5: region count wrong");
  if (pages != managed_pages_ || allocated_total != allocated_pages_ ||
      purging_total != purging_pages_ || free_total + allocated_total + purging_total != pages)
    fail(any_region, 0, "I5: free + allocated + purging != managed");
  if (dirty_total != dirty_free_pages_) fail(any_region, 0, "I6: dirty free page count wrong");
  if (check_cache_locked() != cached_heads)
    fail(any_region, 0, "I10: cached run heads and run-cache entries differ");
}

}  // namespace bsalloc
