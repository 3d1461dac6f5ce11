// SPDX-License-Identifier: Apache-2.0
// Big runs placed over resident pages: take_span_locked, under the resource's mutex. A run above
// span_min_run_pages goes to the window of free pages, within a span of adjacent free blocks,
// that covers the most resident pages, at any page; the buddy core (buddy.cpp) places the rest.
// The run is the greedy decomposition of its pages into aligned blocks (I2, I8), as a run resized
// in place is.
#include "internal.hpp"
#include "memcheck.hpp"

namespace bsalloc {
using namespace detail;

bool page_resource::any_resident(const region& r, std::uint32_t index, std::uint32_t count) {
  for (const page_meta *m = r.meta + index, *end = m + count; m != end; ++m)
    if (m->flags & flag_resident) return true;
  return false;
}

bool page_resource::take_span_locked(std::size_t count, void*& out) {
  // A big run needs a free block of its buddy order, 2^run_order(count) pages, aligned to its
  // size: a 5 MiB buffer an 8 MiB block. The first such block with a resident page may hold few
  // (I7 says only "some"), and resident memory may sit in smaller blocks split apart by the
  // alignment alone: either way the run faults fresh pages while free resident ones stay unused,
  // and a program that rebuilds its big buffers creeps up in RSS round after round. Here the run
  // goes where it covers the most resident pages. Around each resident block, smallest orders
  // first, the span of adjacent free blocks that holds it is scored once, whole: a sliding window
  // of n pages over the resident bits, the first best window kept (or, for a span too long for
  // what the budget has left, the windows over that block only). More resident pages win, then
  // the smaller span (best fit: a run placed in a big free block would split what a later big
  // run needs). The run is carved there (its blocks its greedy decomposition, I2 and I8, as for
  // a run resized in place) if that saves at least an eighth of its pages from faulting;
  // otherwise the buddy path decides, as it does with no resident page anywhere. Bounded:
  // span_scan_steps block visits and span_scan_pages resident bits read.
  out = nullptr;
  if (count <= span_min_run_pages) return false;
  // Head index of the block holding page j: the first aligned-down candidate with a head state
  // (I1: the other pages of a block carry none).
  const auto block_head_of = [](const region& r, std::uint64_t base_pfn, std::uint32_t j) {
    for (unsigned k = 0; k <= max_order; ++k) {
      const std::uint64_t a = (base_pfn + j) & ~((std::uint64_t{1} << k) - 1);
      if (a < base_pfn) break;
      if (r.meta[a - base_pfn].state != meta_none) return static_cast<std::uint32_t>(a - base_pfn);
    }
    return j;  // not reached (I1)
  };
  const auto n = static_cast<std::uint32_t>(count);
  struct {
    std::size_t ri;
    std::uint32_t start, len, resident;
  } best{max_regions, 0, no_page, 0};
  std::size_t steps = span_scan_steps, looks = span_scan_pages;
  // The windows of n pages in free span [s, e) that overlap seed block [bs, be): the one with the
  // most resident pages, against the best so far.
  const auto consider = [&](const region& r, std::size_t ri, std::uint32_t s, std::uint32_t e,
                            std::uint32_t bs, std::uint32_t be) {
    const std::uint32_t lo = bs + 1 >= s + n ? bs + 1 - n : s;  // first start: q + n > bs
    const std::uint32_t hi = std::min(be - 1, e - n);           // last start: q < be
    if (lo > hi || looks < hi + n - lo) return;
    looks -= hi + n - lo;
    const auto res = [&r](std::uint32_t q) { return (r.meta[q].flags & flag_resident) ? 1u : 0u; };
    std::uint32_t cur = 0;
    for (std::uint32_t q = lo; q < lo + n; ++q) cur += res(q);
    std::uint32_t at = lo, most = cur;
    for (std::uint32_t q = lo + 1; q <= hi && most < n; ++q) {
      cur = cur + res(q + n - 1) - res(q - 1);
      if (cur > most) {
        most = cur;
        at = q;
      }
    }
    if (most > best.resident || (most == best.resident && e - s < best.len))
      best = {ri, at, e - s, most};
  };
  // Every page of the run resident, in a span of exactly n pages: nothing can be better.
  const auto perfect = [&] { return best.resident == n && best.len == n; };
  struct span {
    std::uint32_t s, e;
    bool scored;  // every window of it scored
  };
  for (std::size_t ri = 0; ri < max_regions && steps != 0; ++ri) {
    const region& r = regions_[ri];
    if (!r.in_use || !r.os_backed) continue;
    const std::uint64_t base_pfn = pfn(r.base);
    std::array<span, 16> walked{};  // spans found (many resident blocks share one): not again
    std::size_t nwalked = 0;
    for (unsigned o = span_min_order; o <= max_order && steps != 0 && !perfect(); ++o) {
      for (std::uint32_t i = r.free_head[o]; i != no_page && steps != 0; i = r.meta[i].next) {
        if (!(r.meta[i].flags & flag_dirty)) break;  // dirty blocks are in front (I3)
        --steps;
        const std::uint32_t be = i + (std::uint32_t{1} << o);
        span* sp = std::find_if(walked.begin(), walked.begin() + nwalked,
                                [i](const span& w) { return w.s <= i && i < w.e; });
        span found{i, be, false};
        if (sp == walked.begin() + nwalked) {
          while (found.s != 0 && steps != 0) {
            const std::uint32_t h = block_head_of(r, base_pfn, found.s - 1);
            if (r.meta[h].state != meta_free) break;
            found.s = h;
            --steps;
          }
          while (found.e < r.pages && r.meta[found.e].state == meta_free && steps != 0) {
            found.e += std::uint32_t{1} << r.meta[found.e].order;
            --steps;
          }
          if (nwalked < walked.size()) {
            walked[nwalked] = found;
            sp = &walked[nwalked++];
          } else {
            sp = &found;
          }
        }
        if (sp->scored || sp->e - sp->s < n) continue;
        if (sp->e - sp->s <= looks) {  // the whole span, once
          consider(r, ri, sp->s, sp->e, sp->s, sp->e);
          sp->scored = true;
        } else {  // too long for what the budget has left: the windows over this block
          consider(r, ri, sp->s, sp->e, i, be);
        }
        if (perfect()) break;
      }
    }
  }
  if (best.resident < n / 8) return false;  // n > 256: none resident is below it too
  region& r = regions_[best.ri];
  const std::uint64_t base_pfn = pfn(r.base);
  const std::uint32_t end = best.start + n;
  // The blocks the run covers leave the lists; their parts outside it go back in aligned pieces,
  // each with its own dirty hint (I7).
  const auto put_back = [&](std::uint32_t from, std::uint32_t to) {
    for_each_greedy_block(base_pfn, from, to, [&](std::uint32_t p, unsigned k) {
      push_free(r, p, k, any_resident(r, p, std::uint32_t{1} << k));
    });
  };
  for (std::uint32_t q = block_head_of(r, base_pfn, best.start); q < end;) {
    const unsigned k = r.meta[q].order;
    const std::uint32_t block_end = q + (std::uint32_t{1} << k);
    remove_free(r, q, k);
    put_back(q, std::max(q, best.start));
    put_back(std::max(end, q), block_end);
    q = block_end;
  }
  mark_run(r, best.start, n);
  allocated_pages_ += n;
  peak_allocated_pages_ = std::max(peak_allocated_pages_, allocated_pages_);
  ++span_runs_;
  out = memcheck_run_out(this, reinterpret_cast<void*>(page_addr(r, best.start)), n);
  return true;
}

}  // namespace bsalloc
