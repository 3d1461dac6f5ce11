// SPDX-License-Identifier: Apache-2.0
// The large path: requests no class can serve go to the upstream, which decides (it throws what
// it throws, std::bad_alloc for sizes it cannot serve). Nothing is written into a live block. Its
// record (pointer, bytes, alignment) lives out of band, so that release() frees it, the heap
// walk reports it and checked mode checks size and alignment:
//   - with a page_resource upstream and checked mode off, in the page run's own metadata: the
//     resource's owner tag and the bytes (page_resource::allocate_tagged), no table, no lock;
//   - otherwise (any other upstream, checked mode, a run of one page) in large_table.
// In front of the tagged path, the thread cache's large bins (large_bins.hpp), which the inline
// path serves as it serves the slab classes; their slow paths are here: a miss (the bin, then
// borrowing from the bins up, then a run from the page layer), a validated push, an overflowing
// bin's give-back, the scavenge, and the thread-exit / release() hand-over.
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

// -- the large bins' slow paths (large_bins.hpp) ------------------------------------------------

namespace {
// The bin of a request, or large_runs::bins: none (too big, too aligned, or a class that the
// wide row never maps to a large bin because a slab class serves it).
std::size_t request_bin(const slab_state& st, std::size_t bytes, std::size_t alignment) {
  if (!st.large_bins_on || bytes > large_runs::max_bytes || alignment > page_size)
    return large_runs::bins;
  const std::size_t b = large_request_bin[page_resource::pages_for(bytes)];
  return b != large_runs::bins && st.large_bin_used[b] ? b : large_runs::bins;
}

// The class pages of a run of `pages` pages freed as `bytes`: what it was asked as, if that is a
// class it may serve (a correct caller), else its own.
std::size_t freed_class_pages(std::size_t bytes, std::size_t pages) {
  if (bytes > large_runs::max_bytes) return pages;
  const std::size_t cls = large_runs::class_pages(page_resource::pages_for(bytes));
  return borrowed_ok(cls, pages) ? cls : pages;
}

bin& large_bin(thread_cache& tc, std::size_t b) {
  return tc.bins[static_cast<std::size_t>(large_base) + b];
}

// Takes the newest run of bin b (not empty), of `pages` pages.
void* pop_run(bin& b, [[maybe_unused]] std::size_t pages) {
  void* p = b.head;
  b.head = link_get(p, 0);
  b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  BSALLOC_UNPOISON(p, pages << page_shift);
  return p;
}
}  // namespace

void* slab_state::allocate_from_bins(thread_cache& tc, std::size_t b, std::size_t alignment) {
  (void)alignment;  // <= page_size (request_bin): every run is page-aligned
  tick(tc);
  bin& mine = large_bin(tc, b);
  mine.flags |= bin_active | bin_refilled;                        // the thread allocates this class
  if (mine.head) return pop_run(mine, large_runs::bin_pages(b));  // an aligned request's hit
  // Borrowing: the newest run of one of the next bins up, if not too big for b's class (its
  // page count read from the page layer: a run borrowed before may have more than its bin's).
  const std::size_t cls = large_runs::bin_pages(b);
  const std::uint32_t tag = large_tag.load(std::memory_order_relaxed);
  const std::size_t last = std::min(b + large_runs::borrow_bins, large_runs::bins - 1);
  for (std::size_t j = b + 1; j <= last && borrowed_ok(cls, large_runs::bin_pages(j)); ++j) {
    bin& up = large_bin(tc, j);
    if (!up.head) continue;
    const std::size_t pages = page_parking::bin_run_pages(*upstream_pages, up.head, tag);
    if (!borrowed_ok(cls, pages)) continue;
    // Its excess was over bin j's class, it is now over b's.
    add_owned(tc.large_excess, large_runs::bin_pages(j) - cls);
    return pop_run(up, pages);
  }
  return nullptr;
}

void slab_state::push_to_bins(thread_cache& tc, void* p, std::size_t pages, std::size_t bytes) {
  const std::size_t b = large_run_bin[pages];
  tick(tc);
  bin& mine = large_bin(tc, b);
  mine.flags |= bin_active;
  // Its excess over the class it was asked as leaves that class: it goes into its own pages'
  // bin, or back to the page layer.
  add_owned(tc.large_excess, 0 - (pages - freed_class_pages(bytes, pages)));
  const std::uint32_t n = mine.count.load(std::memory_order_relaxed) + 1;
  if (n > mine.limit) {
    if (mine.flags & bin_refilled) {
      // A bin that overflows and that its thread also misses in grows, as the slab classes',
      // within what the other bins leave of the ceiling.
      const std::size_t run = large_runs::bin_pages(b) << page_shift;
      const std::size_t room = (large_ceiling_bytes - tc.large_limit_bytes) / run;
      const std::uint32_t grown = std::min<std::uint32_t>(
          {large_limit_max, mine.limit * 2u,
           mine.limit + static_cast<std::uint32_t>(std::min<std::size_t>(room, 64))});
      tc.large_limit_bytes += (grown - mine.limit) * run;
      mine.limit = static_cast<std::uint16_t>(grown);
      mine.flags = static_cast<std::uint16_t>(mine.flags & ~bin_refilled);
    }
    if (n > mine.limit) {  // full: this run goes back (no walk through the bin's cold runs)
      give_back(tc, p);
      return;
    }
  }
  BSALLOC_POISON_FREE(p, pages << page_shift);
  link_set(p, mine.head, 0);
  mine.head = p;
  mine.count.store(n, std::memory_order_relaxed);
}

void slab_state::give_back(thread_cache& tc, void* run) {
  std::size_t recorded = 0;
  const std::uint32_t tag = large_tag.load(std::memory_order_relaxed);
  if (!upstream_pages->deallocate_tagged(run, tag, recorded)) [[unlikely]]
    upstream_pages->deallocate_run(run);  // not a run of ours: a bad free; this names it
  add_owned(tc.large_taken, std::size_t(-1));
  add_owned(tc.large_taken_pages, 0 - (recorded >> page_shift));
}

void slab_state::trim_large_bin(thread_cache& tc, std::size_t b, std::uint32_t keep) {
  bin& mine = large_bin(tc, b);
  const std::uint32_t n = mine.count.load(std::memory_order_relaxed);
  if (n <= keep) return;
  void* rest = mine.head;
  if (keep == 0) {
    mine.head = nullptr;
  } else {
    void* cut = mine.head;
    for (std::uint32_t i = 1; i < keep; ++i) cut = link_get(cut, 0);
    rest = link_get(cut, 0);
    link_set(cut, nullptr, 0);
  }
  mine.count.store(keep, std::memory_order_relaxed);
  for (std::uint32_t i = keep; i < n && rest; ++i) {
    void* run = rest;
    rest = link_get(run, 0);
#if BSALLOC_ASAN
    const std::size_t pages = page_parking::bin_run_pages(
        *upstream_pages, run, large_tag.load(std::memory_order_relaxed));
    BSALLOC_UNPOISON(run, (pages ? pages : 1) << page_shift);
#endif
    const std::size_t before = tc.large_taken_pages.load(std::memory_order_relaxed);
    give_back(tc, run);
    const std::size_t run_pages = before - tc.large_taken_pages.load(std::memory_order_relaxed);
    add_owned(tc.large_excess, 0 - (run_pages - large_runs::bin_pages(b)));
  }
}

std::size_t slab_state::flush_large(thread_cache& tc) {
  if (!large_bins_on) return 0;
  std::size_t bytes = 0;
  for (std::size_t b = 0; b < large_runs::bins; ++b) {
    bytes += large_bin(tc, b).count.load(std::memory_order_relaxed) * large_runs::bin_pages(b)
             << page_shift;
    trim_large_bin(tc, b, 0);
  }
  return bytes;
}

void slab_state::scavenge_large(thread_cache& tc) {
  if (!large_bins_on) return;
  for (std::size_t b = 0; b < large_runs::bins; ++b) {
    bin& mine = large_bin(tc, b);
    if (mine.flags & bin_active) {
      mine.flags = static_cast<std::uint16_t>(mine.flags & ~bin_active);
      continue;
    }
    // Quiet since the last look: half the limit (down to the initial one) and half the runs.
    const std::uint32_t n = mine.count.load(std::memory_order_relaxed);
    if (n == 0 && mine.limit <= large_start) continue;
    const auto lower =
        static_cast<std::uint16_t>(std::max<std::uint32_t>(large_start, mine.limit / 2u));
    tc.large_limit_bytes -= (mine.limit - lower) * (large_runs::bin_pages(b) << page_shift);
    mine.limit = lower;
    mine.flags = 0;
    trim_large_bin(tc, b, std::min<std::uint32_t>(mine.limit, n / 2));
  }
}

void slab_state::fold_large(thread_cache& tc) {
  // What tc's bins hold goes back to the page layer right after (flush_cache, with no lock
  // held): the rest of what tc took is live, at its requests' classes, its excess with it.
  std::size_t runs = 0, pages = 0, excess = 0;
  if (large_bins_on) {
    const std::uint32_t tag = large_tag.load(std::memory_order_relaxed);
    for (std::size_t b = 0; b < large_runs::bins; ++b)
      for (void* p = large_bin(tc, b).head; p; p = link_get(p, 0)) {
        const std::size_t n = page_parking::bin_run_pages(*upstream_pages, p, tag);
        ++runs;
        pages += n;
        excess += n - large_runs::bin_pages(b);
      }
  }
  large_objects.fetch_add(tc.large_taken.load(std::memory_order_relaxed) - runs,
                          std::memory_order_relaxed);
  large_bytes.fetch_add((tc.large_taken_pages.load(std::memory_order_relaxed) - pages)
                            << page_shift,
                        std::memory_order_relaxed);
  large_excess.fetch_add((tc.large_excess.load(std::memory_order_relaxed) - excess) << page_shift,
                         std::memory_order_relaxed);
}

void slab_state::forget_large(thread_cache& tc) {
  if (large_bins_on)
    for (std::size_t b = 0; b < large_runs::bins; ++b) {
      bin& mine = large_bin(tc, b);
#if BSALLOC_ASAN
      // Accessible again before free_large() gives them to the page layer, which does not
      // annotate. A fork may have cut a push or a pop in another thread: at most count + 1.
      void* run = mine.head;
      for (std::uint32_t i = 0; run && i <= mine.count.load(std::memory_order_relaxed); ++i) {
        void* next = link_get(run, 0);
        const std::size_t pages = page_parking::bin_run_pages(
            *upstream_pages, run, large_tag.load(std::memory_order_relaxed));
        BSALLOC_UNPOISON(run, (pages ? pages : 1) << page_shift);
        run = next;
      }
#endif
      mine.head = nullptr;
      mine.count.store(0, std::memory_order_relaxed);
    }
  tc.large_taken.store(0, std::memory_order_relaxed);
  tc.large_taken_pages.store(0, std::memory_order_relaxed);
  tc.large_excess.store(0, std::memory_order_relaxed);
}

void* slab_state::allocate_large(std::size_t bytes, std::size_t alignment) {
  void* p;
  const std::size_t b = request_bin(*this, bytes, alignment);
  thread_cache* tc = nullptr;
  if (b != large_runs::bins) {
    tc = cache_for(*this);
    if (tc)
      if (void* hit = allocate_from_bins(*tc, b, alignment)) return hit;
  }
  if (upstream_pages && !knobs.checked) {
    bool tagged;
    // A run of a large bin's class asks its whole bytes: its record (and what stats() count)
    // is the run's, whichever request of its class it serves next.
    const std::size_t pages = b != large_runs::bins ? large_runs::bin_pages(b) : 0;
    const std::size_t asked = pages ? pages << page_shift : bytes;
    p = upstream_pages->allocate_tagged(asked, alignment, owner_tag(), tagged, pages);
    if (tagged) {
      // A thread with large bins counts in its cache (no shared counter); others here.
      if (tc) {
        add_owned(tc->large_taken, 1);
        add_owned(tc->large_taken_pages, pages);
      } else {
        large_objects.fetch_add(1, std::memory_order_relaxed);
        large_bytes.fetch_add(asked, std::memory_order_relaxed);
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
  // A run of a large bin's class, tagged by us and recorded whole: into the thread's bin of its
  // page count (validated here, unlike the inline path's push).
  if (large_bins_on)
    if (thread_cache* tc = find_cache(*this)) {
      const std::size_t pages = page_parking::bin_run_pages(
          *upstream_pages, p, large_tag.load(std::memory_order_relaxed));
      if (pages != 0 && pages <= large_runs::max_pages &&
          large_run_bin[pages] != large_runs::bins && large_bin_used[large_run_bin[pages]]) {
        push_to_bins(*tc, p, pages, bytes);
        return;
      }
    }
  // A tagged run of ours: untagged by one compare-and-swap (of two racing frees, the second
  // finds no tag and goes on as a pointer without a record) and freed whatever the caller says.
  if (upstream_pages && !knobs.checked) {
    std::size_t recorded;
    if (upstream_pages->deallocate_tagged(p, large_tag.load(std::memory_order_relaxed), recorded)) {
      large_objects.fetch_sub(1, std::memory_order_relaxed);
      large_bytes.fetch_sub(recorded, std::memory_order_relaxed);
      // A run of a large bin's class may have been borrowed by a smaller class: its excess over
      // the class it was asked as (counted in some thread's large_excess, or here once that
      // thread exited) leaves with it.
      const std::size_t pages = recorded >> page_shift;
      if (large_bins_on && (recorded & (page_size - 1)) == 0 && pages <= large_runs::max_pages &&
          large_run_bin[pages] != large_runs::bins)
        large_excess.fetch_sub((pages - freed_class_pages(bytes, pages)) << page_shift,
                               std::memory_order_relaxed);
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
      for (std::size_t i = 0; i < n; ++i)  // whatever its page count (a large bin's class)
        upstream_pages->deallocate_run(batch[i].start);
  }
  large_objects.store(0, std::memory_order_relaxed);
  large_bytes.store(0, std::memory_order_relaxed);
  large_excess.store(0, std::memory_order_relaxed);
}

}  // namespace bsalloc::detail
