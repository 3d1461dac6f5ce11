// SPDX-License-Identifier: Apache-2.0
// Fuzz target: bsalloc::object_pool<T, Lock, SlabBytes> for four shapes of T (1 byte, 48 bytes,
// 64-aligned, 3000 bytes), three lock policies, explicit and automatic slab sizes, checked or
// not, over the global page_resource or a fixed buffer, with upstream failures on the calls the
// input chooses. Operations: make (whose constructor may throw), raw allocate, and every way
// back (deallocate, destroy, dispose, a pool_ptr), handle copies and drops, trim, owns, stats.
// A shadow model checks alignment, no overlap, fill patterns, stats, check_invariants() every 16
// operations; at the end every byte must be back upstream, whether the objects or the handles
// went last.
#include <bsalloc/object_pool.hpp>
#include <bsalloc/slab_resource.hpp>

#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace bsalloc_fuzz;

alignas(4096) std::byte buffer[std::size_t{8} << 20];

struct ctor_failure {};

template <std::size_t N, std::size_t A = 1>
struct alignas(A) payload {
  static constexpr std::size_t written = N;  // the constructor's bytes (sizeof may be more)
  std::uint8_t bytes[N];
  payload(std::uint8_t fill, bool fail_now) {
    if (fail_now) throw ctor_failure{};
    for (std::size_t i = 0; i < N; ++i) bytes[i] = pattern_at(fill, i);
  }
};

template <class T, class Lock, std::size_t SlabBytes>
struct harness {
  using pool_t = bsalloc::object_pool<T, Lock, SlabBytes>;
  FuzzedDataProvider& in;
  checking_upstream& up;
  bool may_fail;
  std::vector<pool_t> handles;
  shadow model;  // tag: 0 raw slot, 1 constructed object

  pool_t& pool() { return handles.front(); }

  void check_stats() {
    const auto s = pool().stats();
    FUZZ_CHECK(s.objects_in_use == model.count(),
               "objects_in_use " + num(s.objects_in_use) + " != model " + num(model.count()));
    FUZZ_CHECK(s.peak_objects >= s.objects_in_use, "peak below in use");
    FUZZ_CHECK(s.bytes_reserved == s.slabs * s.slab_bytes, "bytes_reserved != slabs * slab_bytes");
    FUZZ_CHECK(s.slabs * s.objects_per_slab >= s.objects_in_use, "more objects than slots");
    FUZZ_CHECK(s.empty_slabs <= 1, "more than one cached empty slab");
    FUZZ_CHECK(s.handles == handles.size(),
               "handles " + num(s.handles) + " != " + num(handles.size()));
    FUZZ_CHECK(up.live_bytes() >= s.bytes_reserved, "upstream holds less than the slabs");
    try {
      pool().check_invariants();
    } catch (const std::logic_error& e) {
      fail(std::string("check_invariants: ") + e.what());
    }
  }

  void op_make(bool construct) {
    const std::size_t failures = up.failures();
    const std::size_t in_use = pool().stats().objects_in_use;
    const bool throw_now = construct && in.ConsumeIntegralInRange<int>(0, 15) == 0;
    const std::uint8_t fill = in.ConsumeIntegral<std::uint8_t>();
    T* p = nullptr;
    try {
      if (construct) {
        p = pool().make(fill, throw_now).release();
      } else {
        p = pool().allocate();
      }
    } catch (const ctor_failure&) {
      FUZZ_CHECK(throw_now, "constructor failure out of nowhere");
      FUZZ_CHECK(pool().stats().objects_in_use == in_use, "a throwing constructor kept its slot");
      return;
    } catch (const std::bad_alloc&) {
      FUZZ_CHECK(up.failures() > failures, "bad_alloc but the upstream never refused");
      FUZZ_CHECK(pool().stats().objects_in_use == in_use, "a failed allocate changed in_use");
      return;
    }
    FUZZ_CHECK(!throw_now, "make returned although the constructor threw");
    FUZZ_CHECK(pool().owns(p), "owns() false for a fresh object");
    if (construct) {
      // The constructor wrote the pattern: check it, then register (add() writes it again).
      for (std::size_t i = 0; i < T::written; ++i)
        FUZZ_CHECK(reinterpret_cast<std::uint8_t*>(p)[i] == pattern_at(fill, i),
                   "constructor bytes");
    }
    model.add(p, sizeof(T), alignof(T), fill, construct ? 1 : 0);
  }

  void op_free() {
    if (model.empty()) return;
    auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    T* p = reinterpret_cast<T*>(it->first);
    const live_block lb = model.remove(it->first);
    if (lb.tag == 0) {
      pool().deallocate(p);
      return;
    }
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        handles[in.ConsumeIntegralInRange<std::size_t>(0, handles.size() - 1)].destroy(p);
        break;
      case 1:
        pool_t::dispose(p);
        break;
      case 2: {
        typename pool_t::pointer owner(p);
      } break;
      default: {
        typename pool_t::pointer owner(p);
        owner.reset();
        FUZZ_CHECK(!owner, "reset left the pointer");
      }
    }
  }

  void op_handles() {
    if (in.ConsumeBool() || handles.size() == 1) {
      if (handles.size() < 8)
        handles.push_back(handles[in.ConsumeIntegralInRange<std::size_t>(0, handles.size() - 1)]);
    } else {
      handles.erase(handles.begin() +
                    static_cast<std::ptrdiff_t>(
                        in.ConsumeIntegralInRange<std::size_t>(1, handles.size() - 1)));
    }
    for (const auto& h : handles)
      FUZZ_CHECK(h == pool() && h.use_count() == handles.size(), "handle count");
  }

  void op_trim() {
    const auto before = pool().stats();
    const std::size_t given = pool().trim();
    const auto after = pool().stats();
    FUZZ_CHECK(given == before.empty_slabs * before.slab_bytes, "trim returned " + num(given));
    FUZZ_CHECK(after.empty_slabs == 0 && after.slabs + before.empty_slabs == before.slabs,
               "trim kept the empty slab");
  }

  void op_probe() {
    static int outside;
    FUZZ_CHECK(!pool().owns(&outside), "owns() true for a global");
    if (model.empty()) return;
    auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    FUZZ_CHECK(pool().owns(reinterpret_cast<const std::byte*>(it->first) +
                           in.ConsumeIntegralInRange<std::size_t>(0, sizeof(T) - 1)),
               "owns() false inside a live object");
  }

  void run() {
    std::size_t ops = 0;
    while (in.remaining_bytes() > 0 && ops < 3000) {
      switch (in.ConsumeIntegralInRange<int>(0, 15)) {
        case 0:
        case 1:
        case 2:
        case 3:
          op_make(true);
          break;
        case 4:
        case 5:
          op_make(false);
          break;
        case 6:
        case 7:
        case 8:
        case 9:
        case 10:
          op_free();
          break;
        case 11:
          op_handles();
          break;
        case 12:
          op_trim();
          break;
        case 13:
          op_probe();
          break;
        case 14:
          check_stats();
          break;
        case 15:
          if (in.ConsumeBool())
            model.verify_all();
          else
            print_stats(pool().stats());
          break;
      }
      if (++ops % 16 == 0) check_stats();
    }
    check_stats();
    model.verify_all();
    // The end: objects first, or handles first (then the last object frees the slabs).
    const bool handles_first = in.ConsumeBool();
    if (handles_first) {
      std::vector<T*> objs;
      for (const auto& [a, lb] : model.blocks()) objs.push_back(reinterpret_cast<T*>(a));
      model.verify_all();
      model.forget_all();
      handles.clear();
      for (T* p : objs)
        pool_t::dispose(p);  // raw slots hold bytes only: T is trivially destructible
    } else {
      while (!model.empty()) {
        T* p = reinterpret_cast<T*>(model.pick(0)->first);
        model.remove(reinterpret_cast<std::uintptr_t>(p));
        pool().deallocate(p);
      }
      check_stats();
      handles.clear();
    }
  }
};

template <class T, class Lock, std::size_t SlabBytes>
void run_one(FuzzedDataProvider& in) {
  static_assert(std::is_trivially_destructible_v<T>);
  // Upstream: the global page_resource, a page_resource over a fixed buffer, or a
  // slab_resource (its large path must give the slab-size alignment the pool needs).
  const int kind = in.ConsumeIntegralInRange<int>(0, 2);
  const bool fixed = kind == 1;
  std::optional<bsalloc::page_resource> pages;
  std::optional<bsalloc::slab_resource> slabs;
  std::pmr::memory_resource* under = &bsalloc::global_page_resource();
  if (kind == 1) {
    pages.emplace(std::span<std::byte>(
        buffer, in.ConsumeIntegralInRange<std::size_t>(std::size_t{64} << 10, sizeof buffer)));
    under = &*pages;
  } else if (kind == 2) {
    bsalloc::slab_resource_options k;
    k.checked = in.ConsumeBool();
    k.thread_cache = in.ConsumeBool();
    slabs.emplace(std::pmr::pool_options{}, k);
    under = &*slabs;
  }
  checking_upstream up(under);
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
    up.fail_mask = in.ConsumeIntegral<std::uint64_t>();
    if (in.ConsumeBool()) up.fail_from = in.ConsumeIntegralInRange<std::size_t>(0, 100);
  }
  bsalloc::object_pool_options o;
  o.upstream = &up;
  o.checked = in.ConsumeBool();
  {
    harness<T, Lock, SlabBytes> h{in, up, fixed || up.failing(), {}, {}};
    try {
      h.handles.emplace_back(o);
    } catch (const std::bad_alloc&) {
      FUZZ_CHECK(up.failures() > 0, "pool constructor: bad_alloc without a refusal");
      return;
    }
    h.run();
  }
  FUZZ_CHECK(up.live_count() == 0, "the pool left " + num(up.live_count()) + " blocks (" +
                                       num(up.live_bytes()) + " bytes) upstream");
  if (pages) pages->check_invariants();
  if (slabs) {
    const auto st = slabs->stats();
    FUZZ_CHECK(st.objects_in_use == 0 && st.large_objects == 0,
               "the pool left objects in its slab_resource upstream");
    slabs->check_invariants();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      run_one<payload<1>, bsalloc::null_lock, 4096>(in);
      break;
    case 1:
      run_one<payload<48>, bsalloc::yield_lock, bsalloc::auto_slab_bytes>(in);
      break;
    case 2:
      run_one<payload<200, 64>, std::mutex, 16384>(in);
      break;
    default:
      run_one<payload<3000>, bsalloc::yield_lock, bsalloc::auto_slab_bytes>(in);
      break;
  }
  return 0;
}
