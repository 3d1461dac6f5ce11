// SPDX-License-Identifier: Apache-2.0
// The process page map: page frame number -> (page_resource, region), for every page that any
// live page_resource manages. Two levels: a root of 2^17 leaf pointers (1 MiB, zero-initialised
// static storage: the kernel commits it page by page as it is written), and leaves of 2^18
// entries (1 GiB of address space, 2 MiB each) mapped on first use with MAP_NORESERVE, so only
// the parts of a leaf that cover managed pages are ever committed. Leaves are never freed.
//
// Invariants
//   M1  entry(pfn) == (owner, region)  <=>  pfn is a managed page of that region of that owner;
//       entry(pfn) == page_map_metadata  <=>  pfn holds metadata of a live region (its span
//       minus its managed pages); entry(pfn) == 0 otherwise. So the spans of all live regions
//       of all page_resources are disjoint: page_map_claim refuses any overlap.
//   M2  an entry is written only under its owner's mutex, when a region is added (before any of
//       its pages is handed out, and under claim_mutex too: check and record are one step) or
//       removed (after all of them came back); readers need no lock.
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
std::mutex leaf_mutex;   // serialises leaf creation only
std::mutex claim_mutex;  // makes page_map_claim's check and record one step

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

std::uint64_t load(std::uint64_t pfn) noexcept {
  const std::uint64_t* leaf = root[pfn >> leaf_bits].load(std::memory_order_acquire);
  if (!leaf) return 0;
  return std::atomic_ref(const_cast<std::uint64_t&>(leaf[pfn & (leaf_entries - 1)]))
      .load(std::memory_order_acquire);
}

constexpr std::uint64_t pfn_limit = std::uint64_t{1} << (address_bits - page_shift);

}  // namespace

page_map_conflict page_map_claim(std::uintptr_t span_begin, std::uintptr_t span_end,
                                 std::uintptr_t base, std::size_t pages, const page_resource* owner,
                                 std::size_t region) {
  const std::uint64_t lo = span_begin >> page_shift, hi = span_end >> page_shift;
  if (hi > pfn_limit) throw std::bad_alloc();
  std::lock_guard lock(claim_mutex);
  for (std::uint64_t p = lo; p < hi; ++p) {
    if (!root[p >> leaf_bits].load(std::memory_order_acquire)) {  // a whole leaf of zeros
      p = (((p >> leaf_bits) + 1) << leaf_bits) - 1;
      continue;
    }
    if (const std::uint64_t e = load(p))
      return {static_cast<std::uintptr_t>(p << page_shift), e == page_map_metadata};
  }
  // Create every leaf first, so that a failure leaves nothing recorded.
  for (std::uint64_t p = lo; p < hi; p = ((p >> leaf_bits) + 1) << leaf_bits) leaf_for(p, true);
  page_map_record(span_begin, span_end, base, pages, owner, region);
  return {};
}

void page_map_record(std::uintptr_t span_begin, std::uintptr_t span_end, std::uintptr_t base,
                     std::size_t pages, const page_resource* owner, std::size_t region) noexcept {
  const std::uint64_t lo = base >> page_shift, hi = lo + pages;
  const std::uint64_t value = (reinterpret_cast<std::uint64_t>(owner) << 8) | (region + 1);
  for (std::uint64_t p = span_begin >> page_shift; p < span_end >> page_shift; ++p)
    store(p, p >= lo && p < hi ? value : page_map_metadata);
}

void page_map_clear(std::uintptr_t first, std::uintptr_t last) noexcept {
  for (std::uint64_t p = first >> page_shift; p < last >> page_shift; ++p) store(p, 0);
}

std::uint64_t page_map_entry(const void* p) noexcept {
  const std::uint64_t pfn = reinterpret_cast<std::uintptr_t>(p) >> page_shift;
  return pfn < pfn_limit ? load(pfn) : 0;
}

}  // namespace bsalloc::detail

namespace bsalloc {

page_resource* page_map_lookup(const void* p) noexcept {
  return detail::page_map_find(p).owner;
}

}  // namespace bsalloc
