// SPDX-License-Identifier: Apache-2.0
// fork() while other threads allocate: the slab layer's locks are all taken around fork
// (pthread_atfork), so a child can allocate and free through every slab_resource.
//
// Under the sanitizers too: their malloc (clang 14's ASan allocator has no fork handlers) is made
// safe in the children by a fork_gate (tests/support.hpp): there the resources sit on page
// resources (no system malloc under bsalloc's calls), checked mode is off but on the one checked
// resource, the threads hold the gate but while they churn an unchecked resource (where a system
// malloc is counted: none may happen), and every CPU's core cache exists before the first fork.
// What the fork catches mid-flight is unchanged: bsalloc's allocate and deallocate, its locks held.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
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

constexpr bool sanitized = bsalloc_test::sanitized_build;

bsalloc_test::fork_gate gate;

// The resources' upstream: the system malloc in the normal build, page resources (mmap) under
// the sanitizers (see the top).
std::pmr::memory_resource* upstream() {
  return sanitized ? static_cast<std::pmr::memory_resource*>(&bsalloc::global_page_resource())
                   : std::pmr::new_delete_resource();
}

// A child that did not finish in time: its threads' stacks, through gdb where there is one, so
// that a deadlock seen once (CI) says where it stood.
void print_stacks(pid_t pid) {
  char cmd[160];
  std::snprintf(cmd, sizeof cmd,
                "command -v gdb >/dev/null && gdb -p %d -batch -nx -ex 'thread apply all bt' "
                "</dev/null 1>&2",
                static_cast<int>(pid));
  std::fprintf(stderr, "fork child %d: no exit in time; its stacks:\n", static_cast<int>(pid));
  if (std::system(cmd) != 0) std::fprintf(stderr, "fork child: no stacks (no gdb?)\n");
}

// Runs f in a forked child that must exit 0 within `limit`; a deadlocked child is killed and
// reported (the test fails rather than hangs). No doctest assertion runs in the child.
template <class F>
int fork_and_wait(F f, std::chrono::milliseconds limit) {
  const pid_t pid = gate.fork();
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
      print_stacks(pid);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;  // deadlocked
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Allocates and frees at random; its own bookkeeping is a fixed ring (no system malloc).
void churn(slab_resource& r, unsigned seed, int rounds) {
  std::array<std::pair<void*, std::size_t>, 256> ring;
  std::size_t first = 0, count = 0;
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
    ring[(first + count++) % ring.size()] = {p, bytes};
    if (count > 200 || x % 7 == 0) {
      auto [q, n] = ring[first];
      first = (first + 1) % ring.size();
      --count;
      r.deallocate(q, n);
    }
  }
  for (; count > 0; --count, first = (first + 1) % ring.size())
    r.deallocate(ring[first].first, ring[first].second);
}

// A resource under load, and whether its churn is gated (under the sanitizers: checked mode's
// bookkeeping calls the system malloc).
struct loaded {
  slab_resource* r;
  bool gated = false;
};

void fork_under_load(std::vector<loaded> resources, int forks) {
  // Every CPU's core cache of every resource, before any fork.
  bsalloc_test::on_every_cpu([&] {
    for (const loaded& l : resources) churn(*l.r, 1, 50);
  });
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      // The gate is held throughout (first uses, resources that come and go, trim, checked
      // mode's bookkeeping) but for the churn of unchecked resources: what a fork catches.
      const bsalloc_test::fork_gate::scope held(gate);
      started.fetch_add(1);
      for (const loaded& l : resources) churn(*l.r, t * 1000, 50);  // this thread's caches
      unsigned round = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (const loaded& l : resources) {
          if (l.gated) {
            churn(*l.r, t * 1000 + round, 300);
          } else {
            const bsalloc_test::fork_gate::ungated no_malloc(&gate);  // checked (support.hpp)
            churn(*l.r, t * 1000 + round, 300);
          }
        }
        if (++round % 8 == 0) {  // resources come and go too (registry, slots)
          slab_resource temp(std::pmr::new_delete_resource());
          churn(temp, round, 100);
        }
        if (round % 5 == 0) (void)resources[round % resources.size()].r->trim();
      }
    });
  while (started.load() < 4) std::this_thread::yield();  // no fork meets a thread's start
  int deadlocked = 0, failed = 0;
  for (int i = 0; i < forks; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const int rc = fork_and_wait(
        [&] {
          for (const loaded& l : resources) churn(*l.r, 7u + static_cast<unsigned>(i), 2000);
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
  CHECK(bsalloc_test::fork_gate::ungated_calls() == 0);  // the gate's premise (support.hpp)
  for (const loaded& l : resources) l.r->check_invariants();
}

}  // namespace

slab_resource_options unchecked() {
  slab_resource_options o;
  o.checked = false;  // explicit: Debug builds (the sanitizers') check by default
  return o;
}

TEST_CASE("fork under load: 40 children allocate and free through every slab_resource") {
  slab_resource plain(std::pmr::pool_options{}, unchecked(), upstream());
  slab_resource_options off = unchecked();
  off.thread_cache = false;
  slab_resource uncached(std::pmr::pool_options{}, off, upstream());
  slab_resource_options check;
  check.checked = true;
  slab_resource checked(std::pmr::pool_options{}, check, upstream());
  std::pmr::unsynchronized_pool_resource pool(upstream());  // not thread-safe: calls serialised
  slab_resource_options few = unchecked();
  few.caches = 1;
  slab_resource serial(std::pmr::pool_options{}, few, &pool);
  fork_under_load({{&plain}, {&uncached}, {&checked, sanitized}, {&serial}}, 40);
}

// Over global_page_resource(): its own lock is the page layer's, taken by the page layer's
// fork handlers.
TEST_CASE("fork under load over the default upstream") {
  slab_resource dflt(std::pmr::pool_options{}, unchecked());
  fork_under_load({{&dflt}}, 30);
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

// The gate's premise check (support.hpp) can fail: a system malloc and free inside an ungated
// stretch are counted under the sanitizers (which are what the check is for).
TEST_CASE("fork gate: a system malloc inside an ungated stretch is seen") {
  if (!sanitized) return;
  const std::size_t before = bsalloc_test::fork_gate::ungated_calls();
  {
    const bsalloc_test::fork_gate::ungated no_malloc(nullptr, false);  // quiet
    auto* volatile p = new int(7);
    delete p;
  }
  CHECK(bsalloc_test::fork_gate::ungated_calls() - before == 2);
  delete new int(8);  // outside: not counted
  CHECK(bsalloc_test::fork_gate::ungated_calls() - before == 2);
}
