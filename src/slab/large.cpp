// SPDX-License-Identifier: Apache-2.0
// The large path: requests no class can serve go to the upstream, which decides (it throws what
// it throws, std::bad_alloc for sizes it cannot serve). Nothing is written into the block. Its
// record (pointer, bytes, alignment) lives out of band, so that release() frees it, the heap
// walk reports it and checked mode checks size and alignment:
//   - with a page_resource upstream and checked mode off, in the page run's own metadata: the
//     resource's owner tag and the bytes (page_resource::allocate_tagged), no table, no lock;
//   - otherwise (any other upstream, checked mode, a run of one page) in large_table.
#include <new>

#include "state.hpp"

namespace bsalloc::detail {

namespace {
std::atomic<std::uint32_t> last_owner_tag{0};

// Tags are never reused while 2^32 - 1 others are drawn; 0 is "untagged".
[[gnu::noinline]] std::uint32_t draw_tag(std::atomic<std::uint32_t>& mine) {
  std::uint32_t t = last_owner_tag.fetch_add(1, std::memory_order_relaxed) + 1;
  if (t == 0) t = last_owner_tag.fetch_add(1, std::memory_order_relaxed) + 1;
  std::uint32_t expect = 0;
  return mine.compare_exchange_strong(expect, t, std::memory_order_relaxed) ? t : expect;
}
}  // namespace

std::uint32_t slab_state::owner_tag() {
  const std::uint32_t t = large_tag.load(std::memory_order_relaxed);
  return t != 0 ? t : draw_tag(large_tag);
}

void* slab_state::allocate_large(std::size_t bytes, std::size_t alignment) {
  void* p;
  if (upstream_pages && !knobs.checked) {
    bool tagged;
    p = upstream_pages->allocate_tagged(bytes, alignment, owner_tag(), tagged);
    if (tagged) {
      large_objects.fetch_add(1, std::memory_order_relaxed);
      large_bytes.fetch_add(bytes, std::memory_order_relaxed);
      return p;
    }
  } else {
    p = up_allocate(bytes, alignment);
  }
  {
    std::lock_guard lock(large_lock);
    if (large.insert(large_record{reinterpret_cast<std::uintptr_t>(p), bytes, alignment})) {
      large_objects.fetch_add(1, std::memory_order_relaxed);
      large_bytes.fetch_add(bytes, std::memory_order_relaxed);
      return p;
    }
  }
  up_deallocate(p, bytes, alignment);  // no memory for its record
  throw std::bad_alloc();
}

void slab_state::deallocate_large(void* p, std::size_t bytes, std::size_t alignment) {
  // A tagged run of ours: untagged by one compare-and-swap (of two racing frees, the second
  // finds no tag and goes on as a pointer without a record) and freed whatever the caller says.
  if (upstream_pages && !knobs.checked) {
    std::size_t recorded;
    if (upstream_pages->deallocate_tagged(p, large_tag.load(std::memory_order_relaxed), recorded)) {
      large_objects.fetch_sub(1, std::memory_order_relaxed);
      large_bytes.fetch_sub(recorded, std::memory_order_relaxed);
      return;
    }
  }
  large_record r;
  {
    std::lock_guard lock(large_lock);
    if (large.erase(reinterpret_cast<std::uintptr_t>(p), r)) {
      large_objects.fetch_sub(1, std::memory_order_relaxed);
      large_bytes.fetch_sub(r.bytes, std::memory_order_relaxed);
      bytes = r.bytes;  // what the upstream handed out, whatever the caller says
      alignment = r.alignment;
    }
  }
  // A pointer without a record is not this resource's: the upstream decides (checked mode
  // stopped it before).
  up_deallocate(p, bytes, alignment);
}

void slab_state::free_large() {
  large_table blocks;  // taken out under the lock, freed outside it; no allocation (noexcept)
  {
    std::lock_guard lock(large_lock);
    blocks.swap(large);
  }
  blocks.for_each([&](const large_record& r) {
    up_deallocate(reinterpret_cast<void*>(r.p), r.bytes, r.alignment);
  });
  // The tagged runs, a batch at a time: taken (untagged) under the page lock, freed outside it.
  if (const std::uint32_t tag = large_tag.load(std::memory_order_relaxed); tag && upstream_pages) {
    std::array<page_resource::tagged_run, 64> batch;
    std::uint64_t cursor = 0;
    while (const std::size_t n = upstream_pages->take_tagged_runs(tag, batch, cursor))
      for (std::size_t i = 0; i < n; ++i)
        up_deallocate(batch[i].start, batch[i].bytes, alignof(std::max_align_t));
  }
  large_objects.store(0, std::memory_order_relaxed);
  large_bytes.store(0, std::memory_order_relaxed);
}

}  // namespace bsalloc::detail
