// bsalloc::page_resource — see include/bsalloc/page_resource.hpp for the glossary and invariants.
#include <bsalloc/page_resource.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

namespace bsalloc {
namespace {

constexpr std::uint8_t meta_none = 0;
constexpr std::uint8_t meta_free = 1;
constexpr std::uint8_t meta_allocated = 2;
constexpr std::uint8_t meta_purging = 3;
constexpr std::uint8_t flag_dirty = 1;      // head of a free block: may hold resident pages
constexpr std::uint8_t flag_continued = 2;  // head of an allocated block: the run goes on
constexpr std::uint8_t flag_resident = 4;   // any page of an OS region: touched since purged

constexpr std::uintptr_t align_up(std::uintptr_t v, std::uintptr_t a) {
  return (v + a - 1) & ~(a - 1);
}
constexpr std::uintptr_t align_down(std::uintptr_t v, std::uintptr_t a) {
  return v & ~(a - 1);
}

// Largest k such that a block of 2^k pages starting at relative position p (absolute pfn
// `abs`) is aligned and fits in `room` pages.
unsigned greedy_order(std::uint64_t abs, std::uint64_t room) {
  unsigned k = abs == 0 ? max_order : std::min<unsigned>(std::countr_zero(abs), max_order);
  const unsigned fit = static_cast<unsigned>(std::bit_width(room) - 1);
  return std::min(k, fit);
}

void* map_anonymous(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

}  // namespace

page_resource::page_resource() : page_resource(page_resource_options{}) {}

page_resource::page_resource(const page_resource_options& options) : options_(options) {
  if (static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) != page_size)
    throw std::runtime_error("bsalloc::page_resource: the OS page size is not 4 KiB");
}

page_resource::page_resource(std::span<std::byte> buffer)
    : page_resource(
          page_resource_options{.os_region_bytes = 0, .retain_bytes = 0, .grow_from_os = false}) {
  add_region(buffer);
}

page_resource::~page_resource() {
  for (auto& r : regions_)
    if (r.in_use && r.os_backed) unmap_region(r);
}

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
  for (const auto& o : regions_) {
    if (o.in_use && r.span_begin < o.span_end && o.span_begin < r.span_end)
      throw std::invalid_argument(fmt::format(
          "bsalloc::page_resource::add_region({}, {} bytes): overlaps the managed region "
          "[{:#x}, {:#x})",
          static_cast<const void*>(memory.data()), memory.size(), o.span_begin, o.span_end));
  }
  if (region_count_ == max_regions)
    throw std::length_error(fmt::format(
        "bsalloc::page_resource::add_region: already {} regions (max_regions)", max_regions));
  std::memset(r.meta, 0, managed * sizeof(page_meta));  // checked: inside the caller's span
  const std::size_t ri = insert_region(r);
  init_region(regions_[ri]);
  managed_pages_ += managed;
  return ri;
}

std::size_t page_resource::insert_region(const region& r) {
  std::size_t slot = 0;
  while (regions_[slot].in_use) ++slot;  // region_count_ < max_regions: a slot is free
  regions_[slot] = r;
  regions_[slot].in_use = true;
  auto* first = by_address_.begin();
  auto* last = first + region_count_;
  auto* pos = std::lower_bound(first, last, r.base, [&](std::uint16_t i, std::uintptr_t base) {
    return regions_[i].base < base;
  });
  std::copy_backward(pos, last, last + 1);
  *pos = static_cast<std::uint16_t>(slot);
  ++region_count_;
  return slot;
}

void page_resource::init_region(region& r) {
  r.free_head.fill(no_page);
  r.free_tail.fill(no_page);
  r.nonempty = 0;
  r.free_pages = 0;
  for (std::uint32_t i = 0; i < r.pages;) {
    const unsigned k = greedy_order(pfn(r.base) + i, r.pages - i);
    push_free(r, i, k, false);
    i += std::uint32_t{1} << k;
  }
}

std::size_t page_resource::region_of(std::uintptr_t addr) const {
  const auto* first = by_address_.begin();
  const auto* last = first + region_count_;
  const auto* pos = std::upper_bound(
      first, last, addr, [&](std::uintptr_t a, std::uint16_t i) { return a < regions_[i].base; });
  if (pos == first) return any_region;
  const region& r = regions_[*(pos - 1)];
  if (addr >= r.base + (std::uintptr_t{r.pages} << page_shift)) return any_region;
  return *(pos - 1);
}

void page_resource::unmap_region(region& r) noexcept {
  if (r.os_map) ::munmap(r.os_map, r.os_map_bytes);
  if (r.meta_map) ::munmap(r.meta_map, r.meta_map_bytes);
  r.os_map = r.meta_map = nullptr;
}

void page_resource::grow(unsigned order) {
  std::size_t made;
  {
    std::lock_guard lock(mutex_);
    made = os_regions_made_;
  }
  std::size_t bytes = std::max<std::size_t>(options_.os_region_bytes, page_size);
  bytes <<= std::min<std::size_t>(made / 4, 6);  // geometric growth keeps the region count low
  bytes = std::bit_ceil(std::max(bytes, page_size << order));
  const std::size_t pages = std::min<std::size_t>(bytes >> page_shift, no_page - 1);

  // Reserve twice the size and trim, so the region is aligned to its own size.
  void* raw = map_anonymous(2 * bytes);
  if (!raw) throw std::bad_alloc();
  const auto raw_addr = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t base = align_up(raw_addr, bytes);
  if (base > raw_addr) ::munmap(raw, base - raw_addr);
  if (raw_addr + 2 * bytes > base + bytes)
    ::munmap(reinterpret_cast<void*>(base + bytes), raw_addr + 2 * bytes - (base + bytes));
  const std::size_t meta_bytes = align_up(pages * sizeof(page_meta), page_size);
  void* meta = map_anonymous(meta_bytes);
  if (!meta) {
    ::munmap(reinterpret_cast<void*>(base), bytes);
    throw std::bad_alloc();
  }

  region r;
  r.base = base;
  r.pages = static_cast<std::uint32_t>(pages);
  r.meta = static_cast<page_meta*>(meta);  // fresh mapping: all zero, meta_none
  r.span_begin = base;
  r.span_end = base + bytes;
  r.os_backed = true;
  r.os_map = reinterpret_cast<void*>(base);
  r.os_map_bytes = bytes;
  r.meta_map = meta;
  r.meta_map_bytes = meta_bytes;

  std::unique_lock lock(mutex_);
  if (region_count_ == max_regions) {
    lock.unlock();
    unmap_region(r);
    throw std::bad_alloc();
  }
  const std::size_t ri = insert_region(r);
  init_region(regions_[ri]);
  managed_pages_ += pages;
  os_mapped_bytes_ += bytes + meta_bytes;
  ++os_maps_;
  ++os_regions_made_;
}

// ---------------------------------------------------------------------------------------------
// Free lists
// ---------------------------------------------------------------------------------------------

void page_resource::push_free(region& r, std::uint32_t index, unsigned order, bool dirty) {
  dirty = dirty && r.os_backed;  // only OS memory is ever purged
  page_meta& m = r.meta[index];
  const std::uint32_t head = r.free_head[order];
  const std::uint32_t tail = r.free_tail[order];
  const bool at_front = dirty || head == no_page;  // clean blocks go to the back (I3)
  m = page_meta{meta_free,
                static_cast<std::uint8_t>(order),
                static_cast<std::uint8_t>((m.flags & flag_resident) | (dirty ? flag_dirty : 0)),
                0,
                at_front ? no_page : tail,
                at_front ? head : no_page};
  if (at_front) {
    if (head != no_page)
      r.meta[head].prev = index;
    else
      r.free_tail[order] = index;
    r.free_head[order] = index;
  } else {
    r.meta[tail].next = index;
    r.free_tail[order] = index;
  }
  r.nonempty |= 1u << order;
  r.free_pages += 1u << order;
}

void page_resource::remove_free(region& r, std::uint32_t index, unsigned order) {
  page_meta& m = r.meta[index];
  if (m.prev != no_page)
    r.meta[m.prev].next = m.next;
  else
    r.free_head[order] = m.next;
  if (m.next != no_page)
    r.meta[m.next].prev = m.prev;
  else
    r.free_tail[order] = m.prev;
  if (r.free_head[order] == no_page) r.nonempty &= ~(1u << order);
  r.free_pages -= 1u << order;
  m = page_meta{meta_none, 0,       static_cast<std::uint8_t>(m.flags & flag_resident),
                0,         no_page, no_page};
}

void page_resource::free_block(region& r, std::uint32_t index, unsigned order, bool dirty) {
  const std::uint64_t base_pfn = pfn(r.base);
  while (order < max_order) {
    const std::uint64_t buddy_abs = (base_pfn + index) ^ (std::uint64_t{1} << order);
    if (buddy_abs < base_pfn) break;
    const std::uint64_t buddy = buddy_abs - base_pfn;
    if (buddy + (std::uint64_t{1} << order) > r.pages) break;
    const page_meta& bm = r.meta[buddy];
    if (bm.state != meta_free || bm.order != order) break;
    dirty = dirty || (bm.flags & flag_dirty);
    remove_free(r, static_cast<std::uint32_t>(buddy), order);
    const auto upper = std::max<std::uint32_t>(index, static_cast<std::uint32_t>(buddy));
    r.meta[upper] = page_meta{
        meta_none, 0,       static_cast<std::uint8_t>(r.meta[upper].flags & flag_resident),
        0,         no_page, no_page};
    index = std::min<std::uint32_t>(index, static_cast<std::uint32_t>(buddy));
    ++order;
  }
  push_free(r, index, order, dirty);
}

// ---------------------------------------------------------------------------------------------
// Allocation
// ---------------------------------------------------------------------------------------------

bool page_resource::take_from_region(std::size_t ri, unsigned order, std::uintptr_t below,
                                     std::uint32_t& index, bool& dirty) {
  region& r = regions_[ri];
  const std::uint32_t mask = r.nonempty & ~((1u << order) - 1);
  if (mask == 0) return false;
  unsigned j = static_cast<unsigned>(std::countr_zero(mask));
  if (r.os_backed && dirty_free_pages_ != 0) {
    // Resident pages first, across orders too: the smallest order whose front block is dirty
    // (lists keep dirty blocks in front, I3) beats a smaller clean block that would fault.
    for (std::uint32_t m = mask; m != 0; m &= m - 1) {
      const auto t = static_cast<unsigned>(std::countr_zero(m));
      if (r.meta[r.free_head[t]].flags & flag_dirty) {
        j = t;
        break;
      }
    }
  }
  std::uint32_t i = r.free_head[j];
  if (below != std::numeric_limits<std::uintptr_t>::max()) {
    // Constrained: the first block whose lowest 2^order pages end at or below `below`.
    const std::uintptr_t need = page_size << order;
    if (r.base >= below || below - r.base < need) return false;
    i = no_page;
    for (j = order; j <= max_order && i == no_page; ++j) {
      for (std::uint32_t c = r.free_head[j]; c != no_page; c = r.meta[c].next) {
        if (page_addr(r, c) + need <= below) {
          i = c;
          break;
        }
      }
    }
    if (i == no_page) return false;
    --j;
  }
  dirty = r.meta[i].flags & flag_dirty;
  remove_free(r, i, j);
  while (j > order) {  // split, keeping the lower half
    --j;
    push_free(r, i + (std::uint32_t{1} << j), j, dirty);
  }
  index = i;
  return true;
}

void page_resource::carve_run(region& r, std::uint32_t head, std::uint32_t count, unsigned order,
                              bool dirty) {
  // [0, count): allocated blocks; [count, 2^order): back to the free lists. The block at `head`
  // is aligned to 2^order, so relative alignment is absolute alignment.
  const std::uint32_t size = std::uint32_t{1} << order;
  for (std::uint32_t p = 0; p < count;) {
    const unsigned k = greedy_order(p, count - p);
    const std::uint32_t next = p + (std::uint32_t{1} << k);
    page_meta& m = r.meta[head + p];
    m = page_meta{
        meta_allocated,
        static_cast<std::uint8_t>(k),
        static_cast<std::uint8_t>((m.flags & flag_resident) | (next < count ? flag_continued : 0)),
        0,
        no_page,
        no_page};
    p = next;
  }
  if (r.os_backed) {  // resident free pages become allocated pages
    for (std::uint32_t p = 0; p < count; ++p) {
      page_meta& m = r.meta[head + p];
      if (!(m.flags & flag_resident)) continue;
      m.flags &= static_cast<std::uint8_t>(~flag_resident);  // counted again when freed
      --dirty_free_pages_;
    }
  }
  for (std::uint32_t p = count; p < size;) {
    const unsigned k = greedy_order(p, size - p);
    push_free(r, head + p, k, dirty);  // the taken block's hint: clean stays clean
    p += std::uint32_t{1} << k;
  }
  allocated_pages_ += count;
  peak_allocated_pages_ = std::max(peak_allocated_pages_, allocated_pages_);
}

void* page_resource::try_allocate_locked(std::size_t count, unsigned order, page_constraint where) {
  std::uint32_t index = 0;
  bool dirty = false;
  for (std::size_t ri = 0; ri < max_regions; ++ri) {
    if (!regions_[ri].in_use) continue;
    if (where.region != any_region && where.region != ri) continue;
    if (take_from_region(ri, order, where.below, index, dirty)) {
      region& r = regions_[ri];
      carve_run(r, index, static_cast<std::uint32_t>(count), order, dirty);
      return reinterpret_cast<void*>(page_addr(r, index));
    }
  }
  return nullptr;
}

void* page_resource::allocate_pages(std::size_t count, std::size_t alignment,
                                    page_constraint where) {
  if (!std::has_single_bit(alignment))
    throw std::invalid_argument(
        fmt::format("bsalloc::page_resource: alignment {} is not a power of two", alignment));
  if (count == 0) count = 1;
  alignment = std::max(alignment, page_size);
  if (count > (std::size_t{1} << max_order) || alignment > (page_size << max_order))
    throw std::bad_alloc();
  const unsigned order =
      std::max<unsigned>(static_cast<unsigned>(std::bit_width(count - 1)),
                         static_cast<unsigned>(std::countr_zero(alignment)) - page_shift);
  if (where.region != any_region) {
    std::lock_guard lock(mutex_);
    if (where.region >= max_regions || !regions_[where.region].in_use)
      throw std::invalid_argument(
          fmt::format("bsalloc::page_resource: no region with index {}", where.region));
  }
  const bool may_grow = options_.grow_from_os && where.region == any_region &&
                        where.below == std::numeric_limits<std::uintptr_t>::max();
  for (int attempt = 0;; ++attempt) {
    {
      std::lock_guard lock(mutex_);
      if (void* p = try_allocate_locked(count, order, where)) return p;
    }
    if (!may_grow || attempt == 3) throw std::bad_alloc();
    grow(order);  // outside the lock: mmap
  }
}

void page_resource::throw_bad_pointer(const void* p, std::size_t count, const char* why) const {
  throw std::invalid_argument(
      fmt::format("bsalloc::page_resource: deallocate_pages({}, {}): {}", p, count, why));
}

void page_resource::deallocate_pages(void* p, std::size_t count) {
  if (count == 0) count = 1;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  bool purge_now = false;
  {
    std::lock_guard lock(mutex_);
    const std::size_t ri = region_of(addr);
    if (ri == any_region)
      throw_bad_pointer(p, count, "pointer is not in any region of this resource");
    region& r = regions_[ri];
    if (addr % page_size != 0) throw_bad_pointer(p, count, "pointer is not page aligned");
    const std::size_t index = (addr - r.base) >> page_shift;
    if (count > r.pages - index) throw_bad_pointer(p, count, "page count runs past the region");
    // Check the whole run before changing anything.
    for (std::size_t q = 0; q < count;) {
      const unsigned k = greedy_order(q, count - q);
      const page_meta& m = r.meta[index + q];
      const std::size_t next = q + (std::size_t{1} << k);
      if (m.state != meta_allocated)
        throw_bad_pointer(p, count,
                          q == 0 ? "not an allocated block (double free or foreign pointer)"
                                 : "run is shorter than the page count given");
      if (m.order != k || bool(m.flags & flag_continued) != (next < count))
        throw_bad_pointer(p, count, "the page count does not match the allocation");
      q = next;
    }
    if (r.os_backed) {  // freed pages may be resident: they count until purged
      for (std::size_t q = 0; q < count; ++q)
        if (!(r.meta[index + q].flags & flag_resident)) {
          r.meta[index + q].flags |= flag_resident;
          ++dirty_free_pages_;
        }
    }
    for (std::size_t q = 0; q < count;) {
      const unsigned k = greedy_order(q, count - q);
      r.meta[index + q].state = meta_none;
      free_block(r, static_cast<std::uint32_t>(index + q), k, true);
      q += std::size_t{1} << k;
    }
    allocated_pages_ -= count;
    const std::size_t dirty = dirty_free_pages_ << page_shift;
    if (!purge_running_ && dirty > options_.retain_bytes) {
      // Rate-limited: memory freed and reused within purge_interval is not purged and faulted
      // in again; beyond 4 x retain_bytes it is purged at once, which bounds RSS.
      const auto now = std::chrono::steady_clock::now();
      purge_now = dirty > 4 * options_.retain_bytes || now - last_purge_ >= options_.purge_interval;
      if (purge_now) last_purge_ = now;
    }
  }
  if (purge_now) purge(options_.retain_bytes / 2);
}

void* page_resource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (bytes > (page_size << max_order)) throw std::bad_alloc();
  return allocate_pages(pages_for(bytes), alignment);
}

void page_resource::do_deallocate(void* p, std::size_t bytes, std::size_t) {
  if (bytes > (page_size << max_order)) throw_bad_pointer(p, bytes, "byte count is impossible");
  deallocate_pages(p, pages_for(bytes));
}

// ---------------------------------------------------------------------------------------------
// Lookup
// ---------------------------------------------------------------------------------------------

std::optional<block_info> page_resource::find_block(const void* p) const {
  std::lock_guard lock(mutex_);
  return find_block_locked(p);
}

std::optional<block_info> page_resource::find_block_locked(const void* p) const {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const std::size_t ri = region_of(addr);
  if (ri == any_region) return std::nullopt;
  const region& r = regions_[ri];
  const std::uint64_t base_pfn = pfn(r.base);
  const std::uint64_t abs = pfn(addr);
  // The owning block's head is abs rounded down to 2^k for its order k; heads of smaller
  // candidates lie inside that block and carry no head state (I1), so the first head wins.
  for (unsigned k = 0; k <= max_order; ++k) {
    const std::uint64_t head_abs = abs & ~((std::uint64_t{1} << k) - 1);
    if (head_abs < base_pfn) break;
    const page_meta& m = r.meta[head_abs - base_pfn];
    if (m.state == meta_none) continue;
    const auto state = m.state == meta_free      ? block_state::free
                       : m.state == meta_purging ? block_state::purging
                                                 : block_state::allocated;
    return block_info{reinterpret_cast<void*>(head_abs << page_shift), m.order, state,
                      bool(m.flags & flag_continued), ri};
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Giving memory back
// ---------------------------------------------------------------------------------------------

std::size_t page_resource::purge(std::size_t keep_bytes) {
  std::size_t total = 0;
  for (bool more = true; more;) {
    std::array<purge_victim, 64> victims;
    std::array<std::pair<std::uint32_t, std::uint32_t>, 64> spans;  // resident pages [lo, hi)
    std::size_t n = 0;
    {
      std::lock_guard lock(mutex_);
      if (purge_running_) return total;
      for (int order = max_order; order >= 0 && n < victims.size(); --order) {
        for (std::size_t ri = 0; ri < max_regions && n < victims.size(); ++ri) {
          region& r = regions_[ri];
          if (!r.in_use || !r.os_backed) continue;
          // Oldest first: walk from the back, past the clean blocks, to the dirty blocks freed
          // longest ago; the front holds the ones freed last, likely to be reused soon.
          for (std::uint32_t i = r.free_tail[order]; i != no_page && n < victims.size();) {
            const std::uint32_t next = r.meta[i].prev;
            if ((dirty_free_pages_ << page_shift) <= keep_bytes) break;
            if (r.meta[i].flags & flag_dirty) {
              // Find and clear the resident pages; the madvise covers their span only.
              const std::uint32_t size = std::uint32_t{1} << order;
              std::uint32_t lo = size, hi = 0;
              for (std::uint32_t q = 0; q < size; ++q) {
                page_meta& pm = r.meta[i + q];
                if (!(pm.flags & flag_resident)) continue;
                pm.flags &= static_cast<std::uint8_t>(~flag_resident);
                --dirty_free_pages_;
                lo = std::min(lo, q);
                hi = q + 1;
              }
              if (hi <= lo) {  // nothing resident after all: clean, so it moves to the back
                remove_free(r, i, static_cast<unsigned>(order));
                push_free(r, i, static_cast<unsigned>(order), false);
              } else {
                remove_free(r, i, static_cast<unsigned>(order));
                r.meta[i] = page_meta{meta_purging, static_cast<std::uint8_t>(order), 0, 0, no_page,
                                      no_page};
                purging_pages_ += size;
                spans[n] = {lo, hi};
                victims[n++] = {ri, i, static_cast<unsigned>(order)};
              }
            }
            i = next;
          }
        }
      }
      if (n == 0) return total;
      purge_running_ = true;
      more = n == victims.size();
    }
    std::size_t bytes = 0;
    for (std::size_t v = 0; v < n; ++v) {
      const region& r = regions_[victims[v].region];  // regions are not removed during a purge
      const std::size_t len = std::size_t{spans[v].second - spans[v].first} << page_shift;
      ::madvise(reinterpret_cast<void*>(page_addr(r, victims[v].index + spans[v].first)), len,
                MADV_DONTNEED);
      bytes += len;
    }
    std::lock_guard lock(mutex_);
    for (std::size_t v = 0; v < n; ++v) {
      region& r = regions_[victims[v].region];
      r.meta[victims[v].index].state = meta_none;
      purging_pages_ -= std::size_t{1} << victims[v].order;
      free_block(r, victims[v].index, victims[v].order, false);
    }
    purged_bytes_ += bytes;
    total += bytes;
    purge_running_ = false;
  }
  return total;
}

std::size_t page_resource::trim() {
  const std::size_t purged = purge(0);
  std::array<region, max_regions> doomed;
  std::size_t n = 0;
  {
    std::lock_guard lock(mutex_);
    if (purge_running_) return purged;  // another thread purges: leave the regions mapped
    for (std::size_t ri = 0; ri < max_regions; ++ri) {
      region& r = regions_[ri];
      if (!r.in_use || !r.os_backed || r.free_pages != r.pages) continue;
      for (std::uint32_t q = 0; q < r.pages; ++q)
        if (r.meta[q].flags & flag_resident) --dirty_free_pages_;
      managed_pages_ -= r.pages;
      os_mapped_bytes_ -= r.os_map_bytes + r.meta_map_bytes;
      ++os_unmaps_;
      std::remove(by_address_.begin(), by_address_.begin() + region_count_,
                  static_cast<std::uint16_t>(ri));
      --region_count_;
      doomed[n++] = r;
      r = region{};
    }
  }
  for (std::size_t i = 0; i < n; ++i) unmap_region(doomed[i]);
  return purged;
}

void page_resource::release() {
  std::array<region, max_regions> doomed;
  std::size_t n = 0;
  {
    std::lock_guard lock(mutex_);
    region_count_ = 0;
    managed_pages_ = 0;
    for (std::size_t ri = 0; ri < max_regions; ++ri) {
      region& r = regions_[ri];
      if (!r.in_use) continue;
      if (r.os_backed) {
        os_mapped_bytes_ -= r.os_map_bytes + r.meta_map_bytes;
        ++os_unmaps_;
        doomed[n++] = r;
        r = region{};
        continue;
      }
      std::memset(r.meta, 0, std::size_t{r.pages} * sizeof(page_meta));
      init_region(r);
      managed_pages_ += r.pages;
      by_address_[region_count_++] = static_cast<std::uint16_t>(ri);
    }
    std::sort(
        by_address_.begin(), by_address_.begin() + region_count_,
        [&](std::uint16_t a, std::uint16_t b) { return regions_[a].base < regions_[b].base; });
    allocated_pages_ = 0;
    dirty_free_pages_ = 0;
    purging_pages_ = 0;
  }
  for (std::size_t i = 0; i < n; ++i) unmap_region(doomed[i]);
}

// ---------------------------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------------------------

page_resource_stats page_resource::stats() const {
  page_resource_stats s;
  std::lock_guard lock(mutex_);
  s.managed_bytes = managed_pages_ << page_shift;
  s.allocated_bytes = allocated_pages_ << page_shift;
  s.peak_allocated_bytes = peak_allocated_pages_ << page_shift;
  s.dirty_free_bytes = dirty_free_pages_ << page_shift;
  s.purged_bytes = purged_bytes_;
  s.os_mapped_bytes = os_mapped_bytes_;
  s.os_maps = os_maps_;
  s.os_unmaps = os_unmaps_;
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
  return s;
}

void page_resource::check_invariants() const {
  std::lock_guard lock(mutex_);
  auto fail = [](std::size_t ri, std::size_t page, const char* what) {
    throw std::logic_error(fmt::format(
        "bsalloc::page_resource invariant broken (region {}, page {}): {}", ri, page, what));
  };
  std::size_t free_total = 0, allocated_total = 0, purging_total = 0, dirty_total = 0, pages = 0;
  for (std::size_t ri = 0; ri < max_regions; ++ri) {
    const region& r = regions_[ri];
    if (!r.in_use) continue;
    pages += r.pages;
    const std::uint64_t base_pfn = pfn(r.base);
    std::array<std::size_t, max_order + 1> free_heads{};
    std::size_t region_free = 0;
    for (std::uint32_t i = 0; i < r.pages;) {
      const page_meta& m = r.meta[i];
      if (m.state == meta_none) fail(ri, i, "I1: page outside every block");
      const unsigned k = m.order;
      if (k > max_order || ((base_pfn + i) & ((std::uint64_t{1} << k) - 1)) != 0)
        fail(ri, i, "I2: block not aligned to its size");
      if (std::uint64_t{i} + (std::uint64_t{1} << k) > r.pages)
        fail(ri, i, "I2: block runs past its region");
      for (std::uint32_t t = 1; t < (std::uint32_t{1} << k); ++t)
        if (r.meta[i + t].state != meta_none) fail(ri, i + t, "I1: head state inside a block");
      const std::size_t size = std::size_t{1} << k;
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
      } else {
        purging_total += size;
      }
      i += static_cast<std::uint32_t>(size);
    }
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
  if (pages != managed_pages_ || allocated_total != allocated_pages_ ||
      purging_total != purging_pages_ || free_total + allocated_total + purging_total != pages)
    fail(any_region, 0, "I5: free + allocated + purging != managed");
  if (dirty_total != dirty_free_pages_) fail(any_region, 0, "I6: dirty free page count wrong");
}

page_resource& global_page_resource() noexcept {
  alignas(page_resource) static std::byte storage[sizeof(page_resource)];
  static page_resource* const instance = ::new (storage) page_resource();
  return *instance;
}

}  // namespace bsalloc
