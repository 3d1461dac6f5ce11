// SPDX-License-Identifier: Apache-2.0
// Fuzz target: bsalloc::page_resource over a fixed buffer or over OS regions.
//
// The input picks the setup (fixed buffer with its offset and length, or OS regions with their
// options), then a sequence of operations: allocate runs (counts, alignments, constraints),
// free them, misuse (double free, wrong count, interior / unaligned / foreign pointers: each must
// throw std::invalid_argument and change nothing), add_region (disjoint, overlapping, too
// small), trim, release, find_block probes, in-place resizes (resize_pages: grow into free
// buddy pages, shrink). OS mode runs with or without the run cache, so runs freed into it (and
// resized ones) meet over-aligned requests. A shadow model checks alignment, no overlap, fill
// patterns intact (kept by a resize up to the smaller size), the stats against the model, and
// check_invariants() every 16 operations.
#include <bsalloc/page_resource.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace bsalloc_fuzz;
using bsalloc::page_size;

// Caller memory: the first 4 MiB for the constructor's buffer, then 24 slots of 512 KiB for
// add_region.
constexpr std::size_t arena_bytes = std::size_t{16} << 20;
constexpr std::size_t fixed_bytes = std::size_t{4} << 20;
constexpr std::size_t slot_bytes = std::size_t{512} << 10;
constexpr std::size_t slots = (arena_bytes - fixed_bytes) / slot_bytes;
alignas(4096) std::byte arena[arena_bytes];

struct span_rec {
  std::uintptr_t lo, hi;  // the whole pages the caller gave (metadata included)
  std::size_t index;      // add_region's answer
};

std::size_t whole_pages(std::uintptr_t b, std::uintptr_t e, std::uintptr_t& lo,
                        std::uintptr_t& hi) {
  lo = (b + page_size - 1) & ~(page_size - 1);
  hi = e & ~(page_size - 1);
  return hi > lo ? (hi - lo) / page_size : 0;
}

struct harness {
  FuzzedDataProvider& in;
  bsalloc::page_resource& res;
  bool os_mode;
  bool grows;
  shadow model;  // tag: page count as given to allocate_pages (0 kept as 0)
  std::vector<span_rec> spans;
  std::size_t allocated_pages = 0;
  std::vector<std::uintptr_t> freed;  // recently freed heads (double-free candidates)

  static std::size_t pages_of(std::size_t count) { return count ? count : 1; }

  void check_stats() {
    const auto s = res.stats();
    FUZZ_CHECK(s.allocated_bytes == allocated_pages * page_size,
               "allocated_bytes " + num(s.allocated_bytes) + " != model " +
                   num(allocated_pages * page_size));
    FUZZ_CHECK(s.peak_allocated_bytes >= s.allocated_bytes, "peak below allocated");
    FUZZ_CHECK(s.free_bytes + s.allocated_bytes + s.cached_bytes == s.managed_bytes,
               "free " + num(s.free_bytes) + " + allocated " + num(s.allocated_bytes) +
                   " + cached " + num(s.cached_bytes) + " != managed " + num(s.managed_bytes));
    FUZZ_CHECK(s.dirty_free_bytes <= s.free_bytes, "dirty above free");
    std::size_t free_pages = 0, total = 0, blocks_pages = 0;
    for (const auto& r : s.regions) {
      free_pages += r.free_pages;
      total += r.total_pages;
      FUZZ_CHECK(r.bytes == r.total_pages * page_size, "region bytes != pages");
    }
    for (unsigned k = 0; k <= bsalloc::max_order; ++k) blocks_pages += s.free_blocks[k] << k;
    FUZZ_CHECK(free_pages * page_size == s.free_bytes, "region free pages != free_bytes");
    FUZZ_CHECK(blocks_pages == free_pages,
               "free blocks hold " + num(blocks_pages) + " pages, regions say " + num(free_pages));
    FUZZ_CHECK(total * page_size == s.managed_bytes, "region pages != managed_bytes");
    // Every caller region is still managed.
    for (const auto& sp : spans) {
      bool found = false;
      for (const auto& r : s.regions)
        if (!r.os_backed && r.start >= sp.lo && r.start < sp.hi) found = true;
      FUZZ_CHECK(found, "caller region at " + hex(reinterpret_cast<void*>(sp.lo)) + " lost");
    }
    if (!os_mode) FUZZ_CHECK(s.os_mapped_bytes == 0 && s.os_maps == 0, "fixed mode mapped");
    try {
      res.check_invariants();
    } catch (const std::logic_error& e) {
      fail(std::string("check_invariants: ") + e.what());
    }
  }

  // Can a free block serve `order` with no constraint?
  bool could_serve(unsigned order) const {
    const auto s = res.stats();
    for (unsigned k = order; k <= bsalloc::max_order; ++k)
      if (s.free_blocks[k]) return true;
    return false;
  }

  // Can a free block serve `order` under a constraint: in the region whose pages lie in `span`
  // (any region if none), its lowest 2^order pages ending at or below `below`? Walks every block
  // of those regions with find_block.
  bool could_serve(unsigned order, std::uintptr_t below,
                   const std::optional<span_rec>& span) const {
    for (const auto& r : res.stats().regions) {
      if (span && (r.start < span->lo || r.start >= span->hi)) continue;
      for (std::uintptr_t q = r.start; q < r.start + r.bytes;) {
        const auto info = res.find_block(reinterpret_cast<void*>(q));
        FUZZ_CHECK(info.has_value(), "find_block found nothing inside a region");
        const auto head = reinterpret_cast<std::uintptr_t>(info->head);
        if (info->state == bsalloc::block_state::free && info->order >= order &&
            head + (page_size << order) <= below)
          return true;
        q = head + (page_size << info->order);
      }
    }
    return false;
  }

  void op_allocate(bool via_pmr) {
    std::size_t count;
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
      case 0:
        count = 0;
        break;
      case 1:
        count = in.ConsumeIntegralInRange<std::size_t>(17, 300);
        break;
      default:
        count = in.ConsumeIntegralInRange<std::size_t>(1, 16);
    }
    std::size_t alignment = in.ConsumeBool() ? page_size : pow2(in, 0, 22);
    bool bad_alignment = false;
    if (in.ConsumeIntegralInRange<int>(0, 31) == 0) {
      alignment = in.PickValueInArray<std::size_t>({0, 3, 12, 4097, 3 * page_size});
      bad_alignment = true;
    }
    bsalloc::page_constraint where;
    bool constrained = false, bad_region = false;
    std::optional<span_rec> in_span;
    if (!via_pmr && in.ConsumeIntegralInRange<int>(0, 7) == 0) {
      constrained = true;
      if (!spans.empty() && in.ConsumeBool()) {
        in_span = spans[in.ConsumeIntegralInRange<std::size_t>(0, spans.size() - 1)];
        where.region = in_span->index;
      } else if (in.ConsumeBool()) {
        where.region = in.ConsumeIntegralInRange<std::size_t>(0, 200);
        bad_region = true;  // maybe: checked against the outcome below
      }
      if (in.ConsumeBool()) {
        const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(arena);
        where.below = base + in.ConsumeIntegralInRange<std::size_t>(0, arena_bytes);
      }
    }
    const unsigned order = static_cast<unsigned>(std::max<int>(
        static_cast<int>(std::bit_width(pages_of(count) - 1)),
        std::countr_zero(std::max(alignment, page_size)) - static_cast<int>(bsalloc::page_shift)));
    const bool servable = could_serve(order);
    void* p = nullptr;
    try {
      if (via_pmr)
        p = res.allocate(count * page_size, alignment);
      else
        p = res.allocate_pages(count, alignment, where);
    } catch (const std::invalid_argument&) {
      FUZZ_CHECK(bad_alignment || bad_region, "allocate_pages(" + num(count) + ", " +
                                                  num(alignment) +
                                                  ") threw invalid_argument for a good request");
      return;
    } catch (const std::bad_alloc&) {
      FUZZ_CHECK(!bad_alignment,
                 "bad alignment " + num(alignment) + " gave bad_alloc, not invalid_argument");
      if (!constrained && !bad_alignment) {
        // Growing stops only at the region cap (max_regions, a documented limit).
        FUZZ_CHECK(!grows || res.stats().regions.size() == bsalloc::max_regions,
                   "OS mode that grows refused " + num(count) + " pages");
        FUZZ_CHECK(!servable, "bad_alloc for order " + num(order) + " with a free block to serve");
      } else if (constrained && !bad_region && !bad_alignment) {
        FUZZ_CHECK(!could_serve(order, where.below, in_span),
                   "constrained bad_alloc (order " + num(order) + ", below " +
                       hex(reinterpret_cast<void*>(where.below)) + ") with a free block to serve");
      }
      return;
    }
    FUZZ_CHECK(!bad_alignment, "alignment " + num(alignment) + " accepted");
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    // The memory_resource interface rounds counts above 16 pages to its size classes
    // (page_resource::class_pages); allocate_pages takes the count as given.
    const std::size_t pages =
        via_pmr ? bsalloc::page_resource::class_pages(pages_of(count)) : pages_of(count);
    if (in_span)
      FUZZ_CHECK(a >= in_span->lo && a + pages * page_size <= in_span->hi,
                 "constrained allocation " + hex(p) + " outside region " + num(in_span->index));
    if (constrained)
      FUZZ_CHECK(a + pages * page_size <= where.below,
                 hex(p) + "+" + num(pages) + " pages ends above " +
                     hex(reinterpret_cast<void*>(where.below)));
    const auto info = res.find_block(p);
    FUZZ_CHECK(info && info->head == p && info->state == bsalloc::block_state::allocated,
               "find_block(" + hex(p) + ") does not show an allocated head");
    model.add(p, pages * page_size, std::max(alignment, page_size),
              in.ConsumeIntegral<std::uint8_t>(), via_pmr ? pages : count);  // the run's pages
    allocated_pages += pages;
    freed.erase(std::remove(freed.begin(), freed.end(), a), freed.end());
  }

  void op_free(bool via_pmr) {
    if (model.empty()) return;
    auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    const std::uintptr_t a = it->first;
    const std::size_t count = it->second.tag;
    model.remove(a);
    // Through the memory_resource interface only when it names the run's exact count (a run of
    // allocate_pages whose count is no size class of the interface goes back as it came).
    if (bsalloc::page_resource::class_pages(pages_of(count)) != pages_of(count)) via_pmr = false;
    try {
      if (via_pmr)
        res.deallocate(reinterpret_cast<void*>(a), pages_of(count) * page_size, page_size);
      else
        res.deallocate_pages(reinterpret_cast<void*>(a), count);
    } catch (const std::exception& e) {
      fail(std::string("deallocate_pages of a live run threw: ") + e.what());
    }
    allocated_pages -= pages_of(count);
    freed.push_back(a);
    if (freed.size() > 16) freed.erase(freed.begin());
  }

  // Bad deallocate_pages calls: each must throw std::invalid_argument and change nothing.
  void op_misuse() {
    void* p = nullptr;
    std::size_t count = 1;
    const int kind = in.ConsumeIntegralInRange<int>(0, 5);
    if (kind == 0) {  // double free of a recently freed head, not handed out again
      if (freed.empty()) return;
      p = reinterpret_cast<void*>(
          freed[in.ConsumeIntegralInRange<std::size_t>(0, freed.size() - 1)]);
      count = in.ConsumeIntegralInRange<std::size_t>(1, 8);
      // A freed page that is now inside another live block would be an interior pointer: that
      // case is kind 2's. Only if no live block covers it.
      const auto q = reinterpret_cast<std::uintptr_t>(p);
      auto nx = model.blocks().upper_bound(q);
      if (nx != model.blocks().begin()) {
        auto pv = std::prev(nx);
        if (q < pv->first + pv->second.size) return;
      }
    } else if (kind == 5) {  // foreign pointer: outside every region
      static std::byte foreign[2 * page_size];
      p = foreign + (page_size - reinterpret_cast<std::uintptr_t>(foreign) % page_size);
    } else {
      if (model.empty()) return;
      auto it = model.pick(in.ConsumeIntegral<std::size_t>());
      const std::size_t pages = it->second.size / page_size;
      const std::size_t given = it->second.tag;
      auto* head = reinterpret_cast<std::byte*>(it->first);
      if (kind == 1) {  // wrong count
        count = in.ConsumeIntegralInRange<std::size_t>(0, pages + 8);
        if (pages_of(count) == pages_of(given)) count = pages + 1;
        p = head;
      } else if (kind == 2) {  // a page inside the run, the head of a later block of it too
        if (pages < 2) return;
        const std::size_t k = in.ConsumeIntegralInRange<std::size_t>(1, pages - 1);
        const auto info = res.find_block(head + k * page_size);
        FUZZ_CHECK(info.has_value(), "find_block of a live page found nothing");
        p = head + k * page_size;
        count = in.ConsumeIntegralInRange<std::size_t>(0, pages - k);
      } else if (kind == 3) {  // not page aligned
        p = head + in.ConsumeIntegralInRange<std::size_t>(1, page_size - 1);
        count = pages;
      } else {  // past the region's end
        p = head;
        count = in.ConsumeIntegralInRange<std::size_t>(std::size_t{1} << 21, std::size_t{1} << 30);
      }
    }
    const auto before = res.stats();
    bool threw = false;
    try {
      res.deallocate_pages(p, count);
    } catch (const std::invalid_argument& e) {
      threw = true;
      FUZZ_CHECK(std::string(e.what()).find(hex(p)) != std::string::npos,
                 std::string("message does not name the pointer: ") + e.what());
    }
    FUZZ_CHECK(threw, "misuse kind " + num(static_cast<std::size_t>(kind)) + ": deallocate_pages(" +
                          hex(p) + ", " + num(count) + ") was accepted");
    const auto after = res.stats();
    FUZZ_CHECK(after.allocated_bytes == before.allocated_bytes &&
                   after.free_bytes == before.free_bytes && after.free_blocks == before.free_blocks,
               "a rejected deallocate_pages changed the state");
  }

  void op_add_region() {
    const std::size_t slot = in.ConsumeIntegralInRange<std::size_t>(0, slots - 1);
    const bool spill = in.ConsumeIntegralInRange<int>(0, 5) == 0;  // may overlap the next slot
    auto* base = arena + fixed_bytes + slot * slot_bytes;
    const std::size_t off =
        in.ConsumeIntegralInRange<std::size_t>(0, spill ? slot_bytes : 3 * page_size);
    std::size_t len =
        in.ConsumeIntegralInRange<std::size_t>(0, slot_bytes - std::min(off, slot_bytes));
    if (spill) len = in.ConsumeIntegralInRange<std::size_t>(0, 2 * slot_bytes);
    if (base + off + len > arena + arena_bytes)
      len = static_cast<std::size_t>(arena + arena_bytes - (base + off));
    std::uintptr_t lo, hi;
    const auto b = reinterpret_cast<std::uintptr_t>(base + off);
    const std::size_t pages = whole_pages(b, b + len, lo, hi);
    bool overlaps = false;
    for (const auto& sp : spans)
      if (lo < sp.hi && sp.lo < hi) overlaps = true;
    const std::size_t regions_before = res.stats().regions.size();
    try {
      const std::size_t index = res.add_region({base + off, len});
      FUZZ_CHECK(pages >= 2, "add_region accepted " + num(pages) + " whole pages");
      // An overlap of the whole-page ranges may still be accepted if the region's metadata and
      // pages (its span) end before the other one; but not if the spans overlap: checked by
      // check_invariants and by the model (no overlapping blocks).
      spans.push_back({lo, hi, index});
      FUZZ_CHECK(res.stats().regions.size() == regions_before + 1, "region count did not grow");
    } catch (const std::invalid_argument& e) {
      FUZZ_CHECK(pages < 2 || overlaps, std::string("add_region of a disjoint region of ") +
                                            num(pages) + " pages refused: " + e.what());
    } catch (const std::length_error&) {
      FUZZ_CHECK(regions_before == bsalloc::max_regions, "length_error below max_regions");
    }
  }

  // resize_pages on a live run: grown in place (the pages after it must be free: the model's
  // no-overlap check sees a wrong grow) or shrunk; its contents up to the smaller size stay.
  void op_resize() {
    if (model.empty()) return;
    auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    const std::uintptr_t a = it->first;
    const live_block old = it->second;
    const std::size_t from = old.size / page_size;
    const std::size_t to = in.ConsumeBool() ? in.ConsumeIntegralInRange<std::size_t>(1, 80)
                                            : from + in.ConsumeIntegralInRange<std::size_t>(0, 3);
    model.remove(a);  // verifies the pattern
    bool done = false;
    try {
      done = res.resize_pages(reinterpret_cast<void*>(a), old.tag, to);
    } catch (const std::exception& e) {
      fail("resize_pages(" + hex(reinterpret_cast<void*>(a)) + ", " + num(old.tag) + ", " +
           num(to) + ") of a live run threw: " + e.what());
    }
    const std::size_t now = done ? to : from;
    const auto* b = reinterpret_cast<const std::uint8_t*>(a);
    for_checked_bytes(old.size, [&](std::size_t i) {
      if (i < now * page_size && b[i] != pattern_at(old.fill, i))
        fail("resize_pages " + hex(b) + " " + num(from) + " -> " + num(to) + " pages: byte " +
             num(i) + " not kept");
    });
    if (done) FUZZ_CHECK(res.usable_size(b) == now * page_size, "usable_size after a resize");
    model.add(reinterpret_cast<void*>(a), now * page_size, old.align, old.fill, now);
    allocated_pages = allocated_pages - from + now;
  }

  void op_trim() {
    const std::size_t given = res.trim();
    const auto s = res.stats();
    FUZZ_CHECK(s.dirty_free_bytes == 0, "dirty bytes left after trim: " + num(s.dirty_free_bytes));
    if (!os_mode) FUZZ_CHECK(given == 0, "trim of caller memory gave back " + num(given));
    for (const auto& r : s.regions)
      FUZZ_CHECK(!r.os_backed || r.free_pages != r.total_pages,
                 "a wholly free OS region survived trim");
  }

  void op_release() {
    res.release();
    model.forget_all();
    allocated_pages = 0;
    freed.clear();
    const auto s = res.stats();
    FUZZ_CHECK(s.allocated_bytes == 0 && s.free_bytes == s.managed_bytes,
               "release left allocations");
    FUZZ_CHECK(s.os_mapped_bytes == 0, "release left OS regions mapped");
    for (const auto& r : s.regions) FUZZ_CHECK(!r.os_backed, "an OS region survived release");
    FUZZ_CHECK(s.regions.size() == spans.size() + (os_mode ? 0 : 1),
               "caller regions lost in release");
  }

  void op_probe() {
    if (model.empty()) return;
    auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    const std::size_t pages = it->second.size / page_size;
    const std::size_t k = in.ConsumeIntegralInRange<std::size_t>(0, pages - 1);
    auto* q = reinterpret_cast<std::byte*>(it->first) + k * page_size +
              in.ConsumeIntegralInRange<std::size_t>(0, page_size - 1);
    const auto info = res.find_block(q);
    FUZZ_CHECK(info && info->state == bsalloc::block_state::allocated, "live page not allocated");
    const auto h = reinterpret_cast<std::uintptr_t>(info->head);
    FUZZ_CHECK(h >= it->first && h <= reinterpret_cast<std::uintptr_t>(q) &&
                   reinterpret_cast<std::uintptr_t>(q) < h + (page_size << info->order) &&
                   h + (page_size << info->order) <= it->first + it->second.size,
               "find_block(" + hex(q) + ") block outside the run");
    FUZZ_CHECK(res.owns(q), "owns() false for a live page");
  }

  void run() {
    std::size_t ops = 0;
    while (in.remaining_bytes() > 0 && ops < 2000) {
      switch (in.ConsumeIntegralInRange<int>(0, 15)) {
        case 0:
        case 1:
        case 2:
        case 3:
          op_allocate(false);
          break;
        case 4:
          op_allocate(true);
          break;
        case 5:
        case 6:
        case 7:
          op_free(false);
          break;
        case 8:
          op_free(true);
          break;
        case 9:
          op_misuse();
          break;
        case 10:
          op_add_region();
          break;
        case 11:
          op_probe();
          break;
        case 12:
          check_stats();
          break;
        case 13:
          switch (in.ConsumeIntegralInRange<int>(0, 3)) {
            case 0:
              model.verify_all();
              break;
            case 1:
              print_stats(res.stats());
              break;
            default:
              op_resize();
          }
          break;
        case 14:
          op_trim();
          break;
        case 15:
          if (in.ConsumeIntegralInRange<int>(0, 3) == 0) op_release();
          break;
      }
      if (++ops % 16 == 0) check_stats();
    }
    check_stats();
    model.verify_all();
    // Free everything; the regions must merge back whole.
    while (!model.empty()) {
      auto it = model.pick(0);
      const std::uintptr_t a = it->first;
      const std::size_t count = it->second.tag;
      model.remove(a);
      res.deallocate_pages(reinterpret_cast<void*>(a), count);
      allocated_pages -= pages_of(count);
    }
    res.flush_cache();  // cached runs merge back too
    check_stats();
    const auto s = res.stats();
    std::size_t blocks = 0, minimal = 0;
    for (auto n : s.free_blocks) blocks += n;
    for (const auto& reg : s.regions) {
      const std::uint64_t pfn = reg.start / page_size;
      for (std::size_t i = 0; i < reg.total_pages;) {
        unsigned k = 0;
        while (k < bsalloc::max_order && ((pfn + i) % (std::uint64_t{2} << k)) == 0 &&
               i + (std::size_t{2} << k) <= reg.total_pages)
          ++k;
        i += std::size_t{1} << k;
        ++minimal;
      }
    }
    FUZZ_CHECK(blocks == minimal, "everything freed but " + num(blocks) + " free blocks where " +
                                      num(minimal) + " would tile");
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const bool os_mode = in.ConsumeBool();
  if (os_mode) {
    bsalloc::page_resource_options o;
    o.os_region_bytes = pow2(in, 12, 22) + in.ConsumeIntegralInRange<std::size_t>(0, 3) * page_size;
    o.retain_bytes = in.ConsumeBool() ? 0 : pow2(in, 12, 24);
    o.purge_interval = std::chrono::milliseconds(in.ConsumeBool() ? 0 : 1000);
    o.grow_from_os = in.ConsumeIntegralInRange<int>(0, 7) != 0;
    o.cache_bytes_per_core = in.ConsumeBool() ? 0 : pow2(in, 15, 22);
    bsalloc::page_resource res(o);
    harness h{in, res, true, o.grow_from_os, {}, {}, 0, {}};
    h.run();
  } else {
    const std::size_t off = in.ConsumeIntegralInRange<std::size_t>(0, 2 * page_size);
    const std::size_t len =
        in.ConsumeIntegralInRange<std::size_t>(2 * page_size + page_size, fixed_bytes - off);
    bsalloc::page_resource res(std::span<std::byte>(arena + off, len));
    harness h{in, res, false, false, {}, {}, 0, {}};
    h.run();
  }
  return 0;
}
