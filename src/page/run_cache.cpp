// SPDX-License-Identifier: Apache-2.0
// The run cache: per core (sched_getcpu() % core_count_), a bin of recently freed runs for each
// page count 1..max_cached_run_pages, in front of the buddy lock. A deallocation of a run that
// fits goes to its core's bin under the core's lock only; an allocation of that count takes the
// newest run of the bin (LIFO: warm pages). No split, no merge, no global lock.
//
// Invariants (I10, checked by check_invariants() with every lock held)
//   C1  an entry of bin n is the head of a live allocated run of n pages whose head meta has
//       cached == 1; no run is in two bins; no other run head has cached == 1.
//   C2  core.pages == sum over its bins of n x entries <= cache_bytes_per_core / page_size.
//   C3  a cached run of n pages starts at a multiple of 2^run_order(n) pages (its buddy block),
//       so an over-aligned request may take it; runs resized in place that start lower are
//       not cached (deallocate_pages checks).
// Lock order: mutex_ before any core lock; the cache paths take only a core lock.
#include <bsalloc/locks.hpp>

#include <atomic>

#include "../cpu.hpp"
#include "internal.hpp"

namespace bsalloc {
using namespace detail;

namespace {
// One more under the core lock (its only writer): a plain load and store.
inline void bump(std::atomic<std::uint64_t>& counter) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}
}  // namespace

// Inline in both callers (this file only).
[[gnu::always_inline]] inline page_resource::core_cache& page_resource::this_core() const noexcept {
  // The CPU number is below core_count_ (the configured CPUs) but for CPUs brought online
  // later: no division on the fast path.
  const std::size_t cpu = current_cpu();
  return cores_[cpu < core_count_ ? cpu : cpu % core_count_];
}

namespace {
// The newest run of `count` pages in core c's bin, made live (the caller's), or {nullptr, _}:
// cache_take for allocate_tagged, which keeps the head's metadata too.
template <class Core, class Entry = typename Core::entry>
[[gnu::always_inline]] inline Entry take_entry(Core& c, std::size_t count) noexcept {
  std::lock_guard lock(c.lock);
  std::uint8_t& n = c.count[count];
  if (n == 0) {
    bump(c.misses);
    return {nullptr, nullptr};
  }
  const Entry e = c.bin(count)[--n];
  assert(run_mark(e.head->run) == run_cached && e.head->next == count);  // C1
  set_run_mark(e.head->run, run_live);                                   // the caller's now
  c.pages.store(c.pages.load(std::memory_order_relaxed) - count, std::memory_order_relaxed);
  return e;
}
}  // namespace

void* page_resource::cache_take(std::size_t count) noexcept {
  // take_entry's body, kept apart: returning the pair here costs the 4 KiB path an instruction.
  core_cache& c = this_core();
  std::lock_guard lock(c.lock);
  std::uint8_t& n = c.count[count];
  if (n == 0) {
    bump(c.misses);
    return nullptr;
  }
  const core_cache::entry e = c.bin(count)[--n];
  assert(run_mark(e.head->run) == run_cached && e.head->next == count);  // C1
  set_run_mark(e.head->run, run_live);                                   // the caller's now
  c.pages.store(c.pages.load(std::memory_order_relaxed) - count, std::memory_order_relaxed);
  return e.run;
}

void* page_resource::allocate_tagged(std::size_t bytes, std::size_t alignment, std::uint32_t tag,
                                     bool& tagged, std::size_t pages) {
  // allocate(bytes, alignment) (do_allocate), keeping the run's head metadata from the run
  // cache so that the tag costs no second lookup; the buddy path's run is looked up.
  if (bytes > (page_size << max_order)) throw std::bad_alloc();
  const std::size_t count = std::max(class_pages(pages_for(bytes)), pages);
  core_cache::entry e{nullptr, nullptr};
  if (cores_ && count - 1 < max_cached_run_pages && alignment - 1 < page_size &&
      (alignment & (alignment - 1)) == 0)
    e = take_entry(this_core(), count);
  if (!e.run) {
    e.run = allocate_slow(count, alignment, page_constraint{});
    e.head = tag_slot(e.run);
  }
  tagged = false;
  if (!e.head || e.head->order == 0 || tag == 0) return e.run;
  const std::size_t run_bytes = std::size_t{e.head->next} << page_shift;
  if (bytes > run_bytes || run_bytes - bytes > std::numeric_limits<std::uint32_t>::max())
    return e.run;
  page_meta& t = e.head[1];  // I12: inside the head block, no block's head
  store_tag_field(t.next, static_cast<std::uint32_t>(run_bytes - bytes));
  std::atomic_ref(t.prev).store(tag, std::memory_order_release);  // check_invariants: bytes
  tagged = true;
  return e.run;
}

bool page_resource::cache_put(void* p, std::size_t count, page_meta* head) noexcept {
  core_cache& c = this_core();
  std::lock_guard lock(c.lock);
  std::uint8_t& n = c.count[count];
  const std::size_t pages = c.pages.load(std::memory_order_relaxed);
  if (n == bin_capacities[count] || pages + count > cache_page_limit_) {
    bump(c.overflows);
    return false;
  }
  // Claim the run (I11): of two frees of it racing (a double free), on this path or the locked
  // one, exactly one wins; the loser goes to the slow path, which throws naming p. Once claimed,
  // the run is ours: its count can be read.
  if (!claim_run_mark(head->run, run_cached)) return false;
  if (head->next != count) [[unlikely]] {  // a wrong count: give it back, the slow path names it
    set_run_mark(head->run, run_live);
    return false;
  }
  c.bin(count)[n++] = {p, head};
  c.pages.store(pages + count, std::memory_order_relaxed);
  return true;
}

page_run_cache_counters page_resource::cache_counters() const noexcept {
  page_run_cache_counters t;
  for (std::size_t c = 0; c < core_count_; ++c) {
    t.misses += cores_[c].misses.load(std::memory_order_relaxed);
    t.overflows += cores_[c].overflows.load(std::memory_order_relaxed);
  }
  return t;
}

std::size_t page_resource::cached_pages() const noexcept {
  std::size_t total = 0;
  for (std::size_t c = 0; c < core_count_; ++c)
    total += cores_[c].pages.load(std::memory_order_relaxed);
  return total;
}

void page_resource::drain_caches(bool) {
  // Under the buddy lock, one core lock at a time (mutex_ before a core lock: the lock order):
  // take a bin's runs out (into a fixed array: no allocation, which might come back here
  // through a malloc built on this resource), then free them. No run is ever out of the cache
  // and not yet free with neither lock held: check_invariants() sees none (I11).
  std::array<core_cache::entry, max_bin_capacity> batch;
  std::lock_guard lock(mutex_);
  for (std::size_t c = 0; c < core_count_; ++c) {
    for (std::size_t count = 1; count <= max_cached_run_pages; ++count) {
      std::size_t n;
      {
        std::lock_guard core_lock(cores_[c].lock);
        n = cores_[c].count[count];
        if (n == 0) continue;
        std::copy_n(cores_[c].bin(count), n, batch.begin());
        // Out of the cache, claimed for the buddy lists (I11: none, set by unmark_run too).
        for (std::size_t i = 0; i < n; ++i) set_run_mark(batch[i].head->run, run_none);
        cores_[c].count[count] = 0;
        cores_[c].pages.store(cores_[c].pages.load(std::memory_order_relaxed) - n * count,
                              std::memory_order_relaxed);
      }
      for (std::size_t i = 0; i < n; ++i) {
        const auto addr = reinterpret_cast<std::uintptr_t>(batch[i].run);
        const std::size_t ri = region_of(addr);
        region& r = regions_[ri];
        free_run_locked(r, static_cast<std::uint32_t>((addr - r.base) >> page_shift),
                        static_cast<std::uint32_t>(count));
      }
    }
  }
}

void page_resource::flush_cache() {
  if (cores_) drain_caches(true);
}

void page_resource::clear_core(std::size_t c) noexcept {
  std::lock_guard lock(cores_[c].lock);
  cores_[c].count.fill(0);
  cores_[c].pages.store(0, std::memory_order_relaxed);
}

void page_resource::lock_all() noexcept {
  mutex_.lock();
  for (std::size_t c = 0; c < core_count_; ++c) cores_[c].lock.lock();
}

void page_resource::unlock_all() noexcept {
  for (std::size_t c = core_count_; c-- > 0;) cores_[c].lock.unlock();
  mutex_.unlock();
}

void page_resource::after_fork_child() noexcept {
  // Called with every lock held. A purge whose madvise was in flight in another thread of the
  // parent never finishes here: put its blocks back, conservatively marked resident.
  if (purge_running_) {
    for (std::size_t v = 0; v < victim_count_; ++v) {
      region& r = regions_[victims_[v].region];
      const std::uint32_t index = victims_[v].index;
      r.meta[index].state = meta_none;
      purging_pages_ -= std::size_t{1} << victims_[v].order;
      for (std::uint32_t q = victim_spans_[v].first; q < victim_spans_[v].second; ++q) {
        r.meta[index + q].flags |= flag_resident;
        ++dirty_free_pages_;
      }
      free_block(r, index, victims_[v].order, true);
    }
    victim_count_ = 0;
    purge_running_ = false;
  }
  // The background purger's thread does not exist in the child: forget it (not joinable
  // there); the child purges on deallocation, trim() and flush_cache() as without it.
  (void)purger_.release();
}

// ---------------------------------------------------------------------------------------------
// Cache invariants (C1-C3), with mutex_ held by check_invariants().
// ---------------------------------------------------------------------------------------------

std::size_t page_resource::check_cache_locked() const {
  std::size_t heads = 0;
  for (std::size_t c = 0; c < core_count_; ++c) {  // every core lock held by the caller
    std::size_t pages = 0;
    for (std::size_t count = 1; count <= max_cached_run_pages; ++count) {
      if (cores_[c].count[count] > bin_capacity(count))
        throw std::logic_error(fmt::format(
            "bsalloc::page_resource invariant broken: C2: bin {} of core {} holds {} runs, more "
            "than its capacity {}",
            count, c, cores_[c].count[count], bin_capacity(count)));
      for (std::size_t i = 0; i < cores_[c].count[count]; ++i) {
        const auto& e = cores_[c].bin(count)[i];
        const auto addr = reinterpret_cast<std::uintptr_t>(e.run);
        const std::size_t ri = region_of(addr);
        if (ri == any_region)
          throw std::logic_error(fmt::format(
              "bsalloc::page_resource invariant broken: C1: cached run {} not in a region", e.run));
        const region& r = regions_[ri];
        const page_meta& m = r.meta[(addr - r.base) >> page_shift];
        if (&m != e.head || m.state != meta_allocated || !(m.flags & flag_run_head) ||
            run_mark(m.run) != run_cached || m.next != count)
          throw std::logic_error(fmt::format(
              "bsalloc::page_resource invariant broken: C1: cached run {} (bin {} of core {}) "
              "is not a live run of that count marked cached",
              e.run, count, c));
        if ((addr & ((page_size << run_order(count)) - 1)) != 0)
          throw std::logic_error(fmt::format(
              "bsalloc::page_resource invariant broken: C3: cached run {} of {} pages is not "
              "aligned to its buddy block ({} pages)",
              e.run, count, std::size_t{1} << run_order(count)));
        pages += count;
        ++heads;
      }
    }
    if (pages != cores_[c].pages.load(std::memory_order_relaxed) ||
        (pages << page_shift) > options_.cache_bytes_per_core)
      throw std::logic_error(fmt::format(
          "bsalloc::page_resource invariant broken: C2: core {} page count or bound wrong", c));
  }
  return heads;
}

std::vector<std::size_t> page_resource::core_cached_bytes() const {
  std::vector<std::size_t> v(core_count_);
  for (std::size_t c = 0; c < core_count_; ++c)
    v[c] = cores_[c].pages.load(std::memory_order_relaxed) << page_shift;
  return v;
}

}  // namespace bsalloc
