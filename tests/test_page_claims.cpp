// SPDX-License-Identifier: Apache-2.0
// Who may claim memory and runs: add_region refuses any memory that a page_resource already
// manages (pages or metadata, of any resource, as the process page map records it), and of two
// frees of one run, however they race (run-cache path, locked path), exactly one wins.
#include <bsalloc/page_map.hpp>
#include <bsalloc/page_resource.hpp>

#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include <fmt/format.h>

using bsalloc::page_resource;
using bsalloc::page_resource_options;
using bsalloc::page_size;

namespace {

std::uint64_t seed() {
  const char* s = std::getenv("BSALLOC_SEED");
  const std::uint64_t v = s ? std::strtoull(s, nullptr, 0) : std::random_device{}();
  MESSAGE("seed ", v, " (override with BSALLOC_SEED)");
  return v;
}

// Page-aligned memory from the OS that no page_resource knows.
struct arena {
  std::size_t bytes;
  std::byte* data;
  explicit arena(std::size_t n) : bytes(n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    data = static_cast<std::byte*>(p);
  }
  ~arena() { ::munmap(data, bytes); }
  std::span<std::byte> pages(std::size_t first, std::size_t count) const {
    return {data + first * page_size, count * page_size};
  }
};

page_resource_options fixed() {
  return {.os_region_bytes = 0, .retain_bytes = 0, .grow_from_os = false};
}

// What add_region makes of a span, as the header documents it: whole pages, metadata (12 bytes
// a page) at the start, then the managed pages. Returns [span begin, metadata end, span end).
struct layout {
  std::uintptr_t begin = 0, base = 0, end = 0;
};
layout layout_of(std::span<std::byte> m) {
  const auto b = reinterpret_cast<std::uintptr_t>(m.data());
  const std::uintptr_t lo = (b + page_size - 1) & ~(page_size - 1);
  const std::uintptr_t hi = (b + m.size()) & ~(page_size - 1);
  const std::size_t total = hi > lo ? (hi - lo) / page_size : 0;
  auto meta = [](std::size_t n) { return (n * 12 + page_size - 1) / page_size; };
  std::size_t managed = total * page_size / (page_size + 12);
  while (managed > 0 && managed + meta(managed) > total) --managed;
  if (managed == 0) return {};
  return {lo, lo + meta(managed) * page_size, lo + (meta(managed) + managed) * page_size};
}

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return {};
}

}  // namespace

TEST_CASE("add_region refuses another resource's pages and metadata, and its own metadata") {
  arena a(std::size_t{4} << 20);
  page_resource first(a.pages(0, 256));  // metadata in page 0, managed pages after it
  const auto s = first.stats();
  REQUIRE(s.regions.size() == 1);
  const std::uintptr_t managed = s.regions[0].start;
  REQUIRE(managed == reinterpret_cast<std::uintptr_t>(a.data) + page_size);
  void* held = first.allocate_pages(3);

  page_resource second(fixed());
  // One page cannot hold a region at all; a span with another resource's metadata, its pages,
  // or both, is refused, naming the first page in conflict.
  const std::string meta_only = what_of([&] { second.add_region(a.pages(0, 1)); });
  CHECK(meta_only.find("too small") != std::string::npos);       // one page: refused before
  for (auto range : {std::pair<std::size_t, std::size_t>{0, 2},  // metadata + 1 page
                     {0, 300},                                   // all of it and more
                     {100, 4},                                   // managed pages only
                     {255, 50}}) {                               // its last page
    const std::size_t from = range.first, count = range.second;  // (clang 14: no bindings)
    const std::string w = what_of([&] { second.add_region(a.pages(from, count)); });
    CAPTURE(from);
    CAPTURE(count);
    CHECK(w.find("overlaps memory that a page_resource already manages") != std::string::npos);
    CHECK(w.find(fmt::format("{:#x}", reinterpret_cast<std::uintptr_t>(a.data) +
                                          from * page_size)) != std::string::npos);
  }
  CHECK(what_of([&] { second.add_region(a.pages(0, 2)); }).find("page metadata") !=
        std::string::npos);
  // Its own metadata and pages: the same refusal.
  CHECK(what_of([&] { first.add_region(a.pages(0, 8)); }).find("overlaps") != std::string::npos);
  CHECK(what_of([&] { first.add_region(a.pages(200, 100)); }).find("overlaps") !=
        std::string::npos);
  // An OS region's metadata lies behind its pages: refused too.
  page_resource os;
  void* p = os.allocate_pages(1);
  const auto region = os.stats().regions.at(0);
  const std::uintptr_t meta = region.start + region.bytes;  // first metadata page
  CHECK(bsalloc::page_map_lookup(reinterpret_cast<void*>(meta)) == nullptr);
  CHECK(what_of([&] {
          second.add_region({reinterpret_cast<std::byte*>(meta), 4 * page_size});
        }).find("page metadata") != std::string::npos);
  // Nothing changed by the refusals: memory right behind the first region's span is fine.
  CHECK(second.stats().regions.empty());
  CHECK(second.add_region(a.pages(256, 64)) == 0);
  first.check_invariants();
  second.check_invariants();
  os.check_invariants();
  CHECK(first.find_run(held)->pages == 3);
  first.deallocate_pages(held, 3);
  os.deallocate_pages(p, 1);
  // Freed memory may be claimed again once its resource is gone.
  {
    arena b(std::size_t{1} << 20);
    { page_resource gone(b.pages(0, 64)); }
    page_resource again(b.pages(0, 64));
    again.check_invariants();
  }
}

TEST_CASE("add_region: randomised against a model of the registered spans") {
  std::mt19937_64 rng(seed());
  const std::size_t arena_pages = 2048;
  arena a(arena_pages * page_size);
  const auto base = reinterpret_cast<std::uintptr_t>(a.data);
  struct model_resource {
    std::unique_ptr<page_resource> res;
    std::vector<layout> spans;
  };
  std::vector<model_resource> rs;
  for (int i = 0; i < 4; ++i) rs.push_back({std::make_unique<page_resource>(fixed()), {}});
  std::size_t added = 0, refused = 0;
  for (int step = 0; step < 3000; ++step) {
    auto& m = rs[rng() % rs.size()];
    if (rng() % 40 == 0) {  // a resource dies; its memory is free again
      m.res = std::make_unique<page_resource>(fixed());
      m.spans.clear();
      continue;
    }
    const std::size_t first = rng() % arena_pages;
    const std::size_t count = 1 + rng() % std::min<std::size_t>(96, arena_pages - first);
    const std::size_t skew = rng() % 3 == 0 ? rng() % 100 : 0;  // unaligned edges
    std::span<std::byte> mem(a.data + first * page_size + skew, count * page_size - skew);
    const layout l = layout_of(mem);
    bool overlap = false;
    for (const auto& o : rs)
      for (const auto& sp : o.spans) overlap = overlap || (l.begin < sp.end && sp.begin < l.end);
    const bool expect = l.end != 0 && !overlap;
    bool got = true;
    try {
      m.res->add_region(mem);
    } catch (const std::invalid_argument&) {
      got = false;
    }
    CAPTURE(step);
    CAPTURE(first);
    CAPTURE(count);
    REQUIRE(got == expect);
    if (got) {
      m.spans.push_back(l);
      ++added;
    } else {
      ++refused;
    }
    if (step % 100 == 0) {
      // The page map agrees with the model at every page of the arena.
      for (std::size_t pg = 0; pg < arena_pages; ++pg) {
        const std::uintptr_t addr = base + pg * page_size;
        const page_resource* want = nullptr;
        for (const auto& o : rs)
          for (const auto& sp : o.spans)
            if (addr >= sp.base && addr < sp.end) want = o.res.get();
        REQUIRE(bsalloc::page_map_lookup(reinterpret_cast<void*>(addr)) == want);
      }
      for (const auto& o : rs) o.res->check_invariants();
    }
  }
  MESSAGE(added, " regions added, ", refused, " refused");
  CHECK(added > 20);
  CHECK(refused > 20);
  // Every added region is usable: allocate all of each resource, write it, free it.
  for (const auto& o : rs) {
    std::vector<void*> got;
    for (;;) {
      try {
        got.push_back(o.res->allocate_pages(1));
      } catch (const std::bad_alloc&) {
        break;
      }
      std::memset(got.back(), 0x5a, page_size);
    }
    o.res->check_invariants();
    for (void* p : got) o.res->deallocate_pages(p, 1);
  }
}

TEST_CASE("add_region: two resources adding the same memory at once, one wins") {
  arena a(std::size_t{1} << 20);
  for (int round = 0; round < 200; ++round) {
    page_resource r1(fixed()), r2(fixed());
    std::atomic<int> go{0};
    std::atomic<int> wins{0};
    auto add = [&](page_resource& r, std::size_t first) {
      go.fetch_add(1);
      while (go.load() < 2) std::this_thread::yield();
      try {
        r.add_region(a.pages(first, 64));
        wins.fetch_add(1);
      } catch (const std::invalid_argument&) {
      }
    };
    std::thread t1(add, std::ref(r1), 0), t2(add, std::ref(r2), 32);  // overlapping halves
    t1.join();
    t2.join();
    CHECK(wins.load() == 1);
    r1.check_invariants();
    r2.check_invariants();
  }
}

namespace {

// Two threads free one run at once, many times; exactly one free may succeed, the other must
// throw std::invalid_argument naming the pointer. `pin` puts thread i on CPU cpus[i].
struct double_free_race {
  page_resource& res;
  std::size_t pages;
  std::vector<int> cpus;  // empty: no pinning
  std::function<void(page_resource&)> before_round = [](page_resource&) {};

  void run(int rounds) {
    std::atomic<int> ready{0};
    std::atomic<int> round{-1};
    std::atomic<void*> target{nullptr};
    std::atomic<int> ok{0}, refused{0}, bad_message{0};
    auto worker = [&](int id) {
      if (!cpus.empty()) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[static_cast<std::size_t>(id)], &one);
        ::sched_setaffinity(0, sizeof one, &one);
      }
      for (int r = 0; r < rounds; ++r) {
        while (round.load() < r) std::this_thread::yield();  // the main thread's go
        void* p = target.load();
        try {
          res.deallocate_pages(p, pages);
          ok.fetch_add(1);
        } catch (const std::invalid_argument& e) {
          refused.fetch_add(1);
          if (std::string(e.what()).find(fmt::format("{}", p)) == std::string::npos)
            bad_message.fetch_add(1);
        }
        ready.fetch_add(1);
      }
    };
    std::thread t0(worker, 0), t1(worker, 1);
    for (int r = 0; r < rounds; ++r) {
      before_round(res);
      target.store(res.allocate_pages(pages));
      const int want = 2 * (r + 1);
      round.store(r);
      while (ready.load() < want) std::this_thread::yield();
      if (r % 64 == 0) res.check_invariants();
    }
    t0.join();
    t1.join();
    CHECK(ok.load() == rounds);
    CHECK(refused.load() == rounds);
    CHECK(bad_message.load() == 0);
    res.check_invariants();
    res.flush_cache();
    CHECK(res.stats().allocated_bytes == 0);
    res.check_invariants();
  }
};

}  // namespace

TEST_CASE("double free racing: exactly one of two frees of a run wins, on every path") {
  const int rounds = 400;
  SUBCASE("both on the run-cache path") {
    page_resource res(page_resource_options{.cache_bytes_per_core = std::size_t{4} << 20});
    for (std::size_t pages : {1, 3, 64}) double_free_race{res, pages, {}}.run(rounds);
  }
  SUBCASE("both on the locked path (no run cache; a run too large for it)") {
    page_resource plain;
    double_free_race{plain, 2, {}}.run(rounds);
    page_resource cached(page_resource_options{.cache_bytes_per_core = std::size_t{4} << 20});
    double_free_race{cached, 65, {}}.run(rounds);
  }
  SUBCASE("one on each: a full cache on one core sends its free to the locked path") {
    cpu_set_t mine;
    REQUIRE(::sched_getaffinity(0, sizeof mine, &mine) == 0);
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE && cpus.size() < 2; ++c)
      if (CPU_ISSET(c, &mine)) cpus.push_back(c);
    if (cpus.size() < 2) {
      MESSAGE("one CPU only: skipped");
      return;
    }
    // Each core caches at most 4 pages. Before each round, a thread on cpus[1] fills its
    // core's cache with one 4-page run, so its free of the 2-page target cannot be cached
    // (locked path), while cpus[0]'s core has room (cache path, after a flush).
    page_resource res(page_resource_options{.cache_bytes_per_core = 4 * page_size});
    double_free_race race{res, 2, cpus};
    race.before_round = [&](page_resource& r) {
      r.flush_cache();
      std::thread filler([&] {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpus[1], &one);
        ::sched_setaffinity(0, sizeof one, &one);
        r.deallocate_pages(r.allocate_pages(4), 4);
      });
      filler.join();
    };
    race.run(rounds / 2);
  }
}
