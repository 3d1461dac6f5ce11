// SPDX-License-Identifier: Apache-2.0
// slab_resource's per-class counts, kept per core cache (src/slab/core_cache.cpp): each core
// counts the objects out of its own slabs under its lock, and stats() sums them. Objects in use
// leave out the remote frees still in flight; a class's peak is the sum of the cores' peaks,
// exact with one core cache and an upper bound otherwise (slab_resource.hpp, peak_objects).
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory_resource>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::slab_class_stats;
using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

std::optional<slab_class_stats> class_of(const bsalloc::slab_resource_stats& s, std::size_t size) {
  for (const auto& c : s.classes)
    if (c.object_size == size) return c;
  return std::nullopt;
}

// Runs f on a thread pinned to cpu; false if it could not be pinned there.
template <class F>
bool on_cpu(int cpu, F f) {
  bool pinned = false;
  std::thread t([&] {
    pinned = bsalloc_test::pin_to_cpu(cpu);
    if (pinned) f();
  });
  t.join();
  return pinned;
}

struct restore_affinity {
  cpu_set_t old;
  restore_affinity() { REQUIRE(::sched_getaffinity(0, sizeof old, &old) == 0); }
  ~restore_affinity() { ::sched_setaffinity(0, sizeof old, &old); }
  restore_affinity(const restore_affinity&) = delete;
  restore_affinity& operator=(const restore_affinity&) = delete;
};

// Two usable CPUs with a core cache each, over a page resource, unchecked; this thread pinned
// to the first CPU (its affinity comes back at the end).
struct two_cores {
  std::array<int, 2> cpu = bsalloc_test::two_usable_cpus();
  restore_affinity keep;
  page_resource pages;
  std::optional<slab_resource> res;
  explicit two_cores(bool thread_cache) {
    slab_resource_options o;
    o.caches = static_cast<std::size_t>(std::max(cpu[0], cpu[1])) + 1;
    o.thread_cache = thread_cache;
    o.checked = false;
    res.emplace(std::pmr::pool_options{}, o, &pages);
    REQUIRE(bsalloc_test::pin_to_cpu(cpu[0]));
  }
};

}  // namespace

TEST_CASE("per-core counts: remote frees in flight are not in use; peaks add up over the cores") {
  const auto cpu = bsalloc_test::two_usable_cpus();
  restore_affinity keep;
  page_resource pages;
  slab_resource_options o;
  o.caches = static_cast<std::size_t>(std::max(cpu[0], cpu[1])) + 1;  // a core cache per CPU
  o.thread_cache = false;  // every call reaches its core cache: the counts are exact
  o.checked = false;
  slab_resource r(std::pmr::pool_options{}, o, &pages);
  const auto c0 = static_cast<std::size_t>(cpu[0]);
  const auto c1 = static_cast<std::size_t>(cpu[1]);

  // 1000 objects out of core 1's slabs and back: its peak is 1000. trim() gives its emptied
  // slab back, so that core 0 takes new slabs below (no refill takes from core 1's).
  REQUIRE(on_cpu(cpu[1], [&] {
    std::vector<void*> v;
    for (int i = 0; i < 1000; ++i) v.push_back(r.allocate(64));
    for (void* p : v) r.deallocate(p, 64);
  }));
  r.trim();
  auto k = class_of(r.stats(), 64);
  REQUIRE(k.has_value());
  CHECK(k->objects_in_use == 0);
  CHECK(k->slabs == 0);
  CHECK(k->peak_objects == 1000);

  // 1000 objects out of core 0's slabs: in use 1000; the class's peak is the sum of the cores'
  // peaks, 2000, although no more than 1000 were ever out at once (the documented upper bound).
  REQUIRE(bsalloc_test::pin_to_cpu(cpu[0]));
  std::vector<void*> objs;
  for (int i = 0; i < 1000; ++i) objs.push_back(r.allocate(64));
  auto s = r.stats();
  k = class_of(s, 64);
  REQUIRE(k.has_value());
  CHECK(k->objects_in_use == 1000);
  CHECK(k->peak_objects == 2000);
  CHECK(s.cores[c0].allocations == 1000);

  // Core 1 frees 500 of them: posted to core 0, whose lock nobody takes meanwhile. They are in
  // flight: out of their slabs still, but no longer in use.
  REQUIRE(on_cpu(cpu[1], [&] {
    for (int i = 0; i < 500; ++i) r.deallocate(objs[static_cast<std::size_t>(i)], 64);
  }));
  s = r.stats();
  k = class_of(s, 64);
  REQUIRE(k.has_value());
  CHECK(s.cores[c1].remote_frees_sent == 500);
  CHECK(s.cores[c0].remote_frees_received == 0);  // not drained yet
  CHECK(k->objects_in_use == 500);
  CHECK(s.objects_in_use == 500);
  r.check_invariants();  // drains: S3 per core, every remote free received
  s = r.stats();
  k = class_of(s, 64);
  REQUIRE(k.has_value());
  CHECK(s.cores[c0].remote_frees_received == 500);
  CHECK(k->objects_in_use == 500);
  CHECK(k->peak_objects == 2000);  // the peaks stay

  // release() drops everything and resets the peaks.
  r.release();
  s = r.stats();
  CHECK_FALSE(class_of(s, 64).has_value());
  CHECK(s.objects_in_use == 0);
  r.check_invariants();
}

TEST_CASE("per-core counts: release() with remote frees still in flight leaves nothing in use") {
  two_cores t(true);
  const auto& cpu = t.cpu;
  slab_resource& r = *t.res;
  std::vector<void*> objs;
  for (int i = 0; i < 3000; ++i) objs.push_back(r.allocate(48));
  // Freed on CPU 1: its bins post chains to core 0 and its exit posts the rest, undrained.
  REQUIRE(on_cpu(cpu[1], [&] {
    for (void* p : objs) r.deallocate(p, 48);
  }));
  r.release();  // drops the posted messages with the slabs
  auto s = r.stats();
  CHECK(s.objects_in_use == 0);
  CHECK(s.classes.empty());
  r.check_invariants();  // every post counts as received
  // And the resource works on: a new round, in use counted exactly.
  objs.clear();
  for (int i = 0; i < 100; ++i) objs.push_back(r.allocate(48));
  s = r.stats();
  CHECK(s.objects_in_use == 100);
  for (void* p : objs) r.deallocate(p, 48);
  r.check_invariants();
}

TEST_CASE("per-core counts: randomised, two pinned threads freeing each other's objects") {
  const auto cpu = bsalloc_test::two_usable_cpus();
  const std::uint64_t seed = bsalloc_test::test_seed("per-core counts");
  restore_affinity keep;
  constexpr std::array<std::size_t, 3> sizes{24, 64, 300};
  for (bool cache : {true, false}) {
    CAPTURE(cache);
    page_resource pages;
    slab_resource_options o;
    o.caches = static_cast<std::size_t>(std::max(cpu[0], cpu[1])) + 1;
    o.thread_cache = cache;
    o.checked = false;
    slab_resource r(std::pmr::pool_options{}, o, &pages);
    // live[t]: objects thread t frees (the other thread allocated them: remote frees).
    std::array<std::vector<std::pair<void*, std::size_t>>, 2> live;
    std::map<std::size_t, std::size_t> model;  // class size -> objects in use
    std::size_t last_peak_sum = 0;
    for (int round = 0; round < 20; ++round) {
      // kept[t]: objects thread t leaves for its next round; made[t]: objects it allocated.
      std::array<std::vector<std::pair<void*, std::size_t>>, 2> kept, made;
      std::array<bool, 2> pinned{};
      std::array<std::thread, 2> threads;
      for (int t = 0; t < 2; ++t) {
        threads[static_cast<std::size_t>(t)] = std::thread([&, t] {
          const auto i = static_cast<std::size_t>(t);
          pinned[i] = bsalloc_test::pin_to_cpu(cpu[i]);
          std::mt19937_64 rng(seed + static_cast<std::uint64_t>(round * 2 + t) + (cache ? 0 : 99));
          for (const auto& b : live[i]) {
            if (rng() % 4 == 0)
              kept[i].push_back(b);
            else
              r.deallocate(b.first, b.second);
          }
          const std::size_t n = rng() % 2000;
          for (std::size_t k = 0; k < n; ++k) {
            const std::size_t size = sizes[rng() % sizes.size()];
            made[i].emplace_back(r.allocate(size), size);
          }
        });
      }
      for (auto& th : threads) th.join();  // exits flush the thread caches
      REQUIRE(pinned[0]);
      REQUIRE(pinned[1]);
      for (std::size_t t = 0; t < 2; ++t) {
        live[t] = std::move(kept[t]);
        live[t].insert(live[t].end(), made[1 - t].begin(), made[1 - t].end());
      }
      model.clear();
      for (const auto& side : live)
        for (const auto& b : side)
          ++model[slab_resource::class_size(
              slab_resource::size_class(b.second, alignof(std::max_align_t)))];
      const auto s = r.stats();
      std::size_t total = 0, peak_sum = 0;
      for (const auto& k : s.classes) {
        const std::size_t want = model.count(k.object_size) ? model[k.object_size] : 0;
        CAPTURE(k.object_size);
        CHECK(k.objects_in_use == want);  // remote frees in flight and cached objects left out
        CHECK(k.peak_objects >= k.objects_in_use);
        total += k.objects_in_use;
        peak_sum += k.peak_objects;
      }
      CHECK(s.objects_in_use == total);
      std::size_t model_total = 0;
      for (const auto& [size, n] : model) model_total += n;
      CHECK(total == model_total);
      CHECK(peak_sum >= last_peak_sum);  // peaks never fall (no release())
      last_peak_sum = peak_sum;
      if (round % 5 == 4) r.check_invariants();  // drains: S3 per core, all posts received
    }
    for (const auto& side : live)
      for (const auto& b : side) r.deallocate(b.first, b.second);
    r.trim();
    CHECK(r.stats().objects_in_use == 0);
    r.check_invariants();
  }
}

TEST_CASE("per-core counts: a fork child sees the parent's counts, remote frees in flight too") {
  two_cores t(false);
  const auto& cpu = t.cpu;
  slab_resource& r = *t.res;
  std::vector<void*> objs;
  for (int i = 0; i < 400; ++i) objs.push_back(r.allocate(32));
  REQUIRE(on_cpu(cpu[1], [&] {
    for (int i = 0; i < 100; ++i) r.deallocate(objs[static_cast<std::size_t>(i)], 32);
  }));  // 100 in flight to core 0
  const int rc = bsalloc_test::child_exit_code([&]() -> int {
    // The fork handler drained every inbox and settled the remote counts.
    auto s = r.stats();
    if (s.objects_in_use != 300) return 1;
    if (s.cores[static_cast<std::size_t>(cpu[0])].remote_frees_received != 100) return 2;
    r.check_invariants();
    for (std::size_t i = 100; i < objs.size(); ++i) r.deallocate(objs[i], 32);
    void* p = r.allocate(32);
    if (r.stats().objects_in_use != 1) return 3;
    r.deallocate(p, 32);
    r.check_invariants();
    return r.stats().objects_in_use == 0 ? 0 : 4;
  });
  CHECK(rc == 0);
  // The parent's own inbox is untouched by the child's drain.
  auto s = r.stats();
  CHECK(s.objects_in_use == 300);
  CHECK(s.cores[static_cast<std::size_t>(cpu[0])].remote_frees_received == 0);
  for (std::size_t i = 100; i < objs.size(); ++i) r.deallocate(objs[i], 32);
  r.check_invariants();
  CHECK(r.stats().objects_in_use == 0);
}
