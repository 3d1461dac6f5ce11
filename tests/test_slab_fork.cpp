// SPDX-License-Identifier: Apache-2.0
// fork() while other threads allocate: the slab layer's locks are all taken around fork
// (pthread_atfork), so a child can allocate and free through every slab_resource.
#include <bsalloc/slab_resource.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory_resource>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

constexpr bool sanitizer_malloc_forks_badly = bsalloc_test::fork_under_load_unreliable;

// Runs f in a forked child that must exit 0 within `limit`; a deadlocked child is killed and
// reported (the test fails rather than hangs).
template <class F>
int fork_and_wait(F f, std::chrono::milliseconds limit) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::alarm(static_cast<unsigned>(limit.count() / 1000 + 2));  // a second line of defence
    // Nothing may unwind out of the child into the test runner (which would go on running the
    // parent's test in the child): an exception is reported and is the child's failure.
    try {
      f();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "fork child: exception: %s\n", e.what());
      ::_exit(3);
    } catch (...) {
      std::fprintf(stderr, "fork child: unknown exception\n");
      ::_exit(3);
    }
    ::_exit(0);
  }
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;  // deadlocked
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void churn(slab_resource& r, unsigned seed, int rounds) {
  std::vector<std::pair<void*, std::size_t>> live;
  // Initialised by the parent's first call, before any fork.
  static const auto base = static_cast<unsigned>(bsalloc_test::test_seed("test_slab_fork"));
  unsigned x = (seed + base) * 2654435761u + 1;
  if (x == 0) x = 1;  // xorshift's one fixed point
  for (int i = 0; i < rounds; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    const std::size_t bytes = x % 16 == 0 ? 70000 + x % 1000 : 8 + x % 3000;
    void* p = r.allocate(bytes);
    std::memset(p, 0x5a, std::min<std::size_t>(bytes, 64));
    live.emplace_back(p, bytes);
    if (live.size() > 200 || x % 7 == 0) {
      auto [q, n] = live.front();
      live.erase(live.begin());
      r.deallocate(q, n);
    }
  }
  for (auto& [p, n] : live) r.deallocate(p, n);
}

void fork_under_load(std::vector<slab_resource*> resources, int forks) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      unsigned round = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (slab_resource* r : resources) churn(*r, t * 1000 + round, 300);
        if (++round % 8 == 0) {  // resources come and go too (registry, slots)
          slab_resource temp(std::pmr::new_delete_resource());
          churn(temp, round, 100);
        }
        if (round % 5 == 0) (void)resources[round % resources.size()]->trim();
      }
    });
  int deadlocked = 0, failed = 0;
  for (int i = 0; i < forks; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const int rc = fork_and_wait(
        [&] {
          for (slab_resource* r : resources) churn(*r, 7u + static_cast<unsigned>(i), 2000);
          slab_resource fresh(std::pmr::new_delete_resource());
          churn(fresh, 3, 2000);
        },
        std::chrono::milliseconds(10000));
    if (rc == -1)
      ++deadlocked;
    else if (rc != 0)
      ++failed;
  }
  stop = true;
  for (auto& t : threads) t.join();
  CHECK(deadlocked == 0);
  CHECK(failed == 0);
  for (slab_resource* r : resources) r->check_invariants();
}

}  // namespace

TEST_CASE("fork under load: 40 children allocate and free through every slab_resource" *
          doctest::skip(sanitizer_malloc_forks_badly)) {
  slab_resource plain(std::pmr::new_delete_resource());
  slab_resource_options off;
  off.thread_cache = false;
  slab_resource uncached(std::pmr::pool_options{}, off, std::pmr::new_delete_resource());
  slab_resource_options check;
  check.checked = true;
  slab_resource checked(std::pmr::pool_options{}, check, std::pmr::new_delete_resource());
  std::pmr::unsynchronized_pool_resource pool;  // not thread-safe: calls serialised
  slab_resource_options few;
  few.caches = 1;
  slab_resource serial(std::pmr::pool_options{}, few, &pool);
  fork_under_load({&plain, &uncached, &checked, &serial}, 40);
}

// Over global_page_resource(): its own lock is the page layer's, taken by the page layer's
// fork handlers.
TEST_CASE("fork under load over the default upstream" *
          doctest::skip(sanitizer_malloc_forks_badly)) {
  slab_resource dflt;
  fork_under_load({&dflt}, 30);
}

// Runs in every build, the ASan one included (no other thread holds the sanitizer's malloc
// lock): the fork handlers leave every lock of both layers usable in parent and child, for
// resources whose caches and objects were in use at the fork.
TEST_CASE("fork with no other thread running: parent and child both go on allocating") {
  slab_resource dflt;
  slab_resource plain(std::pmr::new_delete_resource());
  std::vector<void*> held;
  for (int i = 0; i < 1000; ++i)
    held.push_back(dflt.allocate(8 + static_cast<std::size_t>(i % 500)));
  for (int f = 0; f < 5; ++f) {
    const int rc = fork_and_wait(
        [&] {
          churn(dflt, 11u + static_cast<unsigned>(f), 3000);
          churn(plain, 13u + static_cast<unsigned>(f), 3000);
          for (std::size_t i = 0; i < held.size(); ++i)  // objects from before the fork
            dflt.deallocate(held[i], 8 + i % 500);
          dflt.check_invariants();
        },
        std::chrono::milliseconds(20000));
    CHECK(rc == 0);
    churn(dflt, 17u + static_cast<unsigned>(f), 1000);  // the parent goes on too
  }
  for (std::size_t i = 0; i < held.size(); ++i) dflt.deallocate(held[i], 8 + i % 500);
  dflt.check_invariants();
  plain.check_invariants();
}
