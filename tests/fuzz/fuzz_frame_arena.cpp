// SPDX-License-Identifier: Apache-2.0
// Fuzz target: bsalloc::frame_arena over an upstream (the global page_resource, or a
// page_resource over a fixed buffer, behind a checking upstream that can fail on the calls the
// input chooses), or a fixed arena over a caller's buffer; chunk sizes, debug fills and names
// chosen by the input. Operations: allocate (any size, power-of-two alignments up to 64 KiB,
// now and then a bad alignment or a size no arena holds), deallocate of the most recent block
// (given back) or of any other (a no-op), mark / rewind (markers kept on a stack), rewind to a
// stale marker or another arena's (std::invalid_argument, nothing changed), reset, release,
// stats. A shadow model checks alignment, no overlap, fill patterns of every live block, the
// arena's byte counts (used, peak, capacity) against it, every live block inside the arena's
// used ranges, and check_invariants() every 16 operations; at the end every chunk must be back
// upstream.
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/page_resource.hpp>

#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace bsalloc_fuzz;

alignas(4096) std::byte buffer[std::size_t{8} << 20];

struct mark_entry {
  bsalloc::frame_arena::marker m;
  std::size_t seq;  // blocks with a larger sequence number were allocated after it
};

struct harness {
  FuzzedDataProvider& in;
  bsalloc::frame_arena& arena;
  bsalloc::frame_arena& other;  // another arena: its markers must be refused
  checking_upstream* up;        // nullptr for a fixed arena
  shadow model;                 // tag: sequence number
  std::vector<mark_entry> marks;
  std::optional<bsalloc::frame_arena::marker> stale;  // from before the last reset / release
  std::size_t seq = 0;
  std::size_t peak = 0;  // highest used_bytes seen by the model

  void check_stats() {
    const auto s = arena.stats();
    const std::size_t used = arena.used_bytes();
    FUZZ_CHECK(s.used_bytes == used, "stats().used_bytes != used_bytes()");
    FUZZ_CHECK(used >= model.bytes(),
               "used " + num(used) + " below the live blocks' " + num(model.bytes()));
    FUZZ_CHECK(used <= s.capacity_bytes, "used above capacity");
    peak = std::max(peak, used);
    FUZZ_CHECK(s.peak_bytes >= peak, "peak " + num(s.peak_bytes) + " below " + num(peak));
    FUZZ_CHECK(s.fixed == (up == nullptr), "stats().fixed wrong");
    if (s.fixed) FUZZ_CHECK(s.chunks <= 1, "a fixed arena with more than one chunk");
    if (up != nullptr)
      FUZZ_CHECK(up->live_count() == s.chunks,
                 "upstream holds " + num(up->live_count()) + " blocks, arena " + num(s.chunks));
    // Every live block lies in one used range.
    std::vector<std::pair<const std::byte*, std::size_t>> ranges;
    arena.for_each_used([&](const std::byte* b, std::size_t n) { ranges.emplace_back(b, n); });
    std::size_t total = 0;
    for (const auto& [b, n] : ranges) total += n;
    FUZZ_CHECK(total == used, "used ranges add up to " + num(total) + ", not " + num(used));
    for (const auto& [a, lb] : model.blocks()) {
      const auto* p = reinterpret_cast<const std::byte*>(a);
      bool inside = false;
      for (const auto& [b, n] : ranges) inside = inside || (p >= b && p + lb.size <= b + n);
      FUZZ_CHECK(inside, "live block " + hex(p) + " outside every used range");
    }
    try {
      arena.check_invariants();
    } catch (const std::logic_error& e) {
      fail(std::string("check_invariants: ") + e.what());
    }
  }

  std::size_t size() {
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
      case 0:
        return 0;
      case 1:
        return in.ConsumeIntegralInRange<std::size_t>(4096, std::size_t{1} << 20);
      case 2:
        return in.ConsumeIntegralInRange<std::size_t>(257, 4096);
      default:
        return in.ConsumeIntegralInRange<std::size_t>(1, 256);
    }
  }

  void op_allocate() {
    std::size_t bytes = size();
    std::size_t align = in.ConsumeBool() ? 8 : pow2(in, 0, 16);
    const int odd = in.ConsumeIntegralInRange<int>(0, 31);
    const bool bad_align = odd == 0;
    if (bad_align) align = in.PickValueInArray({std::size_t{0}, std::size_t{3}, std::size_t{48}});
    if (odd == 1) bytes = SIZE_MAX - in.ConsumeIntegralInRange<std::size_t>(0, 4096);
    if (odd == 2) align = std::size_t{1} << in.ConsumeIntegralInRange<unsigned>(40, 63);
    const std::size_t used = arena.used_bytes();
    const std::size_t failures = up ? up->failures() : 0;
    void* p = nullptr;
    try {
      p = arena.allocate(bytes, align);
    } catch (const std::invalid_argument&) {
      FUZZ_CHECK(bad_align, "invalid_argument for alignment " + num(align));
      FUZZ_CHECK(arena.used_bytes() == used, "a refused request changed used_bytes");
      return;
    } catch (const std::bad_alloc&) {
      FUZZ_CHECK(!bad_align, "bad_alloc for a bad alignment " + num(align));
      // Why: an upstream refusal, a fixed arena full, or a request no arena holds.
      const bool explained = (up && up->failures() > failures) || up == nullptr ||
                             bytes > (std::size_t{1} << 40) || align > (std::size_t{1} << 30);
      FUZZ_CHECK(explained, "unexplained bad_alloc for " + num(bytes) + ", " + num(align));
      FUZZ_CHECK(arena.used_bytes() == used, "a failed request changed used_bytes");
      return;
    }
    FUZZ_CHECK(!bad_align, "alignment " + num(align) + " accepted");
    FUZZ_CHECK(bytes < (std::size_t{1} << 40), "a request of " + num(bytes) + " bytes served");
    if (bytes == 0) {  // valid and aligned; the next allocation may start at the same byte
      FUZZ_CHECK(p != nullptr && reinterpret_cast<std::uintptr_t>(p) % align == 0,
                 "allocate(0, " + num(align) + ") gave " + hex(p));
      return;
    }
    model.add(p, bytes, align, in.ConsumeIntegral<std::uint8_t>(), ++seq);
  }

  void op_deallocate() {
    if (model.empty()) return;
    const auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    const std::uintptr_t a = it->first;
    const live_block lb = model.remove(a);
    const auto pos = reinterpret_cast<std::uintptr_t>(arena.mark().pos);
    const std::size_t used = arena.used_bytes();
    // A block that ends where the arena's position is (the most recent one) is given back.
    const bool last = lb.size != 0 && a + lb.size == pos;
    arena.deallocate(reinterpret_cast<void*>(a), lb.size, lb.align);
    if (last) {
      // Markers taken after this block now lie past the position: drop them (rewinding to one
      // after allocating past it again is the undetected stale case the header describes).
      while (!marks.empty() && marks.back().seq >= lb.tag) marks.pop_back();
      FUZZ_CHECK(arena.used_bytes() == used - lb.size, "the last block's bytes not given back");
      FUZZ_CHECK(reinterpret_cast<std::uintptr_t>(arena.mark().pos) == a,
                 "position not back at the block given back");
    } else if (lb.size != 0) {
      FUZZ_CHECK(arena.used_bytes() == used, "deallocate of a block not the last changed used");
    }
  }

  void op_mark() {
    if (marks.size() < 32) marks.push_back({arena.mark(), seq});
  }

  void op_rewind() {
    if (marks.empty()) return;
    const std::size_t i = in.ConsumeIntegralInRange<std::size_t>(0, marks.size() - 1);
    const mark_entry e = marks[i];
    marks.resize(i + 1);  // markers taken after it describe positions rewound
    std::vector<std::uintptr_t> gone;
    for (const auto& [a, lb] : model.blocks())
      if (lb.tag > e.seq) gone.push_back(a);
    for (std::uintptr_t a : gone) model.remove(a);
    arena.rewind(e.m);
    FUZZ_CHECK(arena.used_bytes() == e.m.used,
               "rewind: used " + num(arena.used_bytes()) + " != marker's " + num(e.m.used));
    model.verify_all();  // what was allocated before the marker is intact
  }

  // A marker the arena must refuse, changing nothing.
  void op_bad_rewind() {
    std::optional<bsalloc::frame_arena::marker> m;
    if (in.ConsumeBool()) {
      m = other.mark();
    } else {
      m = stale;
    }
    if (!m) return;
    const std::size_t used = arena.used_bytes();
    bool refused = false;
    try {
      arena.rewind(*m);
    } catch (const std::invalid_argument&) {
      refused = true;
    }
    FUZZ_CHECK(refused, "rewind to another arena's or a stale marker accepted");
    FUZZ_CHECK(arena.used_bytes() == used, "a refused rewind changed used_bytes");
  }

  void op_reset(bool release) {
    stale = arena.mark();
    model.verify_all();
    model.forget_all();
    marks.clear();
    const std::size_t chunks = arena.stats().chunks;
    if (release) {
      arena.release();
      if (up) FUZZ_CHECK(up->live_count() == 0, "release() kept chunks upstream");
    } else {
      arena.reset();
      FUZZ_CHECK(arena.stats().chunks == chunks, "reset() changed the chunks");
    }
    FUZZ_CHECK(arena.used_bytes() == 0, "used after reset / release");
  }

  void run() {
    for (int n = 0; in.remaining_bytes() > 0 && n < 4000; ++n) {
      switch (in.ConsumeIntegralInRange<int>(0, 15)) {
        case 0:
          op_mark();
          break;
        case 1:
          op_rewind();
          break;
        case 2:
          op_bad_rewind();
          break;
        case 3:
          op_reset(in.ConsumeIntegralInRange<int>(0, 3) == 0);
          break;
        case 4:
        case 5:
        case 6:
          op_deallocate();
          break;
        case 7:
          print_stats(arena.stats());
          break;
        default:
          op_allocate();
          break;
      }
      if (n % 16 == 0) check_stats();
    }
    check_stats();
    model.verify_all();
  }
};

bsalloc::frame_arena_options options(FuzzedDataProvider& in) {
  bsalloc::frame_arena_options o;
  o.chunk_bytes = in.ConsumeIntegralInRange<std::size_t>(0, std::size_t{256} << 10);
  o.max_chunk_bytes = in.ConsumeIntegralInRange<std::size_t>(0, std::size_t{2} << 20);
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) o.fill.on_allocate = 0xCD;
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) o.fill.on_free = 0xDD;
  o.name = "fuzz";
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const int kind = in.ConsumeIntegralInRange<int>(0, 2);  // global pages, fixed pages, fixed arena
  std::optional<bsalloc::page_resource> pages;
  std::optional<checking_upstream> up;
  std::optional<bsalloc::frame_arena> arena;
  alignas(64) static std::byte other_buffer[4096];
  bsalloc::frame_arena other(std::span<std::byte>(other_buffer, sizeof other_buffer));
  const auto o = options(in);
  if (kind == 2) {
    const std::size_t bytes = in.ConsumeIntegralInRange<std::size_t>(0, sizeof buffer);
    const std::size_t skip = in.ConsumeIntegralInRange<std::size_t>(0, 63);
    arena.emplace(std::span<std::byte>(buffer + skip, bytes - std::min(bytes, skip)), o);
  } else {
    std::pmr::memory_resource* under = &bsalloc::global_page_resource();
    if (kind == 1) {
      pages.emplace(std::span<std::byte>(
          buffer, in.ConsumeIntegralInRange<std::size_t>(std::size_t{64} << 10, sizeof buffer)));
      under = &*pages;
    }
    up.emplace(under);
    if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
      up->fail_mask = in.ConsumeIntegral<std::uint64_t>();
      if (in.ConsumeBool()) up->fail_from = in.ConsumeIntegralInRange<std::size_t>(0, 100);
    }
    arena.emplace(&*up, o);
  }
  {
    harness h{in, *arena, other, up ? &*up : nullptr, {}, {}, {}, 0, 0};
    h.run();
  }
  arena.reset();  // std::optional::reset: the arena's destructor gives every chunk back
  if (up) {
    FUZZ_CHECK(up->live_count() == 0, "the arena left " + num(up->live_count()) + " chunks");
  }
  if (pages) pages->check_invariants();
  return 0;
}
