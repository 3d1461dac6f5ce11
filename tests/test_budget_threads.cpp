// SPDX-License-Identifier: Apache-2.0
// budget_resource's per-thread leases: exact counts once threads are done, the limit never
// passed, the refusal slack bounded, many budgets per thread, budgets dying before the threads
// that used them, frees on another thread; fork() under load (the registry lock).
#include <bsalloc/budget.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

namespace {

using bsalloc::budget_resource;

std::uint64_t seed() {
  return bsalloc_test::test_seed("test_budget_threads");
}

// (Clang 14's ASan malloc takes no lock around fork: support.hpp.)
constexpr bool sanitizer_malloc_forks_badly = bsalloc_test::asan_build;

}  // namespace

TEST_CASE("budget leases: one thread sees exact counts and peak after every call") {
  for (const std::size_t lease : {std::size_t{0}, std::size_t{64} << 10, std::size_t{100}}) {
    CAPTURE(lease);
    budget_resource b{"lease.exact", budget_resource::unlimited, std::pmr::new_delete_resource()};
    b.set_max_lease(lease);
    std::mt19937_64 rng{seed()};
    std::vector<std::pair<void*, std::size_t>> live;
    std::size_t in_use = 0, peak = 0;
    for (int i = 0; i < 5000; ++i) {
      if (live.empty() || rng() % 5 < 3) {
        const std::size_t n = 1 + rng() % (rng() % 16 == 0 ? 100000 : 300);
        live.emplace_back(b.allocate(n, 8), n);
        in_use += n;
        peak = std::max(peak, in_use);
      } else {
        const std::size_t k = rng() % live.size();
        b.deallocate(live[k].first, live[k].second, 8);
        in_use -= live[k].second;
        live[k] = live.back();
        live.pop_back();
      }
      if (i % 97 == 0) {
        REQUIRE(b.in_use() == in_use);
        REQUIRE(b.count() == live.size());
        REQUIRE(b.peak() == peak);
      }
    }
    for (auto [p, n] : live) b.deallocate(p, n, 8);
    CHECK(b.in_use() == 0);
    CHECK(b.count() == 0);
    CHECK(b.peak() == peak);
    b.check_invariants();
  }
}

TEST_CASE("budget leases: the limit is never passed under 8 threads") {
  constexpr std::size_t limit = 1 << 20;
  budget_resource b{"lease.limit", limit, std::pmr::new_delete_resource()};
  b.set_max_lease(16 << 10);
  std::atomic<std::size_t> refusals{0}, over{0};
  std::vector<std::thread> threads;
  const std::uint64_t s = seed();
  for (unsigned t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng{s + t};
      std::vector<std::pair<void*, std::size_t>> mine;
      for (int i = 0; i < 20000; ++i) {
        const std::size_t n = 8 + rng() % 4000;
        try {
          mine.emplace_back(b.allocate(n, 8), n);
        } catch (const std::bad_alloc&) {
          ++refusals;
          for (std::size_t k = 0; k < mine.size(); k += 2)
            b.deallocate(mine[k].first, mine[k].second, 8);
          std::erase_if(mine, [k = std::size_t{0}](const auto&) mutable { return k++ % 2 == 0; });
        }
        if (i % 16 == 0 && b.in_use() > limit) ++over;
      }
      for (auto [p, n] : mine) b.deallocate(p, n, 8);
    });
  for (auto& th : threads) th.join();
  CHECK(refusals.load() > 0);
  CHECK(over.load() == 0);
  CHECK(b.in_use() == 0);
  CHECK(b.count() == 0);
  CHECK(b.peak() <= limit);
  CHECK(b.stats().refused == refusals.load());
}

TEST_CASE("budget leases: a refusal comes at most the other threads' leases early") {
  // 7 threads take a lease each and keep it unspent; this thread then fills the budget. Each
  // idle lease holds at most 2 * max_lease (a lease's cap), so the refusal comes with in_use
  // at least limit - bytes - 7 * 2 * max_lease.
  constexpr std::size_t limit = 4 << 20, max_lease = 16 << 10;
  budget_resource b{"lease.slack", limit, std::pmr::new_delete_resource()};
  b.set_max_lease(max_lease);
  std::atomic<int> ready{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 7; ++t)
    threads.emplace_back([&] {
      void* p = b.allocate(1000, 8);  // takes a lease with credit ahead
      b.deallocate(p, 1000, 8);       // ... and the credit stays with this thread
      ++ready;
      while (!done.load()) std::this_thread::yield();
    });
  while (ready.load() < 7) std::this_thread::yield();
  CHECK(b.in_use() == 0);
  std::vector<void*> mine;
  std::size_t in_use = 0;
  for (;;) {
    try {
      mine.push_back(b.allocate(1000, 8));
      in_use += 1000;
    } catch (const std::bad_alloc&) {
      break;
    }
  }
  CHECK(b.in_use() == in_use);
  CHECK(in_use <= limit);
  CHECK(in_use + 1000 + 7 * 2 * max_lease > limit);
  done = true;
  for (auto& th : threads) th.join();
  // Their leases came back at thread exit: the last request fits now if it did not before.
  if (in_use + 1000 <= limit) mine.push_back(b.allocate(1000, 8));
  for (void* p : mine) b.deallocate(p, 1000, 8);
  CHECK(b.in_use() == 0);
}

TEST_CASE("budget leases: 8 threads, frees on other threads, 20 budgets each, some dying first") {
  const std::uint64_t s = seed();
  budget_resource outer{"lease.outer", budget_resource::unlimited, std::pmr::new_delete_resource()};
  std::vector<std::unique_ptr<budget_resource>> budgets;
  for (int i = 0; i < 20; ++i)  // more than the 8 TLS ways: leases are evicted and come back
    budgets.push_back(
        std::make_unique<budget_resource>("lease.many", budget_resource::unlimited, &outer));
  struct block {
    budget_resource* b;
    void* p;
    std::size_t n;
  };
  std::mutex m;
  std::vector<block> handed;  // freed by another thread; guarded by m
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng{s + t};
      std::vector<block> mine;
      for (int i = 0; i < 20000; ++i) {
        budget_resource& b = *budgets[rng() % budgets.size()];
        if (mine.empty() || rng() % 3 != 0) {
          const std::size_t n = 1 + rng() % 700;
          mine.push_back({&b, b.allocate(n, 8), n});
        } else {
          const std::size_t k = rng() % mine.size();
          if (rng() % 4 == 0) {
            const std::lock_guard lock(m);
            handed.push_back(mine[k]);
          } else {
            mine[k].b->deallocate(mine[k].p, mine[k].n, 8);
          }
          mine[k] = mine.back();
          mine.pop_back();
        }
        if (i % 64 == 0) {
          std::vector<block> theirs;
          {
            const std::lock_guard lock(m);
            theirs.swap(handed);
          }
          for (auto& x : theirs) x.b->deallocate(x.p, x.n, 8);
        }
      }
      for (auto& x : mine) x.b->deallocate(x.p, x.n, 8);
      // A budget of its own, dead before the thread: its lease is freed later, safely.
      budget_resource own{"lease.own", 1 << 20, &outer};
      own.deallocate(own.allocate(100, 8), 100, 8);
    });
  for (auto& th : threads) th.join();
  for (auto& x : handed) x.b->deallocate(x.p, x.n, 8);
  for (auto& b : budgets) {
    CHECK(b->in_use() == 0);
    CHECK(b->count() == 0);
    b->check_invariants();
  }
  CHECK(outer.in_use() == 0);
  CHECK(outer.count() == 0);
  // Budgets destroyed while this thread holds leases on them; new ones work.
  for (int i = 0; i < 30; ++i) {
    budget_resource b{"lease.short", 1 << 20, &outer};
    void* p = b.allocate(64, 8);
    CHECK(b.in_use() == 64);
    b.deallocate(p, 64, 8);
  }
  CHECK(outer.in_use() == 0);
}

namespace {

// Runs f in a child that must exit 0 within `limit_ms`; a deadlocked child is killed (-1).
template <class F>
int fork_and_wait(F f, int limit_ms) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::alarm(static_cast<unsigned>(limit_ms / 1000 + 2));  // a second line of defence
    f();
    ::_exit(0);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limit_ms);
  int status = 0;
  for (;;) {
    if (::waitpid(pid, &status, WNOHANG) == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("budget registry: fork while other threads create budgets, allocate and report" *
          doctest::skip(sanitizer_malloc_forks_badly)) {
  budget_resource shared{"fork.shared", budget_resource::unlimited,
                         std::pmr::new_delete_resource()};
  budget_resource tracked{"fork.tracked", budget_resource::unlimited,
                          std::pmr::new_delete_resource()};
  budget_resource direct{"fork.direct", 1 << 20, std::pmr::new_delete_resource()};
  tracked.set_tracking();
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        budget_resource temp{"fork.temp", 1 << 20, &shared};  // the registry, leases
        std::vector<void*> v;
        for (int i = 0; i < 50; ++i) v.push_back(temp.allocate(32, 8));
        for (void* p : v) temp.deallocate(p, 32, 8);
        tracked.deallocate(tracked.allocate(16, 8), 16, 8);
        for (int i = 0; i < 20; ++i) direct.deallocate(direct.allocate(4000, 8), 4000, 8);
        (void)bsalloc::budget_report();
      }
    });
  int deadlocked = 0, failed = 0;
  for (int i = 0; i < 40; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const int rc = fork_and_wait(
        [&] {
          // The other threads are gone: their leases on `direct` were folded back, so all the
          // room under its limit (but what they held at the fork) can be taken in one request.
          const std::size_t room = direct.limit() - direct.in_use();
          direct.deallocate(direct.allocate(room, 8), room, 8);
          for (int k = 0; k < 20; ++k) {
            budget_resource child{"fork.child", 1 << 20, &shared};
            void* p = child.allocate(100, 8);
            if (child.in_use() != 100) ::_exit(4);
            child.deallocate(p, 100, 8);
            tracked.deallocate(tracked.allocate(8, 8), 8, 8);
            if (bsalloc::budget_report().find("fork.child") == nullptr) ::_exit(5);
          }
        },
        10000);
    if (rc == -1)
      ++deadlocked;
    else if (rc != 0)
      ++failed;
  }
  stop = true;
  for (auto& th : threads) th.join();
  CHECK(deadlocked == 0);
  CHECK(failed == 0);
  CHECK(shared.in_use() == 0);
  CHECK(tracked.count() == 0);
  CHECK(direct.in_use() == 0);
}
