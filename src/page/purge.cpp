// SPDX-License-Identifier: Apache-2.0
// Giving memory back: the purge policy (rate-limited MADV_DONTNEED of free resident pages),
// trim(), release(), and the opt-in background purger.
//
// Policy: retained = free resident pages + run-cache pages. Above retain_bytes, a deallocation
// that reaches the buddy lock purges down to retain_bytes / 2, at most once per purge_interval,
// or at once above 4 x retain_bytes. The purge takes its victims (largest free blocks first;
// among blocks of one order, oldest freed first) out of
// the free lists under the lock, madvises them without it, and puts them back under it; at
// most one purge runs at a time (purge_running_), and release() / the destructor wait for it.
#include "internal.hpp"
#include "memcheck.hpp"

namespace bsalloc {
using namespace detail;

bool page_resource::should_purge_locked() {
  if (purge_running_) return false;
  const std::size_t retained = (dirty_free_pages_ + cached_pages()) << page_shift;
  if (retained <= options_.retain_bytes) return false;
  // Rate-limited: memory freed and reused within purge_interval is not purged and faulted in
  // again; beyond 4 x retain_bytes it is purged at once, which bounds RSS.
  const auto now = std::chrono::steady_clock::now();
  if (retained <= 4 * options_.retain_bytes && now - last_purge_ < options_.purge_interval)
    return false;
  last_purge_ = now;
  return true;
}

unsigned page_resource::policy_min_order() const noexcept {
  // With huge pages, the policy leaves free blocks smaller than a huge page resident: purging
  // them would split a huge page to save a few KiB. trim() purges every size.
  return options_.huge_pages ? 9 : 0;
}

std::size_t page_resource::purge(std::size_t keep_bytes, unsigned min_block_order) {
  if (cores_ && cached_pages() != 0) drain_caches(true);
  const int min_order = static_cast<int>(min_block_order);
  std::size_t total = 0;
  for (bool more = true; more;) {
    std::size_t n = 0;
    {
      std::lock_guard lock(mutex_);
      if (purge_running_) return total;
      for (int order = max_order; order >= min_order && n < victims_.size(); --order) {
        for (std::size_t ri = 0; ri < max_regions && n < victims_.size(); ++ri) {
          region& r = regions_[ri];
          if (!r.in_use || !r.os_backed) continue;
          // Oldest first: walk from the back, past the clean blocks, to the dirty blocks freed
          // longest ago; the front holds the ones freed last, likely to be reused soon.
          for (std::uint32_t i = r.free_tail[order]; i != no_page && n < victims_.size();) {
            const std::uint32_t next = r.meta[i].prev;
            if ((dirty_free_pages_ << page_shift) <= keep_bytes) break;
            if (r.meta[i].flags & flag_dirty) {
              // Find and clear the resident pages; the madvise covers their span only.
              const std::uint32_t size = std::uint32_t{1} << order;
              std::uint32_t lo = size, hi = 0;
              for (std::uint32_t q = 0; q < size; ++q) {
                page_meta& pm = r.meta[i + q];
                if (!(pm.flags & flag_resident)) continue;
                pm.flags &= static_cast<std::uint8_t>(~flag_resident);
                --dirty_free_pages_;
                lo = std::min(lo, q);
                hi = q + 1;
              }
              remove_free(r, i, static_cast<unsigned>(order));
              if (hi <= lo) {  // nothing resident after all: clean, so it moves to the back
                push_free(r, i, static_cast<unsigned>(order), false);
              } else {
                set_meta(r.meta[i], meta_purging, static_cast<unsigned>(order), 0, run_none,
                         no_page, no_page);
                purging_pages_ += size;
                victim_spans_[n] = {lo, hi};
                victims_[n++] = {ri, i, static_cast<unsigned>(order)};
              }
            }
            i = next;
          }
        }
      }
      if (n == 0) return total;
      victim_count_ = n;
      purge_running_ = true;
      more = n == victims_.size();
    }
    std::array<bool, 64> ok{};
    for (std::size_t v = 0; v < n; ++v) {
      const region& r = regions_[victims_[v].region];  // release() waits: regions stay
      const std::size_t len = std::size_t{victim_spans_[v].second - victim_spans_[v].first}
                              << page_shift;
      ok[v] = os_purge(
          reinterpret_cast<void*>(page_addr(r, victims_[v].index + victim_spans_[v].first)), len);
    }
    {
      std::lock_guard lock(mutex_);
      for (std::size_t v = 0; v < n; ++v) {
        region& r = regions_[victims_[v].region];
        const auto [index, order] = std::pair{victims_[v].index, victims_[v].order};
        r.meta[index].state = meta_none;
        purging_pages_ -= std::size_t{1} << order;
        if (ok[v]) {
          const std::size_t len = std::size_t{victim_spans_[v].second - victim_spans_[v].first}
                                  << page_shift;
          purged_bytes_ += len;
          total += len;
          free_block(r, index, order, false);
        } else {  // the pages stay resident: mark the span so again, and keep the block dirty
          for (std::uint32_t q = victim_spans_[v].first; q < victim_spans_[v].second; ++q) {
            r.meta[index + q].flags |= flag_resident;
            ++dirty_free_pages_;
          }
          free_block(r, index, order, true);
          more = false;  // the OS refuses: do not spin on it
        }
      }
      victim_count_ = 0;
      purge_running_ = false;
    }
    purge_done_.notify_all();
  }
  return total;
}

std::size_t page_resource::trim() {
  const std::size_t purged = purge(0, 0);
  std::lock_guard lock(mutex_);
  if (purge_running_) return purged;  // another thread purges: leave the regions mapped
  for (std::size_t ri = 0; ri < max_regions; ++ri) {
    region& r = regions_[ri];
    if (!r.in_use || !r.os_backed || r.free_pages != r.pages) continue;
    std::size_t resident = 0;
    for (std::uint32_t q = 0; q < r.pages; ++q)
      if (r.meta[q].flags & flag_resident) ++resident;
    // Out of the page map before the munmap: once unmapped, the address range may be mapped
    // again at once by another resource, whose entries must not be cleared by ours.
    page_map_clear(r.span_begin, r.span_end);
    region copy = r;
    if (!unmap_region(copy)) {  // the OS refused: the region stays, intact
      page_map_record(r.span_begin, r.span_end, r.base, r.pages, this, ri);  // leaves exist
      continue;
    }
    dirty_free_pages_ -= resident;
    os_mapped_bytes_ -= r.os_map_bytes;
    ++os_unmaps_;
    remove_region(ri, false);
  }
  return purged;
}

void page_resource::release() {
  std::array<region, max_regions> doomed;
  std::size_t n = 0;
  {
    std::unique_lock lock(mutex_);
    purge_done_.wait(lock, [&] { return !purge_running_; });  // regions stay while it madvises
    for (std::size_t c = 0; c < core_count_; ++c) clear_core(c);
    for (std::size_t ri = 0; ri < max_regions; ++ri) {
      region& r = regions_[ri];
      if (!r.in_use) continue;
      if (r.os_backed) {
        os_mapped_bytes_ -= r.os_map_bytes;
        ++os_unmaps_;
        doomed[n++] = r;
        remove_region(ri);
        continue;
      }
      memcheck_region_gone(this, r, true);
      std::memset(r.meta, 0, std::size_t{r.pages} * sizeof(page_meta));
      init_region(r);
    }
    allocated_pages_ = 0;
    dirty_free_pages_ = 0;
    purging_pages_ = 0;
  }
  for (std::size_t i = 0; i < n; ++i) unmap_region(doomed[i]);  // a failure leaks, no more
}

// ---------------------------------------------------------------------------------------------
// Background purger
// ---------------------------------------------------------------------------------------------

void page_resource::start_purger() {
  purger_ = std::make_unique<purger_state>();
  purger_->thread = std::thread([this] { purger_loop(); });
}

void page_resource::stop_purger() noexcept {
  if (!purger_) return;
  {
    std::lock_guard lock(purger_->mutex);
    purger_->stop = true;
  }
  purger_->wake.notify_all();
  if (purger_->thread.joinable()) purger_->thread.join();
  purger_.reset();
}

void page_resource::purger_loop() {
  // Each tick: the rate policy; and when nothing changed since the previous tick (the process
  // is idle), everything freed goes back: within about 2 x purge_interval of going idle.
  const auto interval = std::max(options_.purge_interval, std::chrono::milliseconds{1});
  std::array<std::size_t, 3> last{~std::size_t{0}, 0, 0};
  std::unique_lock lock(purger_->mutex);
  while (!purger_->wake.wait_for(lock, interval, [&] { return purger_->stop; })) {
    lock.unlock();
    std::array<std::size_t, 3> now;
    std::size_t retained;
    {
      std::lock_guard l(mutex_);
      now = {allocated_pages_, dirty_free_pages_, cached_pages()};
      retained = (now[1] + now[2]) << page_shift;
    }
    if (retained != 0 && now == last)
      purge(0, policy_min_order());
    else if (retained > options_.retain_bytes)
      purge(options_.retain_bytes / 2, policy_min_order());
    last = now;
    lock.lock();
  }
}

}  // namespace bsalloc
