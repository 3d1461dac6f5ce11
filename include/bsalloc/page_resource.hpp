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
//       resident bits.
//   I7  a free block whose dirty hint is clear has no resident page.
//
// An allocation of `count` pages that is not a power of two is a run of blocks: the greedy
// decomposition of [0, count) into aligned power-of-two blocks. Every block but the last of a
// run carries the `continued` flag, so deallocate_pages can check the count it is given.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory_resource>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <bsalloc/stats.hpp>

namespace bsalloc {

inline constexpr unsigned page_shift = 12;
inline constexpr std::size_t page_size = std::size_t{1} << page_shift;
/// Largest block: 2^max_order pages (4 GiB).
inline constexpr unsigned max_order = 20;
/// Most regions one page_resource manages at a time.
inline constexpr std::size_t max_regions = 128;
inline constexpr std::size_t any_region = std::numeric_limits<std::size_t>::max();

/// Where an allocation may come from (the userspace form of lowmem / DMA32 pages).
struct page_constraint {
  std::size_t region = any_region;  ///< only from this region (index as in stats().regions)
  std::uintptr_t below = std::numeric_limits<std::uintptr_t>::max();  ///< end address <= below
};

enum class block_state : std::uint8_t { free, allocated, purging };

/// The block that owns an address, found in O(max_order) steps (bounded, no list walks).
struct block_info {
  void* head;      ///< first byte of the block
  unsigned order;  ///< the block spans 2^order pages
  block_state state;
  bool continued;      ///< allocated and followed by another block of the same allocation
  std::size_t region;  ///< region index
};

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
};

struct page_region_stats {
  std::uintptr_t start = 0;  ///< first managed page
  std::size_t bytes = 0;     ///< managed bytes (metadata excluded)
  std::size_t free_pages = 0;
  std::size_t total_pages = 0;
  bool os_backed = false;
};

struct page_resource_stats {
  std::size_t page_size = bsalloc::page_size;
  std::size_t managed_bytes = 0;         ///< allocatable bytes of all regions (no metadata)
  std::size_t allocated_bytes = 0;       ///< pages handed out
  std::size_t peak_allocated_bytes = 0;  ///< highest allocated_bytes seen
  std::size_t free_bytes = 0;
  std::size_t dirty_free_bytes = 0;  ///< free and possibly resident (OS regions)
  std::size_t purged_bytes = 0;      ///< total ever returned to the OS by MADV_DONTNEED
  std::size_t os_mapped_bytes = 0;   ///< reserved from the OS now, metadata included
  std::size_t os_maps = 0;           ///< regions ever reserved from the OS
  std::size_t os_unmaps = 0;         ///< regions ever returned to the OS
  std::array<std::size_t, max_order + 1> free_blocks{};  ///< free blocks per order
  std::vector<page_region_stats> regions;
};

std::string to_string(const page_resource_stats& s);
std::string to_json(const page_resource_stats& s);

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
  /// carved from its start. Throws std::invalid_argument if the region overlaps a managed one
  /// or cannot hold one page with its metadata, std::length_error past max_regions.
  /// Returns the new region's index.
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

  /// The block that holds `p`, or nothing if `p` is outside every region.
  std::optional<block_info> find_block(const void* p) const;
  bool owns(const void* p) const { return find_block(p).has_value(); }

  /// Purges every free resident page of the OS regions and unmaps OS regions that are wholly
  /// free. Returns the bytes given back.
  std::size_t trim();
  /// Returns everything at once: OS regions are unmapped, caller regions become wholly free.
  /// Every pointer handed out before is invalid afterwards.
  void release();

  page_resource_stats stats() const;
  /// Verifies I1–I7; throws std::logic_error naming the broken invariant.
  void check_invariants() const;
  const page_resource_options& options() const noexcept { return options_; }

  static constexpr std::size_t pages_for(std::size_t bytes) noexcept {
    return bytes == 0 ? 1 : (bytes + page_size - 1) >> page_shift;
  }

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override;
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override;
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

 private:
  static constexpr std::uint32_t no_page = std::numeric_limits<std::uint32_t>::max();

  // 12 bytes a page, kept outside the pages handed out.
  struct page_meta {
    std::uint8_t state;  // meta_none / meta_free / meta_allocated / meta_purging
    std::uint8_t order;
    std::uint8_t flags;  // flag_dirty (free blocks), flag_continued (allocated blocks)
    std::uint8_t pad;
    std::uint32_t prev;  // free list links, page indices within the region
    std::uint32_t next;
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
    void* os_map = nullptr;  // OS regions: the page mapping and the metadata mapping
    std::size_t os_map_bytes = 0;
    void* meta_map = nullptr;
    std::size_t meta_map_bytes = 0;
  };

  struct purge_victim {
    std::size_t region;
    std::uint32_t index;
    unsigned order;
  };

  void init_region(region& r);
  std::size_t insert_region(const region& r);        // lock held
  std::size_t region_of(std::uintptr_t addr) const;  // lock held; any_region if none
  std::optional<block_info> find_block_locked(const void* p) const;
  void* try_allocate_locked(std::size_t count, unsigned order, page_constraint where);
  bool take_from_region(std::size_t ri, unsigned order, std::uintptr_t below, std::uint32_t& index,
                        bool& dirty);
  void carve_run(region& r, std::uint32_t head, std::uint32_t count, unsigned order, bool dirty);
  void free_block(region& r, std::uint32_t index, unsigned order, bool dirty);
  void push_free(region& r, std::uint32_t index, unsigned order, bool dirty);
  void remove_free(region& r, std::uint32_t index, unsigned order);
  void grow(unsigned order);
  std::size_t purge(std::size_t keep_bytes);
  void unmap_region(region& r) noexcept;
  [[noreturn]] void throw_bad_pointer(const void* p, std::size_t count, const char* why) const;

  static std::uint64_t pfn(std::uintptr_t addr) noexcept { return addr >> page_shift; }
  std::uintptr_t page_addr(const region& r, std::uint32_t index) const noexcept {
    return r.base + (std::uintptr_t{index} << page_shift);
  }

  page_resource_options options_;
  mutable std::mutex mutex_;
  // Everything below is guarded by mutex_.
  std::array<region, max_regions> regions_{};
  std::array<std::uint16_t, max_regions> by_address_{};  // in-use region indices, by base
  std::size_t region_count_ = 0;                         // entries in by_address_
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
  bool purge_running_ = false;
  std::chrono::steady_clock::time_point last_purge_{};
};

/// The process-wide page_resource (grows from the OS), never destroyed: the default upstream of
/// the rest of bsalloc.
page_resource& global_page_resource() noexcept;

}  // namespace bsalloc

template <>
struct fmt::formatter<bsalloc::page_resource_stats>
    : bsalloc::detail::stats_formatter<bsalloc::page_resource_stats> {};
