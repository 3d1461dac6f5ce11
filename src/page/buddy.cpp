// SPDX-License-Identifier: Apache-2.0
// The buddy core: free lists, split, merge, and runs of blocks. Every function here runs with
// the resource's mutex held. Invariants I1–I8 (page_resource.hpp) are asserted inline in debug
// builds at the points that maintain them; check_invariants() walks all of them.
#include "internal.hpp"
#include "memcheck.hpp"

namespace bsalloc {
using namespace detail;

void page_resource::init_region(region& r) {
  r.free_head.fill(no_page);
  r.free_tail.fill(no_page);
  r.nonempty = 0;
  r.free_pages = 0;
  for_each_greedy_block(pfn(r.base), 0, r.pages,
                        [&](std::uint32_t i, unsigned k) { push_free(r, i, k, false); });
}

void page_resource::push_free(region& r, std::uint32_t index, unsigned order, bool dirty) {
  assert(((pfn(r.base) + index) & ((std::uint64_t{1} << order) - 1)) == 0);  // I2
  assert(index + (std::uint64_t{1} << order) <= r.pages);
  dirty = dirty && r.os_backed;  // only OS memory is ever purged
  page_meta& m = r.meta[index];
  const std::uint32_t head = r.free_head[order];
  const std::uint32_t tail = r.free_tail[order];
  const bool at_front = dirty || head == no_page;  // clean blocks go to the back (I3)
  set_meta(m, meta_free, order, (m.flags & flag_resident) | (dirty ? flag_dirty : 0), run_none,
           at_front ? no_page : tail, at_front ? head : no_page);
  if (at_front) {
    if (head != no_page)
      r.meta[head].prev = index;
    else
      r.free_tail[order] = index;
    r.free_head[order] = index;
  } else {
    r.meta[tail].next = index;
    r.free_tail[order] = index;
  }
  r.nonempty |= 1u << order;
  r.free_pages += 1u << order;
}

void page_resource::remove_free(region& r, std::uint32_t index, unsigned order) {
  page_meta& m = r.meta[index];
  assert(m.state == meta_free && m.order == order);  // I3
  if (m.prev != no_page)
    r.meta[m.prev].next = m.next;
  else
    r.free_head[order] = m.next;
  if (m.next != no_page)
    r.meta[m.next].prev = m.prev;
  else
    r.free_tail[order] = m.prev;
  if (r.free_head[order] == no_page) r.nonempty &= ~(1u << order);
  r.free_pages -= 1u << order;
  set_meta(m, meta_none, 0, m.flags & flag_resident, run_none, no_page, no_page);
}

void page_resource::free_block(region& r, std::uint32_t index, unsigned order, bool dirty) {
  const std::uint64_t base_pfn = pfn(r.base);
  while (order < max_order) {
    const std::uint64_t buddy_abs = (base_pfn + index) ^ (std::uint64_t{1} << order);
    if (buddy_abs < base_pfn) break;
    const std::uint64_t buddy = buddy_abs - base_pfn;
    if (buddy + (std::uint64_t{1} << order) > r.pages) break;
    const page_meta& bm = r.meta[buddy];
    if (bm.state != meta_free || bm.order != order) break;
    dirty = dirty || (bm.flags & flag_dirty);
    remove_free(r, static_cast<std::uint32_t>(buddy), order);
    const auto upper = std::max<std::uint32_t>(index, static_cast<std::uint32_t>(buddy));
    set_meta(r.meta[upper], meta_none, 0, r.meta[upper].flags & flag_resident, run_none, no_page,
             no_page);
    index = std::min<std::uint32_t>(index, static_cast<std::uint32_t>(buddy));
    ++order;
  }
  push_free(r, index, order, dirty);
}

bool page_resource::take_from_region(std::size_t ri, unsigned order, std::uintptr_t below,
                                     std::uint32_t& index, bool& dirty) {
  region& r = regions_[ri];
  const std::uint32_t mask = r.nonempty & ~((1u << order) - 1);
  if (mask == 0) return false;
  // Small runs (slabs) stay out of the big blocks that big runs need: the smallest free block
  // below small_area_order, resident first; failing that, the lowest-addressed bigger block, so
  // that small runs pack at the low end of a region and freed big runs merge again.
  const std::uint32_t small = order <= small_run_order ? mask & ((1u << small_area_order) - 1) : 0;
  const std::uint32_t pick = small != 0 ? small : mask;
  unsigned j = static_cast<unsigned>(std::countr_zero(pick));
  if (r.os_backed && dirty_free_pages_ != 0) {
    // Resident pages first, across orders too: the smallest order whose front block is dirty
    // (lists keep dirty blocks in front, I3) beats a smaller clean block that would fault.
    for (std::uint32_t m = pick; m != 0; m &= m - 1) {
      const auto t = static_cast<unsigned>(std::countr_zero(m));
      if (r.meta[r.free_head[t]].flags & flag_dirty) {
        j = t;
        break;
      }
    }
  }
  std::uint32_t i = r.free_head[j];
  if (order <= small_run_order && small == 0) {
    std::size_t budget = small_run_scan;  // bounded: the lowest address among the first blocks
    i = no_page;
    for (std::uint32_t m = mask; m != 0 && budget != 0; m &= m - 1) {
      const auto t = static_cast<unsigned>(std::countr_zero(m));
      for (std::uint32_t c = r.free_head[t]; c != no_page && budget != 0; c = r.meta[c].next) {
        --budget;
        if (c < i) {
          i = c;
          j = t;
        }
      }
    }
  }
  if (below != std::numeric_limits<std::uintptr_t>::max()) {
    // Constrained: the first block whose lowest 2^order pages end at or below `below`.
    const std::uintptr_t need = page_size << order;
    if (r.base >= below || below - r.base < need) return false;
    i = no_page;
    for (j = order; j <= max_order && i == no_page; ++j) {
      for (std::uint32_t c = r.free_head[j]; c != no_page; c = r.meta[c].next) {
        if (page_addr(r, c) + need <= below) {
          i = c;
          break;
        }
      }
    }
    if (i == no_page) return false;
    --j;
  }
  dirty = r.meta[i].flags & flag_dirty;
  remove_free(r, i, j);
  while (j > order) {  // split, keeping the lower half
    --j;
    push_free(r, i + (std::uint32_t{1} << j), j, dirty);
  }
  index = i;
  return true;
}

void page_resource::mark_run(region& r, std::uint32_t head, std::uint32_t count) {
  // [head, head + count) becomes one allocated run: the greedy decomposition into aligned
  // blocks (I2), each recording the run head (I8), the head also the count.
  for (std::uint32_t p = 0; p < count;) {
    const unsigned k = greedy_order(pfn(r.base) + head + p, count - p);
    const std::uint32_t next = p + (std::uint32_t{1} << k);
    page_meta& m = r.meta[head + p];
    const auto flags = (m.flags & flag_resident) | (next < count ? flag_continued : 0) |
                       (p == 0 ? flag_run_head : 0);
    set_meta(m, meta_allocated, k, flags, p == 0 ? run_live : run_none, head, p == 0 ? count : 0);
    p = next;
  }
  if (count > 1 && r.meta[head].order != 0)  // I12: a new run starts untagged
    std::atomic_ref(r.meta[head + 1].prev).store(0, std::memory_order_relaxed);
  if (r.os_backed) {  // resident free pages become allocated pages (counted again when freed)
    // Branch-free (a page's residency is random to the branch predictor), four pages a step:
    // the sum of the masked flags is 4 x the resident pages.
    std::uint32_t resident = 0;
    page_meta* m = r.meta + head;
    page_meta* const end = m + count;
    constexpr auto keep = static_cast<std::uint8_t>(~flag_resident);
    for (; end - m >= 4; m += 4) {
      const std::uint8_t f0 = m[0].flags, f1 = m[1].flags, f2 = m[2].flags, f3 = m[3].flags;
      resident += static_cast<std::uint32_t>((f0 & flag_resident) + (f1 & flag_resident) +
                                             (f2 & flag_resident) + (f3 & flag_resident));
      m[0].flags = static_cast<std::uint8_t>(f0 & keep);
      m[1].flags = static_cast<std::uint8_t>(f1 & keep);
      m[2].flags = static_cast<std::uint8_t>(f2 & keep);
      m[3].flags = static_cast<std::uint8_t>(f3 & keep);
    }
    for (; m != end; ++m) {
      resident += static_cast<std::uint32_t>(m->flags & flag_resident);
      m->flags &= keep;
    }
    resident /= flag_resident;
    assert(resident <= dirty_free_pages_);
    dirty_free_pages_ -= resident;
  }
}

void page_resource::unmark_run(region& r, std::uint32_t head, std::uint32_t count) {
  for (std::uint32_t p = 0; p < count;) {
    page_meta& m = r.meta[head + p];
    assert(m.state == meta_allocated && m.prev == head);  // I8
    const std::uint32_t size = std::uint32_t{1} << m.order;
    set_meta(m, meta_none, 0, m.flags & flag_resident, run_none, no_page, no_page);
    p += size;
  }
}

void page_resource::free_range(region& r, std::uint32_t from, std::uint32_t to) {
  // Pages [from, to), not in any block (no head state), go back to the free lists, merging.
  if (r.os_backed) {  // freed pages may be resident: they count until purged
    // Allocated pages carry no resident bit (I6: mark_run cleared it), so every page is fresh.
    for (page_meta *m = r.meta + from, *end = r.meta + to; m != end; ++m) {
      assert(!(m->flags & flag_resident));
      m->flags |= flag_resident;
    }
    dirty_free_pages_ += to - from;
  }
  for_each_greedy_block(pfn(r.base), from, to,
                        [&](std::uint32_t q, unsigned k) { free_block(r, q, k, true); });
}

void page_resource::carve_run(region& r, std::uint32_t head, std::uint32_t count, unsigned order,
                              bool dirty) {
  // [0, count): the run; [count, 2^order): back to the free lists. The block at `head` is
  // aligned to 2^order, so relative alignment is absolute alignment.
  const std::uint32_t size = std::uint32_t{1} << order;
  mark_run(r, head, count);
  for (std::uint32_t p = count; p < size;) {
    const unsigned k = greedy_order(p, size - p);
    push_free(r, head + p, k, dirty);  // the taken block's hint: clean stays clean
    p += std::uint32_t{1} << k;
  }
  allocated_pages_ += count;
  peak_allocated_pages_ = std::max(peak_allocated_pages_, allocated_pages_);
}

void* page_resource::try_allocate_locked(std::size_t count, unsigned order, page_constraint where) {
  std::uint32_t index = 0;
  bool dirty = false;
  for (std::size_t ri = 0; ri < max_regions; ++ri) {
    if (!regions_[ri].in_use) continue;
    if (where.region != any_region && where.region != ri) continue;
    if (take_from_region(ri, order, where.below, index, dirty)) {
      region& r = regions_[ri];
      carve_run(r, index, static_cast<std::uint32_t>(count), order, dirty);
      return memcheck_run_out(this, reinterpret_cast<void*>(page_addr(r, index)), count);
    }
  }
  return nullptr;
}

void page_resource::claim_run(region& r, std::uint32_t head, const void* p, std::size_t count,
                              const char* what) {
  // checked_run saw the mark live, but a free on the cache path (no lock) may have won since.
  if (!claim_run_mark(r.meta[head].run, run_none))
    throw_bad_pointer(what, p, count, "the run was already freed (double free)");
}

void page_resource::free_run_locked(region& r, std::uint32_t index, std::uint32_t count) {
  memcheck_run_in(this, reinterpret_cast<const void*>(page_addr(r, index)));
  unmark_run(r, index, count);
  free_range(r, index, index + count);
  allocated_pages_ -= count;
}

bool page_resource::resize_pages(void* p, std::size_t old_count, std::size_t new_count) {
  if (old_count == 0) old_count = 1;
  if (new_count == 0) new_count = 1;
  std::lock_guard lock(mutex_);
  std::size_t ri;
  const std::uint32_t head =
      checked_run(reinterpret_cast<std::uintptr_t>(p), old_count, ri, "resize_pages");
  region& r = regions_[ri];
  const auto old_n = static_cast<std::uint32_t>(old_count);
  if (new_count == old_count) return true;
  if (new_count < old_count) {  // give the tail back
    const auto new_n = static_cast<std::uint32_t>(new_count);
    claim_run(r, head, p, old_count, "resize_pages");
    unmark_run(r, head, old_n);
    mark_run(r, head, new_n);
    free_range(r, head + new_n, head + old_n);
    allocated_pages_ -= old_n - new_n;
    memcheck_run_resized(this, p, old_n, new_n);
    return true;
  }
  if (new_count > r.pages - head) return false;
  const auto new_n = static_cast<std::uint32_t>(new_count);
  // Every page of [old, new) must lie in a free block; collect those blocks first.
  std::array<std::pair<std::uint32_t, unsigned>, 2 * (max_order + 1)> blocks;
  std::size_t n = 0;
  for (std::uint32_t q = head + old_n; q < head + new_n;) {
    const auto b = find_block_locked(reinterpret_cast<const void*>(page_addr(r, q)));
    if (!b || b->state != block_state::free || n == blocks.size()) return false;
    const auto bi = static_cast<std::uint32_t>(
        (reinterpret_cast<std::uintptr_t>(b->head) - r.base) >> page_shift);
    blocks[n++] = {bi, b->order};
    q = bi + (std::uint32_t{1} << b->order);
  }
  claim_run(r, head, p, old_count, "resize_pages");
  for (std::size_t i = 0; i < n; ++i) {
    const auto [bi, k] = blocks[i];
    const bool dirty = r.meta[bi].flags & flag_dirty;
    remove_free(r, bi, k);
    // The parts of the block outside [old, new) go back, in aligned pieces.
    const std::uint32_t lo = std::max(bi, head + old_n);
    const std::uint32_t hi = std::min(bi + (std::uint32_t{1} << k), head + new_n);
    for (auto [from, to] : {std::pair{bi, lo}, std::pair{hi, bi + (std::uint32_t{1} << k)}})
      for_each_greedy_block(pfn(r.base), from, to,
                            [&](std::uint32_t q, unsigned kk) { push_free(r, q, kk, dirty); });
  }
  unmark_run(r, head, old_n);
  mark_run(r, head, new_n);
  allocated_pages_ += new_n - old_n;
  peak_allocated_pages_ = std::max(peak_allocated_pages_, allocated_pages_);
  memcheck_run_resized(this, p, old_n, new_n);
  return true;
}

}  // namespace bsalloc
