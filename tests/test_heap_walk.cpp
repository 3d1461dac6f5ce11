// SPDX-License-Identifier: Apache-2.0
// Heap walks against a model of what is live: slab_resource (plain, checked, no thread cache),
// page_resource, frame_arena, budget_resource; concurrent allocators while walking (TSan); the
// leak reports.
#include <bsalloc/heap_walk.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <memory_resource>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

namespace {

std::uint64_t seed() {
  const char* e = std::getenv("BSALLOC_SEED");
  const std::uint64_t v = e ? std::strtoull(e, nullptr, 10) : std::random_device{}();
  MESSAGE("seed " << v << " (set BSALLOC_SEED to repeat)");
  return v;
}

std::size_t random_size(std::mt19937_64& rng) {
  return rng() % 20 == 0 ? 65537 + rng() % 200000 : 1 + rng() % 3000;  // some large blocks
}

// The walk reports exactly the model's blocks: each once, sorted, small ones with a class size
// at least what was asked, large ones with exactly that.
void check_exact(const std::vector<bsalloc::heap_block>& walk,
                 const std::map<const void*, std::size_t>& model) {
  REQUIRE(walk.size() == model.size());
  auto it = model.begin();
  for (const auto& b : walk) {
    REQUIRE(b.ptr == it->first);
    CHECK(b.large == (it->second > bsalloc::slab_resource::max_pool_block));
    if (b.large)
      CHECK(b.bytes == it->second);
    else
      CHECK(b.bytes >= it->second);
    ++it;
  }
}

}  // namespace

TEST_CASE("slab_resource heap walk: exactly the live blocks, in every mode") {
  const std::uint64_t s = seed();
  for (int mode = 0; mode < 3; ++mode) {
    CAPTURE(mode);
    bsalloc::slab_resource_options o;
    o.thread_cache = mode != 1;
    o.checked = mode == 2;
    bsalloc::slab_resource r{std::pmr::pool_options{}, o, std::pmr::new_delete_resource()};
    std::mt19937_64 rng{s + static_cast<unsigned>(mode)};
    std::map<const void*, std::size_t> live;
    CHECK(r.live_blocks().empty());
    for (int round = 0; round < 20; ++round) {
      for (int i = 0; i < 300; ++i) {
        if (live.empty() || rng() % 3 != 0) {
          const std::size_t n = random_size(rng);
          live.emplace(r.allocate(n, 8), n);
        } else {
          auto it = std::next(live.begin(), static_cast<long>(rng() % live.size()));
          r.deallocate(const_cast<void*>(it->first), it->second, 8);
          live.erase(it);
        }
      }
      check_exact(r.live_blocks(), live);
    }
    std::size_t n = 0;
    CHECK(bsalloc::for_each_allocation(r, [&](const bsalloc::heap_block&) { ++n; }) == live.size());
    CHECK(n == live.size());
    const std::string report = bsalloc::leak_report(r, "walk");
    CHECK(report.find("bsalloc: slab_resource 'walk' has " + std::to_string(live.size()) +
                      " block(s) live") == 0);
    for (auto [p, bytes] : live) r.deallocate(const_cast<void*>(p), bytes, 8);
    CHECK(r.live_blocks().empty());
    CHECK(bsalloc::leak_report(r, "walk").empty());
    r.check_invariants();
  }
}

TEST_CASE("slab_resource heap walk while 4 threads allocate: what lives throughout is there") {
  const std::uint64_t s = seed();
  for (const bool checked : {false, true}) {
    CAPTURE(checked);
    bsalloc::slab_resource_options o;
    o.checked = checked;
    bsalloc::slab_resource r{std::pmr::pool_options{}, o, std::pmr::new_delete_resource()};
    std::mutex m;
    std::set<const void*> pinned;  // live from before each walk to after it; guarded by m
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        std::mt19937_64 rng{s + t};
        std::vector<std::pair<void*, std::size_t>> pins, churn;
        for (int i = 0; i < 50; ++i) {
          const std::size_t n = random_size(rng);
          pins.emplace_back(r.allocate(n, 8), n);
        }
        {
          const std::lock_guard lock(m);
          for (auto [p, n] : pins) pinned.insert(p);
        }
        while (!stop.load(std::memory_order_relaxed)) {
          const std::size_t n = random_size(rng);
          churn.emplace_back(r.allocate(n, 8), n);
          if (churn.size() > 100) {
            for (auto [p, k] : churn) r.deallocate(p, k, 8);  // frees: some to other cores
            churn.clear();
          }
        }
        for (auto [p, k] : churn) r.deallocate(p, k, 8);
        for (auto [p, k] : pins) r.deallocate(p, k, 8);
      });
    for (int w = 0; w < 30; ++w) {
      std::set<const void*> must;
      {
        const std::lock_guard lock(m);
        must = pinned;
      }
      const auto walk = r.live_blocks();
      std::set<const void*> seen;
      for (const auto& b : walk) CHECK(seen.insert(b.ptr).second);  // each block once
      for (const void* p : must) CHECK(seen.contains(p));
    }
    stop = true;
    for (auto& th : threads) th.join();
    CHECK(r.live_blocks().size() == 0);
  }
}

TEST_CASE("page_resource heap walk: the live runs, cached ones left out, under concurrency") {
  const std::uint64_t s = seed();
  bsalloc::page_resource_options o;
  o.cache_bytes_per_core = 1 << 20;  // freed runs may sit in the run cache: not reported
  bsalloc::page_resource pages{o};
  std::mt19937_64 rng{s};
  std::map<const void*, std::size_t> live;  // pages
  for (int i = 0; i < 500; ++i) {
    if (live.empty() || rng() % 3 != 0) {
      const std::size_t n = 1 + rng() % 40;
      live.emplace(pages.allocate_pages(n), n);
    } else {
      auto it = std::next(live.begin(), static_cast<long>(rng() % live.size()));
      pages.deallocate_pages(const_cast<void*>(it->first), it->second);
      live.erase(it);
    }
  }
  const auto walk = bsalloc::live_blocks(pages);
  REQUIRE(walk.size() == live.size());
  auto it = live.begin();
  for (const auto& b : walk) {
    CHECK(b.ptr == it->first);
    CHECK(b.bytes == it->second * bsalloc::page_size);
    ++it;
  }
  // Another thread churns while this one walks: the runs above are always there, once each.
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    std::mt19937_64 r2{s + 1};
    std::vector<std::pair<void*, std::size_t>> mine;
    while (!stop.load(std::memory_order_relaxed)) {
      const std::size_t n = 1 + r2() % 70;
      mine.emplace_back(pages.allocate_pages(n), n);
      if (mine.size() > 20) {
        for (auto [p, k] : mine) pages.deallocate_pages(p, k);
        mine.clear();
      }
    }
    for (auto [p, k] : mine) pages.deallocate_pages(p, k);
  });
  for (int w = 0; w < 30; ++w) {
    std::set<const void*> seen;
    std::size_t n = bsalloc::for_each_allocation(
        pages, [&](const bsalloc::heap_block& b) { CHECK(seen.insert(b.ptr).second); });
    CHECK(n == seen.size());
    for (const auto& [p, k] : live) CHECK(seen.contains(p));
  }
  stop = true;
  churn.join();
  for (auto [p, n] : live) pages.deallocate_pages(const_cast<void*>(p), n);
  CHECK(bsalloc::live_blocks(pages).empty());
}

TEST_CASE("frame_arena and budget_resource heap walks; the leak report per budget") {
  bsalloc::frame_arena arena{std::pmr::new_delete_resource()};
  std::vector<std::pair<char*, std::size_t>> mine;
  for (std::size_t i = 1; i < 2000; ++i)
    mine.emplace_back(static_cast<char*>(arena.allocate(i % 300 + 1, 8)), i % 300 + 1);
  std::vector<bsalloc::heap_block> ranges;
  bsalloc::for_each_allocation(arena, [&](const bsalloc::heap_block& b) { ranges.push_back(b); });
  CHECK(ranges.size() >= 2);  // several chunks
  for (const auto& m : mine) {
    const char* const p = m.first;  // no structured binding: clang 14 cannot capture one
    const std::size_t n = m.second;
    const bool inside = std::any_of(ranges.begin(), ranges.end(), [&](const auto& b) {
      return p >= static_cast<const char*>(b.ptr) &&
             p + n <= static_cast<const char*>(b.ptr) + b.bytes;
    });
    CHECK(inside);
  }
  arena.reset();
  CHECK(bsalloc::for_each_allocation(arena, [](const bsalloc::heap_block&) {}) == 0);

  CHECK(bsalloc::leak_report().find("'walk.") == std::string::npos);
  bsalloc::budget_resource counted{"walk.counted", 1 << 20, std::pmr::new_delete_resource()};
  bsalloc::budget_resource tracked{"walk.tracked", 1 << 20, std::pmr::new_delete_resource()};
  tracked.set_tracking();
  void* a = counted.allocate(100, 8);
  std::vector<void*> t;
  for (int i = 0; i < 12; ++i) t.push_back(tracked.allocate(32, 8));
  std::size_t n = 0;
  CHECK(bsalloc::for_each_allocation(tracked, [&](const bsalloc::heap_block& b) {
          CHECK(b.bytes == 32);
          ++n;
        }) == 12);
  CHECK(n == 12);
  CHECK(bsalloc::for_each_allocation(counted, [](const bsalloc::heap_block&) {}) == 0);
  const std::string report = bsalloc::leak_report(10);
  CHECK(report.find("bsalloc: budget 'walk.counted' leaks 100 B in 1 allocation(s)\n") !=
        std::string::npos);
  CHECK(report.find("bsalloc: budget 'walk.tracked' leaks 384 B in 12 allocation(s)\n  32 bytes "
                    "at 0x") != std::string::npos);
  CHECK(report.find("  ... 2 more\n") != std::string::npos);
  counted.deallocate(a, 100, 8);
  for (void* p : t) tracked.deallocate(p, 32, 8);
  CHECK(bsalloc::leak_report().find("'walk.") == std::string::npos);
}
