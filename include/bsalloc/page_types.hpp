// SPDX-License-Identifier: Apache-2.0
#pragma once
// page_resource's value types (page_resource.hpp): where an allocation may come from, and what
// find_block / find_run report; and the page layer's fault-injection hook for tests.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>

#include <bsalloc/page_resource_stats.hpp>  // any_region

namespace bsalloc {

namespace detail {
/// Test hook (fault injection): a countdown per OS call of the page layer; N > 0 makes the Nth
/// next call of that kind fail (once), 0 never. Tests set it; nothing else should.
struct os_fault_injection_t {
  std::atomic<long> mmap{0};
  std::atomic<long> madvise{0};
  std::atomic<long> munmap{0};
};
extern os_fault_injection_t os_fault_injection;
}  // namespace detail

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
  bool continued;       ///< allocated and followed by another block of the same allocation
  std::size_t region;   ///< region index
  bool cached = false;  ///< allocated, but sitting in the run cache (free for its user)
};

/// A live allocation (a run of pages) that holds an address.
struct run_info {
  void* start;          ///< what allocate_pages returned
  std::size_t pages;    ///< the count it was allocated with (0 rounded up to 1)
  std::size_t region;   ///< region index
  bool cached;          ///< in the run cache: given back by its user, not yet reused
  bool parked = false;  ///< parked by a layer above (park_tagged): not its user's any more
};

}  // namespace bsalloc
