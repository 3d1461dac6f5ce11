// SPDX-License-Identifier: Apache-2.0
// budget_resource and budget_report(): counting, limits, handlers, nesting, threads, printing.
#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/out_of_memory.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/sampler.hpp>
#include <bsalloc/slab_resource.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory_resource>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

namespace {

std::uint64_t seed() {
  const char* s = std::getenv("BSALLOC_SEED");
  const std::uint64_t v = s != nullptr ? std::strtoull(s, nullptr, 10) : std::random_device{}();
  MESSAGE("seed " << v << " (set BSALLOC_SEED to repeat)");
  return v;
}

}  // namespace

TEST_CASE("budget_resource: counts bytes, peak and live allocations") {
  bsalloc::budget_resource b{"test.counts", 1 << 20, std::pmr::new_delete_resource()};
  CHECK(b.name() == "test.counts");
  CHECK(b.limit() == (1u << 20));
  CHECK(b.upstream_resource() == std::pmr::new_delete_resource());
  void* p = b.allocate(100, 8);
  void* q = b.allocate(1000, 64);
  CHECK(reinterpret_cast<std::uintptr_t>(q) % 64 == 0);
  CHECK(b.in_use() == 1100);
  CHECK(b.count() == 2);
  b.deallocate(p, 100, 8);
  CHECK(b.in_use() == 1000);
  CHECK(b.count() == 1);
  CHECK(b.peak() == 1100);
  b.check_invariants();
  b.deallocate(q, 1000, 64);
  const auto s = b.stats();
  CHECK(s.in_use == 0);
  CHECK(s.count == 0);
  CHECK(s.peak == 1100);
  CHECK(s.refused == 0);
  CHECK(s.over_limit == 0);
  CHECK_THROWS_AS(bsalloc::budget_resource("x", 1, nullptr), std::invalid_argument);
}

TEST_CASE("budget_resource: over the limit without a handler throws and counts nothing") {
  bsalloc::budget_resource b{"test.limit", 1000, std::pmr::new_delete_resource()};
  void* p = b.allocate(600, 8);
  CHECK_THROWS_AS((void)b.allocate(401, 8), std::bad_alloc);
  CHECK(b.in_use() == 600);
  CHECK(b.count() == 1);
  CHECK(b.stats().refused == 1);
  void* q = b.allocate(400, 8);  // exactly up to the limit is fine
  CHECK(b.in_use() == 1000);
  CHECK_THROWS_AS((void)b.allocate(1, 1), std::bad_alloc);
  CHECK_THROWS_AS((void)b.allocate(SIZE_MAX - 10, 8), std::bad_alloc);  // no wrap-around
  CHECK(b.in_use() == 1000);
  b.deallocate(p, 600, 8);
  b.deallocate(q, 400, 8);
  b.set_limit(10);
  CHECK(b.limit() == 10);
  CHECK_THROWS_AS((void)b.allocate(11, 1), std::bad_alloc);
  b.check_invariants();
}

TEST_CASE("budget_resource: a handler that allows and one that refuses") {
  std::vector<bsalloc::over_budget_info> seen;
  bool allow = true;
  bsalloc::budget_resource b{"test.handler", 100, std::pmr::new_delete_resource(),
                             [&](const bsalloc::over_budget_info& i) {
                               seen.push_back(i);
                               return allow;
                             }};
  void* p = b.allocate(80, 8);
  void* q = b.allocate(50, 8);  // over: allowed
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].bytes == 50);
  CHECK(seen[0].alignment == 8);
  CHECK(seen[0].in_use == 80);
  CHECK(seen[0].limit == 100);
  CHECK(&seen[0].budget == &b);
  CHECK(b.in_use() == 130);
  CHECK(b.stats().over_limit == 1);
  CHECK(fmt::format("{}", bsalloc::budget_report()).find("OVER") != std::string::npos);
  b.check_invariants();
  allow = false;
  CHECK_THROWS_AS((void)b.allocate(10, 8), std::bad_alloc);  // refused
  CHECK(seen.size() == 2);
  CHECK(b.in_use() == 130);
  CHECK(b.stats().refused == 1);
  b.deallocate(q, 50, 8);
  void* r = b.allocate(20, 8);  // under the limit again: the handler is not asked
  CHECK(seen.size() == 2);
  b.deallocate(r, 20, 8);
  b.deallocate(p, 80, 8);
  CHECK(b.in_use() == 0);
}

namespace {
int global_calls = 0;
bsalloc::budget_resource* raise_me = nullptr;
bool raise_limit(const bsalloc::out_of_memory_info& i) {
  ++global_calls;
  if (raise_me == nullptr || i.resource != raise_me) return false;
  CHECK(i.resource_type == "budget_resource");
  CHECK(i.name == raise_me->name());
  CHECK(i.stats.find(std::string(raise_me->name())) != std::string::npos);
  raise_me->set_limit(raise_me->limit() * 2);
  return true;
}
}  // namespace

TEST_CASE("budget_resource: a refusal reaches the out-of-memory handler, which may fix it") {
  const auto old = bsalloc::set_out_of_memory_handler(raise_limit);
  global_calls = 0;
  {
    bsalloc::budget_resource b{"test.oom", 100, std::pmr::new_delete_resource()};
    raise_me = &b;
    void* p = b.allocate(150, 8);  // over; the global handler doubles the limit; retried
    CHECK(global_calls == 1);
    CHECK(b.limit() == 200);
    CHECK(b.stats().refused == 0);
    raise_me = nullptr;
    CHECK_THROWS_AS((void)b.allocate(100, 8), std::bad_alloc);  // the handler declines
    CHECK(global_calls == 2);
    b.deallocate(p, 150, 8);
  }
  bsalloc::set_out_of_memory_handler(old);
}

TEST_CASE("budget_resource: a request near SIZE_MAX is refused without wrapping the count") {
  bsalloc::budget_resource b{"huge", std::numeric_limits<std::size_t>::max(),
                             std::pmr::new_delete_resource()};
  void* p = b.allocate(100, 8);
  CHECK_THROWS_AS((void)b.allocate(std::numeric_limits<std::size_t>::max() - 50, 8),
                  std::bad_alloc);
  CHECK(b.in_use() == 100);
  CHECK(b.count() == 1);
  b.check_invariants();
  b.deallocate(p, 100, 8);
  CHECK(b.in_use() == 0);
}

// A slab_resource over a budget over a page_resource is not serialised (the budget is as
// thread-safe as its upstream), so an over-budget handler may trim the slab that called it — the
// README's own pattern; serialised, that trim would wait for the lock its own caller holds.
TEST_CASE("budget_resource: its handler may trim the slab_resource above it") {
  const auto r = bsalloc_test::run_in_child([] {
    ::alarm(30);  // a deadlock ends the child: the test fails instead of hanging
    bsalloc::page_resource pages;
    bsalloc::budget_resource b{"physics", std::size_t{512} << 10, &pages};
    bsalloc::slab_resource_options knobs;
    knobs.min_slab_bytes = 4096;
    bsalloc::slab_resource slab(std::pmr::pool_options{}, knobs, &b);
    int calls = 0;
    b.set_over_budget_handler([&](const bsalloc::over_budget_info&) {
      ++calls;
      (void)slab.trim();  // frees empty slabs through the budget
      return false;
    });
    std::vector<void*> held;
    for (int round = 0; round < 3; ++round) {
      std::vector<void*> other;  // an empty slab of another class, for the handler's trim()
      for (int i = 0; i < 4; ++i) other.push_back(slab.allocate(3000, 8));
      for (void* p : other) slab.deallocate(p, 3000, 8);
      try {
        for (;;) held.push_back(slab.allocate(1000, 8));
      } catch (const std::bad_alloc&) {
      }
      for (void* p : held) slab.deallocate(p, 1000, 8);
      held.clear();
    }
    if (calls < 3) std::_Exit(4);
    std::_Exit(0);
  });
  CHECK_MESSAGE(WIFEXITED(r.status), r.err);
  CHECK(WEXITSTATUS(r.status) == 0);
}

TEST_CASE("budget_resource: nested budgets count in both, and either refuses") {
  bsalloc::budget_resource outer{"test.nest.outer", 1000, std::pmr::new_delete_resource()};
  bsalloc::budget_resource inner_a{"test.nest.a", 700, &outer};
  bsalloc::budget_resource inner_b{"test.nest.b", 700, &outer};
  void* a = inner_a.allocate(600, 8);
  CHECK(inner_a.in_use() == 600);
  CHECK(outer.in_use() == 600);
  void* b = inner_b.allocate(300, 8);
  CHECK(outer.in_use() == 900);
  CHECK_THROWS_AS((void)inner_b.allocate(200, 8), std::bad_alloc);  // outer refuses
  CHECK(inner_b.in_use() == 300);  // the inner reservation was given back
  CHECK(outer.stats().refused == 1);
  CHECK(inner_b.stats().refused == 0);
  CHECK_THROWS_AS((void)inner_a.allocate(101, 8), std::bad_alloc);  // inner refuses
  CHECK(inner_a.stats().refused == 1);
  CHECK(outer.in_use() == 900);
  inner_a.deallocate(a, 600, 8);
  inner_b.deallocate(b, 300, 8);
  CHECK(outer.in_use() == 0);
  CHECK(outer.count() == 0);
  CHECK(outer.peak() == 900);
}

TEST_CASE("budget_resource: a slab_resource over a budget, and a frame arena over a budget") {
  bsalloc::budget_resource heap{"test.slab", 8 << 20, &bsalloc::global_page_resource()};
  {
    bsalloc::slab_resource pool{&heap};
    std::pmr::vector<std::pmr::string> v{&pool};
    for (int i = 0; i < 1000; ++i) v.emplace_back(fmt::format("a long enough string {}", i));
    CHECK(heap.in_use() >= 64 << 10);  // at least one slab
    CHECK(heap.in_use() == pool.stats().bytes_reserved);
  }
  CHECK(heap.in_use() == 0);
  bsalloc::budget_resource scratch{"test.arena", 1 << 20, std::pmr::new_delete_resource()};
  {
    bsalloc::frame_arena arena{&scratch};
    (void)arena.allocate(1000, 8);
    CHECK(scratch.in_use() == arena.stats().capacity_bytes + 64);  // the chunk, with its header
    CHECK_THROWS_AS((void)arena.allocate(2 << 20, 8), std::bad_alloc);  // the chunk is refused
  }
  CHECK(scratch.in_use() == 0);
}

TEST_CASE("budget_resource: 8 threads on one budget end with exact counts") {
  const std::uint64_t s = seed();
  bsalloc::budget_resource b{"test.threads", 64 << 20, std::pmr::new_delete_resource()};
  std::mutex m;
  std::vector<std::pair<void*, std::size_t>> survivors;  // guarded by m
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng{s + t};
      std::vector<std::pair<void*, std::size_t>> mine;
      for (int i = 0; i < 20000; ++i) {
        if (mine.empty() || rng() % 3 != 0) {
          const std::size_t n = 1 + rng() % 512;
          mine.emplace_back(b.allocate(n, 8), n);
        } else {
          const std::size_t k = rng() % mine.size();
          b.deallocate(mine[k].first, mine[k].second, 8);
          mine[k] = mine.back();
          mine.pop_back();
        }
      }
      // Every third one survives the thread: the end state is not empty.
      const std::lock_guard lock(m);
      for (std::size_t k = 0; k < mine.size(); ++k) {
        if (k % 3 == 0)
          survivors.push_back(mine[k]);
        else
          b.deallocate(mine[k].first, mine[k].second, 8);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::size_t live = 0;
  for (auto [p, n] : survivors) live += n;
  CHECK(survivors.size() > 0);
  CHECK(b.in_use() == live);
  CHECK(b.count() == survivors.size());
  CHECK(b.peak() >= live);
  b.check_invariants();
  for (auto [p, n] : survivors) b.deallocate(p, n, 8);
  CHECK(b.in_use() == 0);
  CHECK(b.count() == 0);
}

TEST_CASE("budget_resource: the limit holds under 8 threads") {
  bsalloc::budget_resource b{"test.threads.limit", 100 * 64, std::pmr::new_delete_resource()};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      std::vector<void*> mine;
      for (int i = 0; i < 2000; ++i) {
        try {
          mine.push_back(b.allocate(64, 8));
        } catch (const std::bad_alloc&) {
          ++refused;
        }
        CHECK(b.in_use() <= 100 * 64);
        if (mine.size() > 20) {
          for (void* p : mine) b.deallocate(p, 64, 8);
          mine.clear();
        }
      }
      for (void* p : mine) b.deallocate(p, 64, 8);
    });
  }
  for (auto& th : threads) th.join();
  CHECK(b.in_use() == 0);
  CHECK(b.peak() <= 100 * 64);
  CHECK(b.stats().refused == static_cast<std::size_t>(refused.load()));
}

TEST_CASE("budget_report: every live budget, as a table and as JSON") {
  const auto base = bsalloc::budget_report();
  bsalloc::budget_resource render{"report.render", std::size_t{4} << 20,
                                  std::pmr::new_delete_resource()};
  bsalloc::budget_resource audio{"report.audio \"fx\"", bsalloc::budget_resource::unlimited,
                                 std::pmr::new_delete_resource()};
  void* p = render.allocate(3 << 20, 16);
  void* q = render.allocate(1024, 16);
  render.deallocate(q, 1024, 16);
  void* r = audio.allocate(512, 8);
  {
    const auto snap = bsalloc::budget_report();
    CHECK(snap.budgets.size() == base.budgets.size() + 2);
    const auto* a = snap.find("report.audio \"fx\"");
    const auto* g = snap.find("report.render");
    REQUIRE(a != nullptr);
    REQUIRE(g != nullptr);
    CHECK(a < g);  // sorted by name
    CHECK(g->in_use == (3u << 20));
    CHECK(g->peak == (3u << 20) + 1024);
    CHECK(g->count == 1);
    CHECK(fmt::format("{:j}", *g) ==
          "{\"name\":\"report.render\",\"in_use\":3145728,\"peak\":3146752,\"limit\":4194304,"
          "\"count\":1,\"refused\":0,\"over_limit\":0}");
    CHECK(fmt::format("{:j}", *a) ==
          "{\"name\":\"report.audio \\\"fx\\\"\",\"in_use\":512,\"peak\":512,\"limit\":null,"
          "\"count\":1,\"refused\":0,\"over_limit\":0}");
    bsalloc::budget_snapshot two;
    two.budgets = {*a, *g};
    CHECK(fmt::format("{:j}", two) ==
          "{\"budgets\":[" + fmt::format("{:j}", *a) + "," + fmt::format("{:j}", *g) + "]}");
    CHECK(fmt::format("{}", two) ==
          "budgets: 2 live, 3.0 MiB in use\n"
          "  budget                in use       peak      limit   allocs refused  over\n"
          "  report.audio \"fx\"      512 B      512 B          -        1       0     0\n"
          "  report.render        3.0 MiB    3.0 MiB    4.0 MiB        1       0     0\n");
    CHECK(fmt::format("{}", *g) ==
          "report.render: 3.0 MiB in use (peak 3.0 MiB) of 4.0 MiB, 1 allocations, 0 refused, 0 "
          "over limit");
    CHECK_THROWS_AS((void)fmt::format(fmt::runtime("{:x}"), two), fmt::format_error);
  }
  render.deallocate(p, 3 << 20, 16);
  audio.deallocate(r, 512, 8);
  {
    bsalloc::budget_resource gone{"report.gone", 1, std::pmr::new_delete_resource()};
    CHECK(bsalloc::budget_report().find("report.gone") != nullptr);
  }
  CHECK(bsalloc::budget_report().find("report.gone") == nullptr);
}

TEST_CASE("memory_sampler: one JSON line per sample, budgets and series") {
  const std::string path =
      (std::filesystem::temp_directory_path() / fmt::format("bsalloc_sampler_{}.jsonl", ::getpid()))
          .string();
  std::size_t series_value = 4096;
  {
    bsalloc::budget_resource b{"sampler.only", 1000, std::pmr::new_delete_resource()};
    bsalloc::memory_sampler sampler{path};
    CHECK(sampler.path() == path);
    sampler.add_series("slab \"reserved\"", [&] { return series_value; });
    bsalloc::budget_snapshot one;
    one.budgets.push_back(b.stats());
    CHECK(sampler.line(7, 0.5, one) ==
          "{\"frame\":7,\"t\":0.5000,\"budgets\":[{\"name\":\"sampler.only\",\"in_use\":0,"
          "\"peak\":0,\"limit\":1000,\"count\":0,\"refused\":0,\"over_limit\":0}],"
          "\"series\":{\"slab _reserved_\":4096}}");
    void* p = b.allocate(300, 8);
    sampler.sample(0);
    series_value = 8192;
    sampler.sample(1);
    CHECK(sampler.lines() == 2);
    b.deallocate(p, 300, 8);
  }
  std::ifstream in{path};
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::filesystem::remove(path);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].rfind("{\"frame\":0,\"t\":", 0) == 0);
  CHECK(lines[1].rfind("{\"frame\":1,\"t\":", 0) == 0);
  for (const auto& l : lines) {
    CHECK(l.find("{\"name\":\"sampler.only\",\"in_use\":300,\"peak\":300,\"limit\":1000,"
                 "\"count\":1,") != std::string::npos);
    CHECK(l.back() == '}');
  }
  CHECK(lines[0].find("\"series\":{\"slab _reserved_\":4096}}") != std::string::npos);
  CHECK(lines[1].find("\"series\":{\"slab _reserved_\":8192}}") != std::string::npos);
  CHECK_THROWS_AS(bsalloc::memory_sampler("/nonexistent-dir/x.jsonl"), std::system_error);
}

TEST_CASE("budget leaks: budget_leaks() lists what is still in use, the destructor can say so") {
  bsalloc::budget_resource clean{"leaks.clean", 1000, std::pmr::new_delete_resource()};
  bsalloc::budget_resource leaky{"leaks.leaky", 1000, std::pmr::new_delete_resource()};
  void* p = leaky.allocate(24, 8);
  const auto leaks = bsalloc::budget_leaks();
  CHECK(leaks.find("leaks.clean") == nullptr);
  REQUIRE(leaks.find("leaks.leaky") != nullptr);
  CHECK(leaks.find("leaks.leaky")->in_use == 24);
  CHECK(leaks.find("leaks.leaky")->count == 1);
  leaky.deallocate(p, 24, 8);
  CHECK(bsalloc::budget_leaks().find("leaks.leaky") == nullptr);

  const auto r = bsalloc_test::run_in_child([] {
    bsalloc::budget_resource b{"leaks.child", 1000, std::pmr::new_delete_resource()};
    b.set_leak_report(true);
    (void)b.allocate(100, 8);  // never freed: the report names it
  });
  CHECK(r.err ==
        "bsalloc: budget 'leaks.child' destroyed with 1 allocation(s), 100 B still in use\n");
}

TEST_CASE("budget_resource tracking: for_each_allocation lists every live allocation") {
  bsalloc::budget_resource b{"tracking", 1 << 20, std::pmr::new_delete_resource()};
  CHECK_FALSE(b.tracking());
  CHECK(b.for_each_allocation([](const void*, std::size_t) {}) == 0);
  b.set_tracking();
  CHECK(b.tracking());
  std::vector<std::pair<void*, std::size_t>> mine;
  for (std::size_t i = 1; i <= 50; ++i) mine.emplace_back(b.allocate(i * 8, 8), i * 8);
  for (std::size_t i = 0; i < 50; i += 2) b.deallocate(mine[i].first, mine[i].second, 8);
  std::size_t bytes = 0;
  const void* last = nullptr;
  const std::size_t n = b.for_each_allocation([&](const void* p, std::size_t size) {
    CHECK(std::less<>{}(last, p));  // sorted by address
    last = p;
    bytes += size;
    bool found = false;
    for (std::size_t i = 1; i < 50; i += 2)
      found = found || (mine[i].first == p && mine[i].second == size);
    CHECK(found);
  });
  CHECK(n == 25);
  CHECK(n == b.count());
  CHECK(bytes == b.in_use());

  // 4 threads allocate and free while the main thread walks: every walk is consistent.
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      while (!stop.load()) {
        void* p = b.allocate(64, 8);
        b.deallocate(p, 64, 8);
      }
    });
  for (int i = 0; i < 200; ++i) {
    const auto all = b.allocations();
    CHECK(all.size() >= 25);
    CHECK(all.size() <= 29);
  }
  stop = true;
  for (auto& th : threads) th.join();
  for (std::size_t i = 1; i < 50; i += 2) b.deallocate(mine[i].first, mine[i].second, 8);
  CHECK(b.allocations().empty());

  const auto r = bsalloc_test::run_in_child([] {
    bsalloc::budget_resource leaky{"tracking.child", 1000, std::pmr::new_delete_resource()};
    leaky.set_tracking();
    leaky.set_leak_report(true);
    (void)leaky.allocate(40, 8);
  });
  CHECK(r.err.find("bsalloc: budget 'tracking.child' destroyed with 1 allocation(s), 40 B still in "
                   "use\n  leaked 40 bytes at 0x") == 0);
}
