// SPDX-License-Identifier: Apache-2.0
// Owner tags (I12, page_resource.hpp): a layer above records who holds a run, and the bytes it
// asked for, in the metadata of the run's second page instead of a table of its own. The fields
// are that page's list links (unused while it lies inside an allocated block), read and written
// atomically: the run's user writes them without a lock while tagged_runs() reads them under it.
#include <atomic>
#include <cassert>

#include "internal.hpp"
#include "parking.hpp"

namespace bsalloc {
using namespace detail;

bool page_resource::deallocate_tagged(void* p, std::uint32_t tag, std::size_t& bytes) {
  page_meta* m = tag_slot(p);
  if (!m || tag == 0) return false;
  std::uint32_t expect = tag;
  if (!std::atomic_ref(m[1].prev).compare_exchange_strong(expect, 0, std::memory_order_relaxed))
    return false;
  // The run is its user's (live) and untagged: free it as deallocate_pages(p, count) would,
  // without looking it up again.
  const std::size_t count = m->next;
  bytes = (count << page_shift) - load_tag_field(m[1].next);
  free_claimed(p, count, m);
  return true;
}

void page_resource::free_claimed(void* p, std::size_t count, page_meta* m) {
  if (cores_ && count <= max_cached_run_pages &&
      (reinterpret_cast<std::uintptr_t>(p) & ((page_size << run_order(count)) - 1)) == 0 &&
      cache_put(p, count, m))
    return;
  deallocate_slow(p, count);
}

bool page_resource::park_tagged(void* p, std::uint32_t tag, parked_run& out,
                                std::size_t& bytes) noexcept {
  return page_parking::park(*this, p, tag, out, bytes);
}

void page_resource::unpark(const parked_run& r, std::size_t bytes, std::uint32_t tag) noexcept {
  page_parking::unpark(r, bytes, tag);
}

void page_resource::free_parked(const parked_run& r) {
  auto* m = static_cast<page_meta*>(r.meta);
  assert(run_mark(m->run) == run_parked && m->next == r.pages);
  store_tag_field(m[1].prev, 0);  // untagged, as deallocate_tagged leaves a run it frees
  set_run_mark(m->run, run_live);
  free_claimed(r.start, r.pages, m);
}

std::size_t page_resource::tagged_runs(std::uint32_t tag, std::span<tagged_run> out,
                                       std::uint64_t& cursor) const {
  return const_cast<page_resource*>(this)->scan_tagged(tag, out, cursor, false);
}

std::size_t page_resource::take_tagged_runs(std::uint32_t tag, std::span<tagged_run> out,
                                            std::uint64_t& cursor) {
  return scan_tagged(tag, out, cursor, true);
}

std::size_t page_resource::scan_tagged(std::uint32_t tag, std::span<tagged_run> out,
                                       std::uint64_t& cursor, bool take) {
  // cursor = region index << 32 | page index: where the next call goes on.
  std::lock_guard lock(mutex_);
  std::size_t n = 0;
  if (tag == 0 || out.empty()) return 0;
  for (auto ri = static_cast<std::size_t>(cursor >> 32); ri < max_regions; ++ri) {
    region& r = regions_[ri];
    auto i = static_cast<std::uint32_t>(cursor);
    cursor = std::uint64_t{ri + 1} << 32;
    if (!r.in_use) continue;
    while (i < r.pages) {
      const page_meta& m = r.meta[i];
      if (m.state == meta_allocated && (m.flags & flag_run_head) && m.order != 0 &&
          run_mark(m.run) == run_live && load_tag_field(r.meta[i + 1].prev) == tag) {
        if (n == out.size()) {
          cursor = std::uint64_t{ri} << 32 | i;
          return n;
        }
        out[n++] = {reinterpret_cast<void*>(page_addr(r, i)),
                    (std::size_t{m.next} << page_shift) - load_tag_field(r.meta[i + 1].next)};
        if (take) store_tag_field(r.meta[i + 1].prev, 0);
      }
      // I1: the blocks tile the region; a head state at every block start.
      i += m.state == meta_none ? 1u : std::uint32_t{1} << m.order;
    }
  }
  return n;
}

}  // namespace bsalloc
