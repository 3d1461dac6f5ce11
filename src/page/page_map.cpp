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
namespace {

constexpr unsigned address_bits = 47;
constexpr unsigned leaf_bits = 18;
constexpr unsigned root_bits = address_bits - page_shift - leaf_bits;  // 17
constexpr std::size_t leaf_entries = std::size_t{1} << leaf_bits;
constexpr std::size_t root_entries = std::size_t{1} << root_bits;

// An entry packs (owner address << 8) | (region + 1); 0 means "not bsalloc memory".
static_assert(max_regions < 255);

std::atomic<std::uint64_t*> root[root_entries];  // static storage: zero, committed lazily
std::mutex leaf_mutex;                           // serialises leaf creation only

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

page_map_hit page_map_find(const void* p) noexcept {
  const std::uint64_t pfn = reinterpret_cast<std::uintptr_t>(p) >> page_shift;
  if (pfn >> (address_bits - page_shift)) return {nullptr, any_region};
  const std::uint64_t* leaf = root[pfn >> leaf_bits].load(std::memory_order_acquire);
  if (!leaf) return {nullptr, any_region};
  const std::uint64_t e =
      std::atomic_ref(const_cast<std::uint64_t&>(leaf[pfn & (leaf_entries - 1)]))
          .load(std::memory_order_acquire);
  if (e == 0) return {nullptr, any_region};
  return {reinterpret_cast<page_resource*>(e >> 8), static_cast<std::size_t>(e & 0xff) - 1};
}

}  // namespace bsalloc::detail

namespace bsalloc {

page_resource* page_map_lookup(const void* p) noexcept {
  return detail::page_map_find(p).owner;
}

}  // namespace bsalloc
