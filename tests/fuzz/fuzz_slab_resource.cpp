// SPDX-License-Identifier: Apache-2.0
// Fuzz target: bsalloc::slab_resource under every option, over every kind of upstream.
//
// The input picks the knobs (thread cache, checked, hardened with or without zero-on-free,
// largest_required_pool_block, min_slab_bytes, empty slabs kept, caches) and the upstream (the
// global page_resource, a page_resource of its own, a page_resource over a fixed buffer, a
// monotonic buffer, each optionally failing on the calls the input chooses), all behind a checking
// upstream that verifies every deallocate gives back exactly what was taken and counts what is
// held. Then operations: allocate (sizes from 0 to beyond the largest class, alignments 1 to 64
// KiB, impossible sizes), deallocate, trim, release, stats, a second resource interleaved. A shadow
// model checks alignment, no overlap, fill patterns, stats against the model and the upstream's
// count, check_invariants() every 16 operations, and that nothing is left upstream at the end.
// One setting (a page_resource of its own, caches == 3) hands that page_resource to the slab
// resource directly, without the checking upstream: the path where large blocks are tagged in
// the page runs and cached in the thread's large bins (with a 2 MiB bound when no empty slab is
// kept: one run a bin to start, so that bins overflow and grow into little room); the
// page_resource's own counts stand in for the checking upstream's there.
#include <bsalloc/slab_resource.hpp>

#include <algorithm>
#include <limits>
#include <memory>
#include <memory_resource>
#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace bsalloc_fuzz;

constexpr std::size_t buffer_bytes = std::size_t{8} << 20;
alignas(4096) std::byte buffer[buffer_bytes];

// memory_resource::allocate assumes the alignment is a power of two (UBSan checks that
// assumption on the returned pointer): bad alignments go straight to do_allocate, through a
// pointer to the protected member.
struct exposer : bsalloc::slab_resource {
  using bsalloc::slab_resource::do_allocate;
};

struct harness {
  FuzzedDataProvider& in;
  bsalloc::slab_resource& res;
  checking_upstream& up;
  bool upstream_may_fail;      // a fixed buffer or injected failures
  shadow model;                // tag: the slab class, or -1 for large
  std::size_t largest;         // options().largest_required_pool_block
  std::size_t last_bytes = 8;  // the size of the last allocate or deallocate
  cpu_hopper cpus{};
  bsalloc::page_resource* direct = nullptr;  // the upstream itself, unwrapped (see the top)
  // Other resources used at the same time, each with its own upstream and model: one at most,
  // or (slab-many-resources) more than there are thread-cache slots.
  struct other {
    checking_upstream up{&bsalloc::global_page_resource()};
    std::unique_ptr<bsalloc::slab_resource> res;
    shadow model;
  };
  std::vector<std::unique_ptr<other>> others{};

  int class_of(std::size_t bytes, std::size_t align) const {
    int c = bsalloc::slab_resource::size_class(bytes, align);
    if (c < 0 || bsalloc::slab_resource::class_size(c) > largest) return -1;
    if (c == 0 && res.knobs().hardened) c = 1;  // hardened: 8-byte requests take 16-byte objects
    return c;
  }

  void check_stats() {
    const auto s = res.stats();
    std::size_t small = 0, small_bytes = 0, large = 0, large_bytes = 0;
    std::map<std::size_t, std::size_t> per_size;  // class size -> live objects
    for (const auto& [a, lb] : model.blocks()) {
      const int c = static_cast<int>(static_cast<std::ptrdiff_t>(lb.tag));
      if (c < 0) {
        ++large;
        // A large bin's block counts its run's whole pages.
        const bool binned = res.large_bins() && lb.align <= 4096 &&
                            bsalloc::slab_resource::large_run_size(lb.size) != 0;
        large_bytes += binned ? bsalloc::slab_resource::large_run_size(lb.size) : lb.size;
      } else {
        ++small;
        small_bytes += bsalloc::slab_resource::class_size(c);
        ++per_size[bsalloc::slab_resource::class_size(c)];
      }
    }
    FUZZ_CHECK(s.objects_in_use == small,
               "objects_in_use " + num(s.objects_in_use) + " != model " + num(small));
    FUZZ_CHECK(s.large_objects == large,
               "large_objects " + num(s.large_objects) + " != model " + num(large));
    FUZZ_CHECK(s.large_bytes == large_bytes,
               "large_bytes " + num(s.large_bytes) + " != model " + num(large_bytes));
    FUZZ_CHECK(
        s.bytes_in_use == small_bytes + large_bytes,
        "bytes_in_use " + num(s.bytes_in_use) + " != model " + num(small_bytes + large_bytes));
    if (direct)  // large blocks count their bytes, the page layer whole pages
      FUZZ_CHECK(s.bytes_reserved <= direct->stats().allocated_bytes,
                 "bytes_reserved " + num(s.bytes_reserved) + " > the page layer's allocated " +
                     num(direct->stats().allocated_bytes));
    else
      FUZZ_CHECK(
          s.bytes_reserved == up.live_bytes(),
          "bytes_reserved " + num(s.bytes_reserved) + " != held upstream " + num(up.live_bytes()));
    for (const auto& k : s.classes) {
      const auto it = per_size.find(k.object_size);
      const std::size_t want = it == per_size.end() ? 0 : it->second;
      FUZZ_CHECK(k.objects_in_use == want, "class " + num(k.object_size) + ": objects_in_use " +
                                               num(k.objects_in_use) + " != model " + num(want));
      FUZZ_CHECK(k.peak_objects >= k.objects_in_use, "class peak below in use");
      FUZZ_CHECK(k.bytes_in_use == k.objects_in_use * k.object_size, "class bytes_in_use");
      if (k.objects_in_use) FUZZ_CHECK(k.slabs > 0, "objects in use but no slab");
      per_size.erase(k.object_size);
    }
    FUZZ_CHECK(per_size.empty(), "a class with live objects is missing from stats");
    try {
      res.check_invariants();
    } catch (const std::logic_error& e) {
      fail(std::string("check_invariants: ") + e.what());
    }
  }

  std::size_t pick_size() {
    switch (in.ConsumeIntegralInRange<int>(0, 15)) {
      case 0:
        return 0;
      case 1:
        return in.ConsumeIntegralInRange<std::size_t>(1025, 70000);
      case 2:
        return in.ConsumeIntegralInRange<std::size_t>(70000, std::size_t{1} << 20);
      case 3:
        return pow2(in, 3, 16) + in.ConsumeIntegralInRange<std::size_t>(0, 2) - 1;
      case 4:
        return in.ConsumeIntegralInRange<std::size_t>(129, 1024);
      default:
        return in.ConsumeIntegralInRange<std::size_t>(1, 128);
    }
  }
  std::size_t pick_align() {
    switch (in.ConsumeIntegralInRange<int>(0, 15)) {
      case 0:
        return pow2(in, 5, 12);
      case 1:
        return pow2(in, 13, 16);
      case 2:
      case 3:
        return 16;
      case 4:
        return alignof(std::max_align_t);
      default:
        return pow2(in, 0, 3);
    }
  }

  void op_allocate() {
    std::size_t bytes = pick_size(), align = pick_align();
    enum { good, huge, bad_align } kind = good;
    const int odd = in.ConsumeIntegralInRange<int>(0, 63);
    if (odd == 0) {  // sizes no upstream can serve (well below the wrap-around)
      bytes = in.ConsumeIntegralInRange<std::size_t>(std::size_t{1} << 33, std::size_t{1} << 62);
      kind = huge;
    } else if (odd == 1) {  // at the top of size_t
      bytes =
          std::numeric_limits<std::size_t>::max() - in.ConsumeIntegralInRange<std::size_t>(0, 5000);
      kind = huge;
    } else if (odd == 2) {
      align = in.PickValueInArray<std::size_t>({0, 3, 6, 12, 24, 48, 100});
      bytes = last_bytes;  // a size just freed or allocated: its thread-cache bin is warm
      kind = bad_align;
    }
    const int cls = class_of(bytes, align);
    const std::size_t failures = up.failures();
    const auto before = res.stats();
    void* p = nullptr;
    try {
      p = kind == bad_align ? (res.*(&exposer::do_allocate))(bytes, align)
                            : res.allocate(bytes, align);
    } catch (const std::bad_alloc&) {
      FUZZ_CHECK(kind != bad_align,
                 "alignment " + num(align) + ": bad_alloc, not invalid_argument");
      FUZZ_CHECK(kind == huge || up.failures() > failures,
                 "allocate(" + num(bytes) + ", " + num(align) +
                     ") threw bad_alloc but the upstream never refused");
      const auto after = res.stats();
      FUZZ_CHECK(after.objects_in_use == before.objects_in_use &&
                     after.large_objects == before.large_objects,
                 "a failed allocate changed what is in use");
      return;
    } catch (const std::invalid_argument&) {
      FUZZ_CHECK(kind == bad_align,
                 "allocate(" + num(bytes) + ", " + num(align) + ") threw invalid_argument");
      return;
    }
    FUZZ_CHECK(kind == good,
               "allocate(" + num(bytes) + ", " + num(align) + ") succeeded: " + hex(p));
    model.add(p, bytes, align, in.ConsumeIntegral<std::uint8_t>(),
              static_cast<std::size_t>(static_cast<std::ptrdiff_t>(cls)));
    last_bytes = bytes;
  }

  void op_free() {
    if (model.empty()) return;
    auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    const std::uintptr_t a = it->first;
    const live_block lb = model.remove(a);
    res.deallocate(reinterpret_cast<void*>(a), lb.size, lb.align);
    last_bytes = lb.size;
  }

  void op_trim() {
    const auto before = res.stats();
    const std::size_t given = res.trim();
    const auto after = res.stats();
    FUZZ_CHECK(after.cached_objects == 0,
               "trim left " + num(after.cached_objects) + " cached objects");
    FUZZ_CHECK(after.bytes_reserved <= before.bytes_reserved, "trim grew the reserve");
    FUZZ_CHECK(given == before.bytes_reserved - after.bytes_reserved,
               "trim() returned " + num(given) + ", gave back " +
                   num(before.bytes_reserved - after.bytes_reserved));
    // trim returns every empty slab: a class with nothing in use holds no slab.
    for (const auto& k : after.classes)
      FUZZ_CHECK(k.objects_in_use > 0 || k.slabs == 0,
                 "class " + num(k.object_size) + ": " + num(k.slabs) + " empty slabs after trim");
  }

  void op_release() {
    res.release();
    model.forget_all();
    const auto s = res.stats();
    FUZZ_CHECK(s.objects_in_use == 0 && s.large_objects == 0 && s.bytes_reserved == 0,
               "release left objects or reserve");
    FUZZ_CHECK(up.live_count() == 0, "release left " + num(up.live_count()) + " blocks upstream");
    if (direct)
      FUZZ_CHECK(direct->stats().allocated_bytes == 0,
                 "release left " + num(direct->stats().allocated_bytes) + " bytes in the pages");
  }

  void op_other() {
    const std::size_t most = 40;
    const int what = in.ConsumeIntegralInRange<int>(0, 3);
    if (others.empty() || (what == 0 && others.size() < most)) {
      auto o = std::make_unique<other>();
      bsalloc::slab_resource_options k = res.knobs();
      k.caches = 1;
      o->res = std::make_unique<bsalloc::slab_resource>(std::pmr::pool_options{}, k, &o->up);
      others.push_back(std::move(o));
      return;
    }
    other& o = *others[in.ConsumeIntegralInRange<std::size_t>(0, others.size() - 1)];
    if (what == 1) {  // destroy one: its upstream must get everything back
      auto it =
          std::find_if(others.begin(), others.end(), [&](const auto& x) { return x.get() == &o; });
      o.model.verify_all();
      o.res.reset();
      FUZZ_CHECK(o.up.live_count() == 0, "a destroyed second resource left blocks upstream");
      others.erase(it);
    } else if (what == 2 || o.model.empty()) {
      const std::size_t bytes = in.ConsumeIntegralInRange<std::size_t>(0, 2048);
      const std::size_t align = pow2(in, 0, 6);
      o.model.add(o.res->allocate(bytes, align), bytes, align, in.ConsumeIntegral<std::uint8_t>());
    } else {
      const std::uintptr_t a = o.model.pick(in.ConsumeIntegral<std::size_t>())->first;
      const live_block lb = o.model.remove(a);
      o.res->deallocate(reinterpret_cast<void*>(a), lb.size, lb.align);
    }
  }

  void run() {
    std::size_t ops = 0;
    while (in.remaining_bytes() > 0 && ops < 3000) {
      switch (in.ConsumeIntegralInRange<int>(0, 17)) {
        case 0:
        case 1:
        case 2:
        case 3:
        case 4:
        case 5:
          op_allocate();
          break;
        case 6:
        case 7:
        case 8:
        case 9:
        case 10:
          op_free();
          break;
        case 11:
          check_stats();
          break;
        case 12:
          if (in.ConsumeBool())
            model.verify_all();
          else
            print_stats(res.stats());
          break;
        case 16:
          cpus.hop(in.ConsumeIntegral<std::uint8_t>());
          break;
        case 17:
          op_other();
          break;
        case 13:
          op_trim();
          break;
        case 14:
          if (in.ConsumeIntegralInRange<int>(0, 7) == 0) op_release();
          break;
        case 15: {  // a burst: many of one size, then free them in an input-chosen order
          const std::size_t n = in.ConsumeIntegralInRange<std::size_t>(1, 300);
          const std::size_t bytes = pick_size() % 4096, align = pick_align() % 64;
          for (std::size_t i = 0; i < n && in.remaining_bytes() > 0; ++i) {
            void* p;
            try {
              p = res.allocate(bytes, align ? align : 1);
            } catch (const std::bad_alloc&) {
              FUZZ_CHECK(upstream_may_fail, "burst: bad_alloc with an upstream that cannot fail");
              break;
            }
            model.add(p, bytes, align ? align : 1, static_cast<std::uint8_t>(i),
                      static_cast<std::size_t>(
                          static_cast<std::ptrdiff_t>(class_of(bytes, align ? align : 1))));
          }
          break;
        }
      }
      if (++ops % 16 == 0) check_stats();
    }
    check_stats();
    model.verify_all();
    for (auto& o : others) {
      o->model.verify_all();
      o->res.reset();
      FUZZ_CHECK(o->up.live_count() == 0, "a second resource left blocks upstream");
    }
    others.clear();
  }
};

struct failing_setup {
  std::uint64_t mask = 0;
  std::size_t from = SIZE_MAX;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  bsalloc::slab_resource_options knobs;
  knobs.thread_cache = in.ConsumeBool();
  knobs.checked = in.ConsumeBool();
  knobs.min_slab_bytes = in.ConsumeBool() ? pow2(in, 12, 14) : pow2(in, 12, 20);
  knobs.max_empty_slabs_per_class = in.ConsumeIntegralInRange<std::size_t>(0, 3);
  knobs.caches = in.ConsumeIntegralInRange<std::size_t>(0, 4);
  knobs.remote_queue_capacity = in.ConsumeIntegralInRange<std::size_t>(1, 64);
  knobs.hardened = in.ConsumeBool();
  if (knobs.hardened) knobs.hardened_zero_on_free = in.ConsumeBool();
  std::pmr::pool_options pool;
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      pool.largest_required_pool_block = 0;
      break;
    case 1:
      pool.largest_required_pool_block = in.ConsumeIntegralInRange<std::size_t>(1, 256);
      break;
    default:
      pool.largest_required_pool_block = in.ConsumeIntegralInRange<std::size_t>(1, 1 << 17);
  }
  pool.max_blocks_per_chunk = in.ConsumeIntegral<std::size_t>();

  const int kind = in.ConsumeIntegralInRange<int>(0, 3);
  failing_setup fs;
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
    fs.mask = in.ConsumeIntegral<std::uint64_t>();
    if (in.ConsumeBool()) fs.from = in.ConsumeIntegralInRange<std::size_t>(0, 200);
  }
  std::optional<bsalloc::page_resource> pages;
  std::optional<std::pmr::monotonic_buffer_resource> mono;
  std::pmr::memory_resource* under = nullptr;
  bool fixed = false;
  switch (kind) {
    case 0:
      under = &bsalloc::global_page_resource();
      break;
    case 1: {
      bsalloc::page_resource_options o;
      o.os_region_bytes = pow2(in, 16, 22);
      o.retain_bytes = in.ConsumeBool() ? 0 : pow2(in, 12, 22);
      o.purge_interval = std::chrono::milliseconds(0);
      pages.emplace(o);
      under = &*pages;
      break;
    }
    case 2: {
      const std::size_t len =
          in.ConsumeIntegralInRange<std::size_t>(std::size_t{16} << 10, buffer_bytes);
      pages.emplace(std::span<std::byte>(buffer, len));
      under = &*pages;
      fixed = true;
      break;
    }
    default: {
      const std::size_t len = in.ConsumeIntegralInRange<std::size_t>(1, buffer_bytes);
      mono.emplace(buffer, len, std::pmr::null_memory_resource());
      under = &*mono;
      fixed = true;
    }
  }
  {
    const bool direct = kind == 1 && knobs.caches == 3;
    if (direct && knobs.max_empty_slabs_per_class == 0)
      knobs.large_cache_bytes = std::size_t{2} << 20;
    checking_upstream up(under);
    up.fail_mask = fs.mask;
    up.fail_from = fs.from;
    std::optional<bsalloc::slab_resource> res;
    try {
      res.emplace(pool, knobs, direct ? under : &up);
    } catch (const std::bad_alloc&) {
      FUZZ_CHECK(up.failing() || fixed, "constructor: bad_alloc");
      return 0;
    }
    harness h{in, *res, up, up.failing() || fixed, {}, res->options().largest_required_pool_block};
    if (direct) h.direct = &*pages;
    FUZZ_CHECK(h.largest <= bsalloc::slab_resource::max_pool_block, "largest class above 64 KiB");
    if (pool.largest_required_pool_block)
      FUZZ_CHECK(h.largest >= std::min(pool.largest_required_pool_block,
                                       bsalloc::slab_resource::max_pool_block),
                 "largest_required_pool_block " + num(pool.largest_required_pool_block) +
                     " not honoured: " + num(h.largest));
    h.run();
    // Either free everything, or destroy the resource with objects live: both must give every
    // byte back upstream.
    if (in.ConsumeBool()) {
      while (!h.model.empty()) {
        const std::uintptr_t a = h.model.pick(0)->first;
        const live_block lb = h.model.remove(a);
        res->deallocate(reinterpret_cast<void*>(a), lb.size, lb.align);
      }
      h.check_stats();
    }
    res.reset();
    FUZZ_CHECK(up.live_count() == 0,
               "the destroyed resource left " + num(up.live_count()) + " blocks upstream");
    if (direct)
      FUZZ_CHECK(pages->stats().allocated_bytes == 0, "the destroyed resource left " +
                                                          num(pages->stats().allocated_bytes) +
                                                          " bytes in the pages");
  }
  if (pages) pages->check_invariants();
  return 0;
}
