// SPDX-License-Identifier: Apache-2.0
// The large path: requests no class can serve go to the upstream, which decides (it throws what
// it throws, std::bad_alloc for sizes it cannot serve). Nothing is written into the block. Its
// record (pointer, bytes, alignment) lives out of band, so that release() frees it, the heap
// walk reports it and checked mode checks size and alignment:
//   - with a page_resource upstream and checked mode off, in the page run's own metadata: the
//     resource's owner tag and the bytes (page_resource::allocate_tagged), no table, no lock;
//   - otherwise (any other upstream, checked mode, a run of one page) in large_table.
// In front of the tagged path, the thread cache's large runs (large_cache.hpp): a freed run
// parked for the thread's next request of its run class (or of a class up to a third smaller).
#include <algorithm>
#include <new>

#include "../page/parking.hpp"
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

// The hit paths: inline here, into the large front and the slow path.
[[gnu::always_inline]] inline void* slab_state::unpark_to_user(large_cache& lc,
                                                               const page_resource::parked_run& r,
                                                               std::size_t bytes) {
  page_parking::unpark(r, bytes, large_tag.load(std::memory_order_relaxed));
  add_owned(lc.objects_delta, 1);
  add_owned(lc.bytes_delta, bytes);
  return r.start;
}

[[gnu::always_inline]] inline void* slab_state::allocate_large_cached(thread_cache& tc,
                                                                      std::size_t bytes,
                                                                      std::size_t alignment) {
  large_cache* lc = tc.large_runs();
  if (!lc) [[unlikely]]
    return nullptr;   // no memory for it when the thread cache was made
  lc->active = true;  // no tick(): large calls leave the small bins' scavenging cadence alone
  const std::size_t pages = page_resource::pages_for(bytes);
  if (pages > large_cache::max_pages) return nullptr;
  const std::size_t b = large_request_bin[pages];
  if (b == large_cache::bins) return nullptr;
  if (lc->count[b] == 0 || alignment > page_size) [[unlikely]]
    return allocate_large_near(*lc, b, bytes, alignment);
  return unpark_to_user(*lc, take_newest(*lc, b), bytes);
}

void* slab_state::allocate_large_near(large_cache& lc, std::size_t b, std::size_t bytes,
                                      std::size_t alignment) {
  // Bin b first, then up to borrow_bins bins up whose runs are not too big for the request's
  // class (borrowed_ok): a run keeps its page count, and its free parks it in its own bin.
  const std::size_t cls = large_cache::bin_pages(b);
  const std::size_t last = std::min(b + large_cache::borrow_bins, large_cache::bins - 1);
  for (std::size_t j = b; j <= last && borrowed_ok(cls, large_cache::bin_pages(j)); ++j) {
    if (lc.count[j] == 0) continue;
    if (alignment <= page_size) return unpark_to_user(lc, take_newest(lc, j), bytes);
    // A parked run is page-aligned, most of them to their buddy block too (a run of n pages
    // from the buddy lists starts at a multiple of 2^ceil(log2 n) pages): the newest one
    // aligned enough, if any (object_pool's slabs ask for their own size).
    for (std::size_t i = lc.count[j]; i-- != 0;)
      if ((reinterpret_cast<std::uintptr_t>(lc.runs[j][i].start) & (alignment - 1)) == 0)
        return unpark_to_user(lc, take_out(lc, j, i), bytes);
  }
  return nullptr;
}

[[gnu::always_inline]] inline bool slab_state::deallocate_large_cached(thread_cache& tc, void* p) {
  large_cache* lc = tc.large_runs();
  if (!lc) return false;
  page_resource::parked_run r;
  std::size_t recorded;
  // Not a live run tagged by us: the usual path decides (and names a bad pointer).
  if (!page_parking::park(*upstream_pages, p, large_tag.load(std::memory_order_relaxed), r,
                          recorded)) [[unlikely]]
    return false;
  add_owned(lc->objects_delta, std::size_t(-1));
  add_owned(lc->bytes_delta, 0 - recorded);
  const std::size_t b =
      r.pages <= large_cache::max_pages ? large_run_bin[r.pages] : large_cache::bins;
  if (b == large_cache::bins) [[unlikely]] {
    upstream_pages->free_parked(r);
    return true;
  }
  const std::size_t after = (lc->pages.load(std::memory_order_relaxed) + r.pages) << page_shift;
  if (after > knobs.large_cache_bytes) [[unlikely]]
    if (const std::size_t budget = large_budget(*lc, knobs.large_cache_bytes); after > budget) {
      over_budget(*lc, r, budget);
      return true;
    }
  // Full: the oldest run goes back to the page layer. Out of the bin first, so that the bin
  // only ever holds parked runs (a fork in between leaves the run to the child's recount:
  // recount_large_after_fork).
  if (lc->count[b] == large_cache::per_bin) upstream_pages->free_parked(take_out(*lc, b, 0));
  put_in(*lc, b, r);
  return true;
}

void slab_state::over_budget(large_cache& lc, const page_resource::parked_run& r,
                             std::size_t budget) {
  upstream_pages->free_parked(r);
  // The budget follows the thread's live large bytes, so it may have fallen below what the
  // cache holds: the oldest runs go back, from the biggest runs' bins down, until it fits.
  for (std::size_t b = large_cache::bins; b-- != 0;)
    while (lc.count[b] != 0 && (lc.pages.load(std::memory_order_relaxed) << page_shift) > budget)
      upstream_pages->free_parked(take_out(lc, b, 0));
}

void* slab_state::allocate_large(std::size_t bytes, std::size_t alignment) {
  void* p;
  large_cache* lc = nullptr;  // counts this thread's large blocks, if it has one
  if (large_cache_on)
    if (thread_cache* tc = cache_for(*this)) {
      if (void* hit = allocate_large_cached(*tc, bytes, alignment)) return hit;
      lc = tc->large_runs();
    }
  if (upstream_pages && !knobs.checked) {
    bool tagged;
    // With a large cache, the run has the cache's class count, for a later hit.
    const std::size_t pages = lc && bytes <= large_cache::max_pages * page_size
                                  ? large_cache::class_pages(page_resource::pages_for(bytes))
                                  : 0;
    p = upstream_pages->allocate_tagged(bytes, alignment, owner_tag(), tagged, pages);
    if (tagged) {
      // A thread with a large cache counts in it (no shared counter); others here.
      if (lc) {
        add_owned(lc->objects_delta, 1);
        add_owned(lc->bytes_delta, bytes);
      } else {
        large_objects.fetch_add(1, std::memory_order_relaxed);
        large_bytes.fetch_add(bytes, std::memory_order_relaxed);
      }
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
  if (large_cache_on)
    if (thread_cache* tc = find_cache(*this); tc && deallocate_large_cached(*tc, p)) return;
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

std::size_t slab_state::flush_large(thread_cache& tc) {
  large_cache* lc = tc.large_runs();
  if (!lc) return 0;
  std::size_t bytes = 0;
  for (std::size_t b = 0; b < large_cache::bins; ++b) {
    while (lc->count[b] != 0) {
      const page_resource::parked_run r = take_newest(*lc, b);
      upstream_pages->free_parked(r);
      bytes += r.pages << page_shift;
    }
  }
  return bytes;
}

void slab_state::fold_large(thread_cache& tc) {
  if (large_cache* lc = tc.large_runs()) {
    large_objects.fetch_add(lc->objects_delta.exchange(0, std::memory_order_relaxed),
                            std::memory_order_relaxed);
    large_bytes.fetch_add(lc->bytes_delta.exchange(0, std::memory_order_relaxed),
                          std::memory_order_relaxed);
  }
}

void slab_state::forget_large(thread_cache& tc) {
  flush_large(tc);
  if (large_cache* lc = tc.large_runs()) {
    lc->objects_delta.store(0, std::memory_order_relaxed);
    lc->bytes_delta.store(0, std::memory_order_relaxed);
  }
}

void slab_state::recount_large_after_fork() noexcept {
  // A thread that the fork left behind may have been anywhere in take_newest / take_out /
  // put_in. What the child can find (large_cache.hpp writes in this order):
  //   - an entry below count is a parked run of the bin (put_in stores it before the count);
  //   - take_out's shift may have left one run in two adjacent entries: kept once here;
  //   - the run being taken out or put in may be in no entry: parked, and never freed in the
  //     child (a leak of at most one run per such thread, not a double free);
  //   - the totals may be off: recounted from the entries.
  for (thread_cache* tc = caches; tc; tc = tc->next) {
    large_cache* lc = tc->large_runs();
    if (!lc) continue;
    std::size_t runs = 0, pages = 0;
    for (std::size_t b = 0; b < large_cache::bins; ++b) {
      auto& bin = lc->runs[b];
      std::size_t kept = 0;
      for (std::size_t i = 0; i < lc->count[b]; ++i)
        if (kept == 0 || bin[kept - 1].start != bin[i].start) bin[kept++] = bin[i];
      lc->count[b] = static_cast<std::uint8_t>(kept);
      runs += kept;
      pages += kept * large_cache::bin_pages(b);
    }
    lc->pages.store(pages, std::memory_order_relaxed);
    lc->parked_runs.store(runs, std::memory_order_relaxed);
  }
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
      for (std::size_t i = 0; i < n; ++i)  // whatever its page count (a large-cache class)
        upstream_pages->deallocate_run(batch[i].start);
  }
  large_objects.store(0, std::memory_order_relaxed);
  large_bytes.store(0, std::memory_order_relaxed);
}

}  // namespace bsalloc::detail

namespace bsalloc {

void* slab_resource::allocate_large_front(std::size_t bytes, std::size_t alignment) {
  // Alignment <= 16 here (the inline path's test); 0 and the others that are not a power of
  // two are the slow path's to refuse.
  const detail::tls_slot& s = detail::t_slots[slot_];
  if (s.id == id_ && detail::power_of_two(alignment)) [[likely]]
    if (void* p = state_->allocate_large_cached(*s.cache, bytes, alignment)) return p;
  return allocate_slow(bytes, alignment);
}

void slab_resource::deallocate_large_front(void* p, std::size_t bytes, std::size_t alignment) {
  const detail::tls_slot& s = detail::t_slots[slot_];
  if (s.id == id_ && detail::power_of_two(alignment)) [[likely]]
    if (state_->deallocate_large_cached(*s.cache, p)) return;
  deallocate_slow(p, bytes, alignment);
}

}  // namespace bsalloc
