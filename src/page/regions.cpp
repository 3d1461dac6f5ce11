// SPDX-License-Identifier: Apache-2.0
// Regions: caller memory (add_region) and OS regions (grow), their insertion into the page map
// and removal.
#include <cstring>
#include <new>
#include <stdexcept>

#include "internal.hpp"
#include "memcheck.hpp"

namespace bsalloc {
using namespace detail;

// ---------------------------------------------------------------------------------------------
// Regions
// ---------------------------------------------------------------------------------------------

std::size_t page_resource::add_region(std::span<std::byte> memory) {
  const auto begin = reinterpret_cast<std::uintptr_t>(memory.data());
  const auto end = begin + memory.size();
  if (memory.data() == nullptr || end < begin)
    throw std::invalid_argument(
        fmt::format("bsalloc::page_resource::add_region({}, {} bytes): not a valid memory range",
                    static_cast<const void*>(memory.data()), memory.size()));
  const std::uintptr_t lo = align_up(begin, page_size);
  const std::uintptr_t hi = align_down(end, page_size);
  const std::size_t total = hi > lo ? (hi - lo) >> page_shift : 0;
  // m managed pages need ceil(12 m / page) pages of metadata in front of them.
  std::size_t managed = total * page_size / (page_size + sizeof(page_meta));
  auto meta_pages = [](std::size_t m) {
    return (m * sizeof(page_meta) + page_size - 1) / page_size;
  };
  while (managed > 0 && managed + meta_pages(managed) > total) --managed;
  managed = std::min<std::size_t>(managed, no_page - 1);
  if (managed == 0)
    throw std::invalid_argument(fmt::format(
        "bsalloc::page_resource::add_region({}, {} bytes): too small to hold one page and its "
        "metadata (needs at least {} bytes of whole pages)",
        static_cast<const void*>(memory.data()), memory.size(), 2 * page_size));

  region r;
  r.meta = reinterpret_cast<page_meta*>(lo);
  r.base = lo + (meta_pages(managed) << page_shift);
  r.pages = static_cast<std::uint32_t>(managed);
  r.span_begin = lo;
  r.span_end = r.base + (managed << page_shift);

  std::lock_guard lock(mutex_);
  if (region_count_ == max_regions)
    throw std::length_error(fmt::format(
        "bsalloc::page_resource::add_region: already {} regions (max_regions)", max_regions));
  // insert_region refuses, with nothing written, any overlap with memory that a page_resource
  // (this one included) manages: pages or metadata, as the process page map records them.
  return insert_region(r);
}

std::size_t page_resource::insert_region(const region& r) {
  std::size_t slot = 0;
  while (regions_[slot].in_use) ++slot;  // region_count_ < max_regions: a slot is free
  // May throw std::bad_alloc: nothing changed yet.
  const page_map_conflict c = page_map_claim(r.span_begin, r.span_end, r.base, r.pages, this, slot);
  if (c.page != 0)
    throw std::invalid_argument(
        fmt::format("bsalloc::page_resource::add_region: [{:#x}, {:#x}) overlaps memory that a "
                    "page_resource already manages (page {:#x} is {})",
                    r.span_begin, r.span_end, c.page,
                    c.metadata ? "page metadata of a region" : "a managed page of a region"));
  // The span is ours now: a caller region's metadata starts zeroed (an OS region's is fresh).
  if (!r.os_backed) std::memset(r.meta, 0, std::size_t{r.pages} * sizeof(page_meta));
  regions_[slot] = r;
  regions_[slot].in_use = true;
  ++region_count_;
  init_region(regions_[slot]);
  memcheck_pages_free(r.base, r.pages);
  managed_pages_ += r.pages;
  return slot;
}

void page_resource::remove_region(std::size_t ri, bool clear_map) noexcept {
  region& r = regions_[ri];
  memcheck_region_gone(this, r, false);
  if (clear_map) page_map_clear(r.span_begin, r.span_end);
  managed_pages_ -= r.pages;
  --region_count_;
  r = region{};
}

std::size_t page_resource::region_of(std::uintptr_t addr) const noexcept {
  const page_map_hit hit = page_map_find(reinterpret_cast<const void*>(addr));
  return hit.owner == this ? hit.region : any_region;
}

bool page_resource::unmap_region(region& r) noexcept {
  if (!r.os_map) return true;
  if (!os_unmap(r.os_map, r.os_map_bytes)) return false;
  r.os_map = nullptr;
  return true;
}

void* page_resource::grow(std::size_t count, unsigned order) {
  std::size_t made;
  {
    std::lock_guard lock(mutex_);
    made = os_regions_made_;
  }
  std::size_t bytes = std::max<std::size_t>(options_.os_region_bytes, page_size);
  bytes <<= std::min<std::size_t>(made / 4, 6);  // geometric growth keeps the region count low
  bytes = std::bit_ceil(std::max(bytes, page_size << order));
  const std::size_t pages = std::min<std::size_t>(bytes >> page_shift, no_page - 1);
  // One mapping: the pages, aligned to their own size (2 MiB at least: huge pages), then the
  // metadata right behind them.
  const std::size_t meta_bytes = align_up(pages * sizeof(page_meta), page_size);
  const std::size_t align = std::max<std::size_t>(bytes, std::size_t{2} << 20);
  void* raw = os_map_aligned(bytes + meta_bytes, align);
  if (!raw) throw std::bad_alloc();
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  if (options_.huge_pages) os_hugepage(raw, bytes);

  region r;
  r.base = base;
  r.pages = static_cast<std::uint32_t>(pages);
  r.meta = reinterpret_cast<page_meta*>(base + bytes);  // fresh mapping: all zero, meta_none
  r.span_begin = base;
  r.span_end = base + bytes + meta_bytes;
  r.os_backed = true;
  r.os_map = raw;
  r.os_map_bytes = bytes + meta_bytes;

  std::unique_lock lock(mutex_);
  if (region_count_ == max_regions) {
    lock.unlock();
    unmap_region(r);
    throw std::bad_alloc();
  }
  std::size_t ri;
  try {
    ri = insert_region(r);
  } catch (const std::invalid_argument&) {
    // Only if a caller unmapped memory it had given to a live resource, which the OS then
    // handed to us: that memory is still recorded as managed.
    lock.unlock();
    unmap_region(r);
    throw std::bad_alloc();
  } catch (...) {
    lock.unlock();
    unmap_region(r);
    throw;
  }
  os_mapped_bytes_ += r.os_map_bytes;
  ++os_maps_;
  ++os_regions_made_;
  void* p = try_allocate_locked(count, order, page_constraint{.region = ri});
  assert(p != nullptr);  // the region is wholly free and at least 2^order pages
  return p;
}

}  // namespace bsalloc
