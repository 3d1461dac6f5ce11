// SPDX-License-Identifier: Apache-2.0
// The page layer's newer parts: the process page map, run metadata (usable_size, find_run,
// deallocate_run), the run cache, in-place resize, fault injection in the OS layer, huge-page
// alignment, the background purger, and what a large allocation makes resident.
#include <bsalloc/page_map.hpp>
#include <bsalloc/page_resource.hpp>

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::page_resource_options;
using bsalloc::page_size;

namespace {

std::byte* at(void* p, std::size_t pages) {
  return static_cast<std::byte*>(p) + pages * page_size;
}

using bsalloc_test::pin_to_this_cpu;

std::size_t resident_pages(void* p, std::size_t bytes) {
  std::vector<unsigned char> vec(bytes / page_size);
  REQUIRE(::mincore(p, bytes, vec.data()) == 0);
  return static_cast<std::size_t>(
      std::count_if(vec.begin(), vec.end(), [](unsigned char c) { return c & 1; }));
}

std::uint64_t seed() {
  return bsalloc_test::test_seed("test_page_layer");
}

}  // namespace

TEST_CASE("page map: the owner of any address, and 'not bsalloc memory', in O(1)") {
  void* mem = ::mmap(nullptr, 4 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto fixed =
      std::make_unique<page_resource>(std::span<std::byte>(static_cast<std::byte*>(mem), 4 << 20));
  page_resource os;
  void* a = fixed->allocate_pages(5);
  void* b = os.allocate_pages(7);
  for (std::size_t i = 0; i < 5; ++i) CHECK(page_resource::owner_of(at(a, i) + 100) == fixed.get());
  for (std::size_t i = 0; i < 7; ++i) CHECK(bsalloc::page_map_lookup(at(b, i)) == &os);
  CHECK(fixed->owns(a));
  CHECK(!os.owns(a));
  int on_stack = 0;
  std::vector<int> on_heap(10);
  CHECK(page_resource::owner_of(&on_stack) == nullptr);
  CHECK(page_resource::owner_of(on_heap.data()) == nullptr);
  CHECK(page_resource::owner_of(nullptr) == nullptr);
  CHECK(page_resource::owner_of(reinterpret_cast<void*>(std::uintptr_t{1} << 50)) == nullptr);
  CHECK(page_resource::owner_of(mem) == nullptr);  // the buffer's metadata pages
  // Run metadata: any byte of a run finds the run; usable_size answers at its start.
  for (std::size_t i = 0; i < 7; ++i) {
    const auto run = os.find_run(at(b, i) + 17);
    REQUIRE(run);
    CHECK(run->start == b);
    CHECK(run->pages == 7);
    CHECK(!run->cached);
  }
  CHECK(os.usable_size(b) == 7 * page_size);
  CHECK(fixed->usable_size(a) == 5 * page_size);
  CHECK_THROWS_AS(os.usable_size(a), std::invalid_argument);  // another resource's
  std::pmr::memory_resource& mr = os;
  void* c = mr.allocate(20000);
  CHECK(os.usable_size(c) >= 20000);
  os.deallocate_run(c);  // no size, as free() has none
  CHECK_THROWS_AS(os.deallocate_run(c), std::invalid_argument);
  fixed->deallocate_pages(a, 5);
  CHECK(!fixed->find_run(a));
  fixed->check_invariants();
  os.check_invariants();
  // Gone with the resource or the region.
  fixed.reset();
  CHECK(page_resource::owner_of(at(a, 1)) == nullptr);
  os.deallocate_pages(b, 7);
  os.trim();
  CHECK(page_resource::owner_of(b) == nullptr);
  ::munmap(mem, 4 << 20);
}

TEST_CASE("OS regions are aligned to 2 MiB at least") {
  page_resource res(page_resource_options{.os_region_bytes = 64 << 10, .huge_pages = true});
  void* p = res.allocate_pages(1);
  for (const auto& r : res.stats().regions) CHECK(r.start % (2 << 20) == 0);
  res.deallocate_pages(p, 1);
}

TEST_CASE("run cache: churn reuses runs without splitting or merging") {
  pin_to_this_cpu pin;
  page_resource res(page_resource_options{.cache_bytes_per_core = 4 << 20});
  std::vector<void*> runs(65);
  for (std::size_t n = 1; n <= 64; ++n) runs[n] = res.allocate_pages(n);
  for (std::size_t n = 1; n <= 64; n += 3) res.deallocate_pages(runs[n], n);
  const auto warm = res.stats();
  std::size_t expect = 0;
  for (std::size_t n = 1; n <= 64; n += 3) expect += n * page_size;
  CHECK(warm.cached_bytes == expect);
  CHECK(warm.allocated_bytes + warm.cached_bytes == (64 * 65 / 2) * page_size);
  CHECK(warm.core_cached_bytes.at(static_cast<std::size_t>(::sched_getcpu()) %
                                  warm.core_cached_bytes.size()) == expect);
  CHECK(res.find_run(runs[4])->cached);
  CHECK(res.find_block(runs[4])->cached);
  res.check_invariants();
  // Double free of a cached run is refused.
  CHECK_THROWS_AS(res.deallocate_pages(runs[4], 4), std::invalid_argument);
  for (int round = 0; round < 200; ++round)
    for (std::size_t n = 1; n <= 64; n += 3) {
      void* p = res.allocate_pages(n);
      CHECK(p == runs[n]);  // the same run back: newest first, this core's bin
      std::memset(p, round, n * page_size);
      res.deallocate_pages(p, n);
    }
  const auto after = res.stats();
  CHECK(after.free_blocks == warm.free_blocks);  // no split, no merge
  CHECK(after.free_bytes == warm.free_bytes);
  res.check_invariants();
  // flush_cache gives everything back to the buddy lists.
  for (std::size_t n = 2; n <= 64; n += 3) res.deallocate_pages(runs[n], n);
  for (std::size_t n = 3; n <= 64; n += 3) res.deallocate_pages(runs[n], n);
  res.flush_cache();
  CHECK(res.stats().cached_bytes == 0);
  CHECK(bsalloc_test::fully_coalesced(res));
  res.check_invariants();
}

TEST_CASE("run cache: bounded, counted as retained, purged by the policy and trim()") {
  pin_to_this_cpu pin;
  page_resource res(page_resource_options{.retain_bytes = 64 << 10,
                                          .purge_interval = std::chrono::milliseconds(0),
                                          .cache_bytes_per_core = 256 << 10});
  std::vector<void*> v;
  for (int i = 0; i < 100; ++i) v.push_back(res.allocate_pages(4));
  for (void* p : v) std::memset(p, 1, 4 * page_size);
  for (void* p : v) {
    res.deallocate_pages(p, 4);
    const auto s = res.stats();
    CHECK(s.cached_bytes <= 256 << 10);
    // Beyond retain_bytes the policy ran on the next deallocation that reached the lock.
    CHECK(s.cached_bytes + s.dirty_free_bytes <= (64 << 10) + (64 + 4) * page_size);
  }
  res.check_invariants();
  CHECK(res.stats().purged_bytes > 0);
  res.trim();
  const auto s = res.stats();
  CHECK(s.cached_bytes == 0);
  CHECK(s.dirty_free_bytes == 0);
  CHECK(s.free_purged_bytes == s.free_bytes);
  res.check_invariants();
}

TEST_CASE("run cache: misses and overflowed frees are counted") {
  pin_to_this_cpu pin;  // one core's cache sees every call
  page_resource res(page_resource_options{.cache_bytes_per_core = 16 * page_size});
  auto counters = [&] { return res.stats().run_cache; };
  void* p = res.allocate_pages(4);
  CHECK(counters().misses == 1);
  res.deallocate_pages(p, 4);
  CHECK(counters().overflows == 0);
  void* q = res.allocate_pages(4);  // a hit
  CHECK(q == p);
  CHECK(counters().misses == 1);
  std::vector<void*> more{q};
  for (int i = 0; i < 4; ++i) more.push_back(res.allocate_pages(4));
  CHECK(counters().misses == 5);
  for (void* r : more) res.deallocate_pages(r, 4);
  CHECK(counters().overflows == 1);  // 4 runs of 4 pages fill the budget; the fifth goes on
  CHECK(res.stats().cached_bytes == 16 * page_size);
  CHECK(to_string(res.stats()).find("5 misses, 1 overflowed") != std::string::npos);
  // Runs of more than max_cached_run_pages, and a resource without a cache, count nothing.
  res.deallocate_pages(res.allocate_pages(bsalloc::max_cached_run_pages + 1),
                       bsalloc::max_cached_run_pages + 1);
  CHECK(counters().misses == 5);
  CHECK(counters().overflows == 1);
  page_resource plain;
  plain.deallocate_pages(plain.allocate_pages(1), 1);
  CHECK(plain.stats().run_cache.misses + plain.stats().run_cache.overflows == 0);
  CHECK(to_string(plain.stats()).find("misses") == std::string::npos);
  res.check_invariants();
}

TEST_CASE("run cache: a full fixed buffer drains the caches before failing") {
  void* mem = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  {
    page_resource res(std::span<std::byte>(static_cast<std::byte*>(mem), 1 << 20));
    // A buffer resource has no cache by default; the caches matter for OS resources. Still,
    // every page can be had again after frees.
    std::vector<void*> v;
    try {
      for (;;) v.push_back(res.allocate_pages(1));
    } catch (const std::bad_alloc&) {
    }
    const std::size_t n = v.size();
    for (void* p : v) res.deallocate_pages(p, 1);
    void* big = res.allocate_pages(n / 2);
    res.deallocate_pages(big, n / 2);
    res.check_invariants();
  }
  ::munmap(mem, 1 << 20);
  // An OS resource whose cache holds runs: a request no cached run fits is served after the
  // caches are drained, without a new region when the old one suffices.
  page_resource res(page_resource_options{
      .os_region_bytes = 1 << 20, .grow_from_os = true, .cache_bytes_per_core = 1 << 20});
  std::vector<void*> v;
  while (res.stats().os_maps < 2) v.push_back(res.allocate_pages(8));
  const auto maps = res.stats().os_maps;
  for (void* p : v) res.deallocate_pages(p, 8);
  CHECK(res.stats().cached_bytes > 0);
  void* big = res.allocate_pages(200);
  CHECK(res.stats().os_maps == maps);
  res.deallocate_pages(big, 200);
  res.check_invariants();
}

TEST_CASE("resize_pages: grow into free buddy pages, shrink by giving the tail back") {
  page_resource res;
  void* p = res.allocate_pages(3);
  std::memset(p, 0x11, 3 * page_size);
  CHECK(res.resize_pages(p, 3, 4));  // its buddy block's fourth page is free
  CHECK(res.usable_size(p) == 4 * page_size);
  CHECK_THROWS_AS(res.deallocate_pages(p, 3), std::invalid_argument);
  CHECK(static_cast<unsigned char*>(p)[3 * page_size - 1] == 0x11);
  std::memset(at(p, 3), 0x22, page_size);
  res.check_invariants();
  CHECK(res.resize_pages(p, 4, 13));
  std::memset(at(p, 4), 0x33, 9 * page_size);
  res.check_invariants();
  void* q = res.allocate_pages(1);  // likely right behind the run now
  const bool behind = q == at(p, 13);
  if (behind) CHECK_FALSE(res.resize_pages(p, 13, 14));  // refused, nothing changed
  CHECK(res.usable_size(p) == 13 * page_size);
  res.check_invariants();
  CHECK(res.resize_pages(p, 13, 2));  // shrink: pages 2..13 go back
  CHECK(res.usable_size(p) == 2 * page_size);
  CHECK(static_cast<unsigned char*>(p)[0] == 0x11);
  CHECK(res.stats().allocated_bytes == 3 * page_size);
  res.check_invariants();
  CHECK_THROWS_AS(res.resize_pages(at(p, 1), 1, 2), std::invalid_argument);
  res.deallocate_pages(p, 2);
  res.deallocate_pages(q, 1);
  res.check_invariants();
  CHECK(res.stats().allocated_bytes == 0);
  CHECK(bsalloc_test::fully_coalesced(res));
}

TEST_CASE("resize_pages: randomised against a model") {
  const auto s = seed();
  std::mt19937_64 rng(s);
  page_resource res(page_resource_options{.os_region_bytes = 4 << 20});
  struct live {
    unsigned char* p;
    std::size_t n;
    unsigned char fill;
  };
  std::vector<live> v;
  for (int i = 0; i < 4000; ++i) {
    const unsigned op = rng() % 4;
    if (op == 0 || v.empty()) {
      const std::size_t n = 1 + rng() % 40;
      auto* p = static_cast<unsigned char*>(res.allocate_pages(n));
      const auto fill = static_cast<unsigned char>(rng());
      std::memset(p, fill, n * page_size);
      v.push_back({p, n, fill});
    } else {
      live& l = v[rng() % v.size()];
      for (std::size_t b = 0; b < l.n * page_size; b += 997) REQUIRE(l.p[b] == l.fill);
      if (op == 1) {
        res.deallocate_pages(l.p, l.n);
        l = v.back();
        v.pop_back();
      } else {
        const std::size_t m = 1 + rng() % 60;
        if (res.resize_pages(l.p, l.n, m)) {
          if (m > l.n) std::memset(l.p + l.n * page_size, l.fill, (m - l.n) * page_size);
          l.n = m;
        }
        REQUIRE(res.usable_size(l.p) == l.n * page_size);
      }
    }
    if (i % 500 == 0) res.check_invariants();
  }
  for (auto& l : v) res.deallocate_pages(l.p, l.n);
  res.check_invariants();
  CHECK(res.stats().allocated_bytes == 0);
}

TEST_CASE("fault injection: every failing mmap, madvise and munmap is survived") {
  auto& inj = bsalloc::detail::os_fault_injection;
  auto workload = [](page_resource& res) {
    std::vector<std::pair<void*, std::size_t>> v;
    std::size_t failures = 0;
    for (std::size_t i = 0; i < 64; ++i) {
      const std::size_t n = 1 + (i * 37) % 90;
      try {
        void* p = res.allocate_pages(n);
        std::memset(p, 3, n * page_size);
        v.emplace_back(p, n);
      } catch (const std::bad_alloc&) {
        ++failures;
      }
    }
    res.check_invariants();
    for (auto [p, n] : v) res.deallocate_pages(p, n);
    res.check_invariants();
    return failures;
  };
  for (std::atomic<long>* which : {&inj.mmap, &inj.madvise, &inj.munmap}) {
    for (long nth = 1; nth <= 6; ++nth) {
      CAPTURE(nth);
      page_resource res(page_resource_options{.os_region_bytes = 64 << 10,
                                              .retain_bytes = 0,
                                              .purge_interval = std::chrono::milliseconds(0)});
      which->store(nth);
      const std::size_t failures = workload(res);
      res.trim();
      res.check_invariants();
      CHECK(which->load() == 0);  // the Nth call happened and failed
      which->store(0);
      if (which == &inj.mmap)
        CHECK(failures == 1);  // the one failed grow (region or page-map leaf): std::bad_alloc
      else
        CHECK(failures == 0);
      // Whatever failed, a second trim returns everything: nothing leaked.
      res.trim();
      const auto s = res.stats();
      CHECK(s.allocated_bytes == 0);
      CHECK(s.os_mapped_bytes == 0);
      CHECK(s.managed_bytes == 0);
      CHECK(s.os_maps == s.os_unmaps);
    }
  }
}

TEST_CASE("a large allocation touches no page the caller does not") {
  page_resource res;
  std::pmr::memory_resource& mr = res;
  std::vector<void*> blocks;
  for (int i = 0; i < 200; ++i) {
    void* p = mr.allocate(256 << 10, 64);
    std::memset(p, 1, 64);  // the first 64 bytes only
    blocks.push_back(p);
  }
  std::size_t resident = 0;
  for (void* p : blocks) resident += resident_pages(p, 256 << 10);
  CHECK(resident == blocks.size());  // one page each: the one written
  for (void* p : blocks) mr.deallocate(p, 256 << 10, 64);
}

TEST_CASE("background purger: an idle process gives freed memory back") {
  page_resource res(page_resource_options{.purge_interval = std::chrono::milliseconds(50),
                                          .cache_bytes_per_core = 1 << 20,
                                          .background_purge = true});
  std::vector<void*> v;
  for (int i = 0; i < 64; ++i) v.push_back(res.allocate_pages(32));
  for (void* p : v) std::memset(p, 1, 32 * page_size);
  for (void* p : v) res.deallocate_pages(p, 32);
  CHECK(res.stats().dirty_free_bytes + res.stats().cached_bytes > 0);  // below retain_bytes
  const auto t0 = std::chrono::steady_clock::now();
  while (res.stats().dirty_free_bytes + res.stats().cached_bytes != 0 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(res.stats().dirty_free_bytes + res.stats().cached_bytes == 0);
  MESSAGE("purged after ", std::chrono::duration<double, std::milli>(waited).count(), " ms");
  res.check_invariants();
  // Fork-safe: the child has no purger thread, and works.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    void* p = res.allocate_pages(3);
    res.deallocate_pages(p, 3);
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(bsalloc_test::wait_child(pid, status) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("huge pages: the policy does not split a huge page for a few KiB; trim() does") {
  for (bool huge : {false, true}) {
    CAPTURE(huge);
    page_resource res(page_resource_options{
        .retain_bytes = 0, .purge_interval = std::chrono::milliseconds(0), .huge_pages = huge});
    void* p = res.allocate_pages(1);
    void* q = res.allocate_pages(1);
    std::memset(p, 1, page_size);
    std::memset(q, 1, page_size);
    res.deallocate_pages(p, 1);  // a one-page free block next to a live page: the policy runs
    CHECK(res.stats().dirty_free_bytes == (huge ? page_size : 0));
    res.trim();
    CHECK(res.stats().dirty_free_bytes == 0);
    res.deallocate_pages(q, 1);
    res.check_invariants();
  }
}

TEST_CASE("run cache under threads: cross-core frees, stats and invariants meanwhile") {
  page_resource res(page_resource_options{.retain_bytes = 1 << 20,
                                          .purge_interval = std::chrono::milliseconds(1),
                                          .cache_bytes_per_core = 512 << 10});
  constexpr int threads = 4;
  // Each thread frees the runs the previous one allocated (handed over through a slot), so
  // runs go back on other cores than the one they came from.
  std::vector<std::atomic<void*>> slots(threads);
  for (auto& s : slots) s = nullptr;
  std::atomic<int> bad{0};
  std::vector<std::thread> pool;
  const std::uint64_t seed0 = seed();
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(seed0 + static_cast<std::uint64_t>(t)));
      for (int i = 0; i < 4000; ++i) {
        const std::size_t n = 1 + rng() % 8;
        auto* p = static_cast<unsigned char*>(res.allocate_pages(n));
        p[0] = static_cast<unsigned char>(n);
        p[n * page_size - 1] = static_cast<unsigned char>(n);
        if (void* old = slots[static_cast<std::size_t>(t)].exchange(p)) {
          auto* o = static_cast<unsigned char*>(old);
          const std::size_t on = o[0];
          if (o[on * page_size - 1] != on) bad.fetch_add(1);
          res.deallocate_pages(o, on);
        }
        if (void* other = slots[static_cast<std::size_t>((t + 1) % threads)].exchange(nullptr)) {
          auto* o = static_cast<unsigned char*>(other);
          res.deallocate_pages(o, o[0]);
        }
        if (i % 1000 == 0 && t == 0) {
          (void)res.stats();
          res.check_invariants();
        }
      }
    });
  for (auto& th : pool) th.join();
  for (auto& s : slots)
    if (void* p = s.exchange(nullptr)) res.deallocate_pages(p, static_cast<unsigned char*>(p)[0]);
  CHECK(bad.load() == 0);
  res.check_invariants();
  CHECK(res.stats().allocated_bytes == 0);
  res.flush_cache();
  CHECK(bsalloc_test::fully_coalesced(res));
}

TEST_CASE("memory_resource interface: runs over 16 pages rounded to eighths of a power of two") {
  CHECK(page_resource::class_pages(1) == 1);
  CHECK(page_resource::class_pages(16) == 16);
  CHECK(page_resource::class_pages(17) == 18);
  CHECK(page_resource::class_pages(33) == 36);
  CHECK(page_resource::class_pages(64) == 64);
  CHECK(page_resource::class_pages(65) == 72);
  for (std::size_t n = 1; n <= 4096; ++n) {
    const std::size_t c = page_resource::class_pages(n);
    REQUIRE(c >= n);
    REQUIRE(8 * (c - n) <= n);  // at most 1/8 more
    REQUIRE(page_resource::class_pages(c) == c);
  }
  pin_to_this_cpu pin;  // the run cache is per core
  page_resource res(page_resource_options{.cache_bytes_per_core = std::size_t{4} << 20});
  std::pmr::memory_resource& mr = res;
  void* p = mr.allocate(17 * page_size - 100, 64);
  CHECK(res.usable_size(p) == 18 * page_size);
  std::memset(p, 1, 64);
  CHECK(resident_pages(p, 18 * page_size) == 1);  // the rounding touches nothing
  mr.deallocate(p, 17 * page_size - 100, 64);
  // The cached run serves the next request of the same class.
  void* q = mr.allocate(18 * page_size, 64);
  CHECK(q == p);
  CHECK_THROWS_AS(res.deallocate_pages(q, 17), std::invalid_argument);  // the count is 18
  res.deallocate_pages(q, 18);
  res.check_invariants();
}
