// SPDX-License-Identifier: Apache-2.0
#pragma once
// Parking (page_resource::park_tagged / unpark, page_resource.hpp) inline, and the tag check of
// slab_resource's large bins (src/slab/large.cpp). The public members call these; the page layer's
// invariants they keep are I11 (the run mark: live -> parked by one compare-and-swap, parked ->
// live by the parker alone) and I12 (the tag and the bytes asked, in the second page's metadata;
// the bytes stored before the tag).
#include <atomic>
#include <cassert>

#include "internal.hpp"

namespace bsalloc::detail {

struct page_parking {
  using meta = page_resource::page_meta;

  [[gnu::always_inline]] static bool park(page_resource& pr, void* p, std::uint32_t tag,
                                          page_resource::parked_run& out,
                                          std::size_t& bytes) noexcept {
    meta* m = pr.tag_slot(p);
    // Another resource's run (or an untagged one) is left alone: no claim, nothing changed.
    if (!m || tag == 0 || load_tag_field(m[1].prev) != tag) [[unlikely]]
      return false;
    // Claim the run (I11): of two frees of it racing, exactly one wins; the loser finds no
    // live run on whatever path it takes and throws naming p.
    if (!claim_run_mark(m->run, run_parked)) [[unlikely]]
      return false;
    const std::size_t count = m->next;
    bytes = (count << page_shift) - load_tag_field(m[1].next);
    out = page_resource::parked_run{p, m, count};
    return true;
  }

  [[gnu::always_inline]] static void unpark(const page_resource::parked_run& r, std::size_t bytes,
                                            std::uint32_t tag) noexcept {
    auto* m = static_cast<meta*>(r.meta);
    assert(run_mark(m->run) == run_parked && m->next == r.pages && bytes <= r.pages << page_shift);
    store_tag_field(m[1].next, static_cast<std::uint32_t>((r.pages << page_shift) - bytes));
    std::atomic_ref(m[1].prev).store(tag, std::memory_order_release);  // I12: bytes first
    set_run_mark(m->run, run_live);
  }

  /// The page count of the live run that starts at p, is tagged `tag` and records its whole
  /// bytes as asked (I12: no slack), else 0: what slab_resource's large bins check before they
  /// take a run in on a slow path (src/slab/large.cpp). Reads only; the run stays its user's.
  static std::size_t bin_run_pages(const page_resource& pr, const void* p,
                                   std::uint32_t tag) noexcept {
    const meta* m = pr.tag_slot(p);
    if (!m || tag == 0 || load_tag_field(m[1].prev) != tag || load_tag_field(m[1].next) != 0)
      return 0;
    return m->next;
  }
};

}  // namespace bsalloc::detail
