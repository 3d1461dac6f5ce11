// SPDX-License-Identifier: Apache-2.0
// The process page map: page frame number -> (page_resource, region), for every page that any
// live page_resource manages. Two levels: a root of 2^17 leaf pointers (1 MiB, zero-initialised
// static storage: the kernel commits it page by page as it is written), and leaves of 2^18
// entries (1 GiB of address space, 2 MiB each) mapped on first use with MAP_NORESERVE, so only
// the parts of a leaf that cover managed pages are ever committed. Leaves are never freed.
//
// Invariants
//   M1  entry(pfn) != 0  <=>  pfn is a managed page of region e.region of page_resource e.owner.
//   M2  an entry is written only under its owner's mutex, when a region is added (before any of
//       its pages is handed out) or removed (after all of them came back); readers need no lock.
#include <bsalloc/page_map.hpp>

#include <atomic>
#include <mutex>
#include <new>

#include "internal.hpp"

namespace bsalloc::detail {

std::atomic<std::uint64_t*> page_map_root[page_map_root_entries];  // zero, committed lazily

namespace {

constexpr unsigned address_bits = page_map_address_bits;
constexpr unsigned leaf_bits = page_map_leaf_bits;
constexpr std::size_t leaf_entries = std::size_t{1} << leaf_bits;
auto& root = page_map_root;
std::mutex leaf_mutex;  // serialises leaf creation only

std::uint64_t* leaf_for(std::uint64_t pfn, bool create) {
  auto& slot = root[pfn >> leaf_bits];
  std::uint64_t* leaf = slot.load(std::memory_order_acquire);
  if (leaf || !create) return leaf;
  std::lock_guard lock(leaf_mutex);
  leaf = slot.load(std::memory_order_acquire);
  if (!leaf) {
    leaf = static_cast<std::uint64_t*>(os_map(leaf_entries * sizeof(std::uint64_t)));
    if (!leaf) throw std::bad_alloc();
    slot.store(leaf, std::memory_order_release);
  }
  return leaf;
}

void store(std::uint64_t pfn, std::uint64_t value) noexcept {
  std::uint64_t* leaf = root[pfn >> leaf_bits].load(std::memory_order_acquire);
  std::atomic_ref(leaf[pfn & (leaf_entries - 1)]).store(value, std::memory_order_release);
}

}  // namespace

void page_map_set(std::uintptr_t first, std::size_t pages, const page_resource* owner,
                  std::size_t region) {
  const std::uint64_t lo = first >> page_shift, hi = lo + pages;
  if (hi > (std::uint64_t{1} << (address_bits - page_shift))) throw std::bad_alloc();
  // Create every leaf first, so that a failure leaves nothing recorded.
  for (std::uint64_t p = lo; p < hi; p = ((p >> leaf_bits) + 1) << leaf_bits) leaf_for(p, true);
  const std::uint64_t value = (reinterpret_cast<std::uint64_t>(owner) << 8) | (region + 1);
  for (std::uint64_t p = lo; p < hi; ++p) store(p, value);
}

void page_map_clear(std::uintptr_t first, std::size_t pages) noexcept {
  const std::uint64_t lo = first >> page_shift;
  for (std::uint64_t p = lo; p < lo + pages; ++p) store(p, 0);
}

}  // namespace bsalloc::detail

namespace bsalloc {

page_resource* page_map_lookup(const void* p) noexcept {
  return detail::page_map_find(p).owner;
}

}  // namespace bsalloc
