// SPDX-License-Identifier: Apache-2.0
// Many live slab_resources per thread: dense slots, each thread's table holds them all, so no
// cache is ever evicted or rebuilt; caches of destroyed resources do not outlive them; core caches
// are created on the first use of their CPU.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <malloc.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <memory_resource>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

std::uint64_t test_seed() {
  return bsalloc_test::test_seed("test_slab_many");
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool malloc_counts = false;  // the sanitizers' malloc keeps no mallinfo
#else
constexpr bool malloc_counts = true;
#endif

std::size_t malloc_in_use() {
  return mallinfo2().uordblks;
}

}  // namespace

TEST_CASE("100 live resources, one thread alternating between any two: no cache rebuilt") {
  std::vector<std::unique_ptr<slab_resource>> res;
  for (int i = 0; i < 100; ++i)
    res.push_back(std::make_unique<slab_resource>(std::pmr::new_delete_resource()));
  std::mt19937_64 rng(test_seed());
  std::vector<void*> held;
  for (int pair = 0; pair < 200; ++pair) {
    slab_resource& a = *res[rng() % res.size()];
    slab_resource& b = *res[rng() % res.size()];
    for (int i = 0; i < 200; ++i) {
      const std::size_t bytes = 16 + (rng() % 16) * 16;
      void* p = a.allocate(bytes);
      void* q = b.allocate(bytes);
      a.deallocate(p, bytes);
      b.deallocate(q, bytes);
    }
  }
  std::size_t used = 0;
  for (auto& r : res) {
    const auto s = r->stats();
    if (s.thread_caches_created == 0) continue;  // never picked
    ++used;
    CHECK(s.thread_caches_created == 1);  // built once, never evicted
    CHECK(s.thread_caches == 1);
    r->check_invariants();
  }
  CHECK(used > 90);
}

TEST_CASE("resources created and destroyed by the thousand: slots reused, memory bounded") {
  const std::size_t before = malloc_in_use();
  std::size_t after_first = 0;
  for (int i = 0; i < 3000; ++i) {
    slab_resource r(std::pmr::new_delete_resource());
    void* p = r.allocate(64);
    r.deallocate(p, 64);
    CHECK(r.stats().thread_caches == 1);
    if (i == 99) after_first = malloc_in_use();
  }
  if (malloc_counts) {
    // Caches of destroyed resources do not accumulate: 2900 more resources cost nothing more.
    CHECK(malloc_in_use() <= after_first + 64 * 1024);
    CHECK(malloc_in_use() <= before + 256 * 1024);
  }
}

TEST_CASE("core caches are created on the first use of their CPU") {
  slab_resource_options o;
  o.caches = 4096;
  const std::size_t before = malloc_in_use();
  std::vector<std::unique_ptr<slab_resource>> res;
  for (int i = 0; i < 50; ++i)
    res.push_back(std::make_unique<slab_resource>(std::pmr::pool_options{}, o,
                                                  std::pmr::new_delete_resource()));
  CHECK(res[0]->stats().core_caches == 0);
  if (malloc_counts) {
    const std::size_t each = (malloc_in_use() - before) / res.size();
    MESSAGE("bytes per empty resource with 4096 core caches: " << each);
    CHECK(each < 64 * 1024);  // the pointers to 4096 cores, the state: no queue, no lists
  }
  void* p = res[0]->allocate(100);
  CHECK(res[0]->stats().core_caches == 1);
  res[0]->deallocate(p, 100);
  res[0]->check_invariants();
}

// The first use of a CPU by a thread costs its core cache (lists and a remote-free queue of
// remote_queue_capacity messages, 128 by default: 8 KiB of nodes) and the thread's cache: about
// 18 KiB, not the 74 KiB of a 1024-message queue. One resource per subsystem pays it per
// resource.
TEST_CASE("a resource's first use costs a few KiB besides its slabs") {
  bsalloc::page_resource pages;  // slabs from mmap: not in the malloc counts
  std::vector<std::unique_ptr<slab_resource>> res;
  for (int i = 0; i < 16; ++i) res.push_back(std::make_unique<slab_resource>(&pages));
  std::vector<std::pair<slab_resource*, void*>> held;
  const std::size_t before = malloc_in_use();
  for (auto& r : res) held.emplace_back(r.get(), r->allocate(64));
  const std::size_t each = (malloc_in_use() - before) / res.size();
  MESSAGE("bytes per resource for its first use: " << each);
  if (malloc_counts) CHECK(each < 24 * 1024);
  for (auto& r : res) CHECK(r->stats().core_caches >= 1);
  for (auto [r, p] : held) r->deallocate(p, 64);
  for (auto& r : res) r->check_invariants();
}

TEST_CASE("threads exit while the resources they used are destroyed") {
  for (int round = 0; round < 20; ++round) {
    std::vector<std::unique_ptr<slab_resource>> res;
    for (int i = 0; i < 8; ++i)
      res.push_back(std::make_unique<slab_resource>(std::pmr::new_delete_resource()));
    std::atomic<int> done{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&] {
        for (auto& r : res)
          for (int i = 0; i < 300; ++i) r->deallocate(r->allocate(24 + i % 200), 24 + i % 200);
        done.fetch_add(1);
        // exits now, flushing its caches, while the main thread destroys the resources
      });
    while (done.load() < 4) std::this_thread::yield();
    res.clear();
    for (auto& t : threads) t.join();
  }
}
