// SPDX-License-Identifier: Apache-2.0
#include <bsalloc/slab_resource.hpp>

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <csignal>
#include <cstring>
#include <functional>
#include <list>
#include <map>
#include <memory_resource>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <doctest/doctest.h>

#include <fmt/format.h>
#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

slab_resource_options knobs(bool checked = false) {
  slab_resource_options o;
  o.checked = checked;
  return o;
}

using bsalloc_test::fully_coalesced;
using bsalloc_test::run_in_child;

bool pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof(set), &set) == 0 && ::sched_getcpu() == cpu;
}

// Two CPUs this process may run on (the lowest two of its affinity mask, not necessarily 0
// and 1). The cross-core tests need them: with fewer they fail rather than pass unrun.
std::array<int, 2> two_usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof(set), &set) == 0);
  std::array<int, 2> cpus{-1, -1};
  std::size_t found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; ++c)
    if (CPU_ISSET(c, &set)) cpus[found++] = c;
  REQUIRE_MESSAGE(found == 2, "a cross-core test needs two usable CPUs");
  return cpus;
}

// Both modes in every build: checked mode is the Debug (sanitizer) builds' default, and it takes
// the slow path on every call; the unchecked fast path is what ships.
constexpr bool both_modes[] = {false, true};

}  // namespace

TEST_CASE("size classes: 8 B to 64 KiB, waste at most 12.5 % above 64 B") {
  int prev = -1;
  for (std::size_t n = 1; n <= slab_resource::max_pool_block; ++n) {
    const int c = slab_resource::size_class(n, 1);
    REQUIRE(c >= prev);
    prev = c;
    const std::size_t size = slab_resource::class_size(c);
    REQUIRE(size >= n);
    if (n > 64)
      REQUIRE((size - n) * 8 <= n);  // waste <= 12.5 % of the request
    else
      REQUIRE(size - n < 8);
  }
  CHECK(slab_resource::size_class(slab_resource::max_pool_block + 1, 8) == -1);
  CHECK(slab_resource::size_class(64, 8192) == -1);  // beyond a slab's alignment: upstream
  CHECK(slab_resource::class_size(slab_resource::size_class(0, 1)) == 16);  // any alignment <= 16
  CHECK(slab_resource::class_size(slab_resource::size_class(24, 16)) == 32);
}

TEST_CASE("every class and alignment: aligned, writable, distinct") {
  page_resource pages;
  for (bool checked : {false, true}) {
    slab_resource res(std::pmr::pool_options{0, slab_resource::max_pool_block}, knobs(checked),
                      &pages);
    CHECK(res.options().largest_required_pool_block == slab_resource::max_pool_block);
    std::vector<std::tuple<void*, std::size_t, std::size_t>> live;
    std::size_t expect_large = 0;
    for (std::size_t align = 1; align <= 16384; align *= 2) {
      for (std::size_t n :
           {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8}, std::size_t{24},
            std::size_t{100}, std::size_t{1000}, std::size_t{1025}, std::size_t{4000},
            std::size_t{20000}, std::size_t{65536}, std::size_t{70000}}) {
        for (int rep = 0; rep < 3; ++rep) {
          void* p = res.allocate(n, align);
          CHECK(reinterpret_cast<std::uintptr_t>(p) % align == 0);
          if (n > slab_resource::max_pool_block || align > 4096) ++expect_large;
          std::memset(p, static_cast<int>(n & 0xff), n);
          live.emplace_back(p, n, align);
        }
      }
    }
    // Every class, by size.
    for (int c = 0; c < 88; ++c) {
      const std::size_t n = slab_resource::class_size(c);
      void* p = res.allocate(n, 8);
      std::memset(p, 0x11, n);
      live.emplace_back(p, n, 8);
    }
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
    for (auto& [p, n, a] : live)
      ranges.emplace_back(reinterpret_cast<std::uintptr_t>(p),
                          reinterpret_cast<std::uintptr_t>(p) + std::max<std::size_t>(n, 1));
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i) CHECK(ranges[i - 1].second <= ranges[i].first);
    const auto s = res.stats();
    CHECK(s.large_objects == expect_large);  // > 64 KiB, or aligned beyond 4 KiB: upstream
    // Where each block really came from: a request no class serves is a page run of its own
    // (it starts a run of the upstream); an object of a class never does (a slab header precedes
    // it in its run).
    for (const auto& block : live) {
      const auto [p, n, a] = block;
      const auto run = pages.find_run(p);
      REQUIRE(run.has_value());
      const bool upstream_run = run->start == p;
      const bool no_class = n > slab_resource::max_pool_block || a > 4096;
      CAPTURE(std::get<1>(block));  // not the bindings: clang 14 cannot capture them
      CAPTURE(std::get<2>(block));
      CHECK(upstream_run == no_class);
    }
    res.check_invariants();
    for (auto& [p, n, a] : live) res.deallocate(p, n, a);
    res.check_invariants();
    CHECK(res.stats().objects_in_use == 0);
    CHECK(res.stats().large_objects == 0);
    CHECK(res.stats().bytes_in_use == 0);
  }
  CHECK(pages.stats().allocated_bytes == 0);
}

TEST_CASE("min_slab_bytes: small slabs for small arenas") {
  const std::size_t bytes = std::size_t{1} << 20;
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  {
    page_resource budget(std::span<std::byte>(static_cast<std::byte*>(mem), bytes));
    auto k = knobs(true);
    k.min_slab_bytes = 4096;
    slab_resource res(std::pmr::pool_options{}, k, &budget);
    // Many classes touched in a 1 MiB budget: only small slabs fit.
    std::vector<std::pair<void*, std::size_t>> held;
    std::set<int> classes;
    for (std::size_t n = 8; n <= 2048; n += 13) {
      held.emplace_back(res.allocate(n), n);
      classes.insert(slab_resource::size_class(n, alignof(std::max_align_t)));
    }
    const auto s = res.stats();
    CHECK(s.classes.size() == classes.size());
    CHECK(classes.size() >= 40);  // with 64 KiB slabs: >= 2.5 MiB, more than the budget
    CHECK(s.bytes_reserved <= classes.size() * 32768);  // one slab each, 16 objects at most 2 KiB
    for (const auto& c : s.classes)
      CHECK(c.slab_bytes == std::max<std::size_t>(4096, std::bit_ceil(c.object_size * 16)));
    res.check_invariants();
    for (auto [p, n] : held) res.deallocate(p, n);
  }
  ::munmap(mem, bytes);
  auto bad = knobs();
  bad.min_slab_bytes = 3000;
  CHECK_THROWS_AS(slab_resource(std::pmr::pool_options{}, bad, &bsalloc::global_page_resource()),
                  std::invalid_argument);
}

TEST_CASE("allocate(0) gives distinct valid pointers; bad alignment is refused") {
  slab_resource res(std::pmr::pool_options{}, knobs(), &bsalloc::global_page_resource());
  void* a = res.allocate(0);
  void* b = res.allocate(0);
  CHECK(a != nullptr);
  CHECK(a != b);
  res.deallocate(a, 0);
  res.deallocate(b, 0);
  volatile std::size_t not_pow2 = 48;
  CHECK_THROWS_AS((void)res.allocate(16, not_pow2), std::invalid_argument);
  CHECK(res.upstream_resource() == &bsalloc::global_page_resource());
}

TEST_CASE("std::pmr containers on a slab_resource") {
  page_resource pages;
  {
    slab_resource res(&pages);
    std::pmr::vector<std::pmr::string> strings(&res);
    for (int i = 0; i < 5000; ++i)
      strings.emplace_back(fmt::format("string number {} padded past the SSO buffer", i));
    std::pmr::list<int> list(&res);
    for (int i = 0; i < 10000; ++i) list.push_back(i);
    std::pmr::map<int, std::pmr::string> map(&res);
    for (int i = 0; i < 10000; ++i) map.emplace(i, strings[static_cast<std::size_t>(i % 5000)]);
    for (int i = 0; i < 10000; i += 2) map.erase(i);
    std::pmr::unordered_map<std::pmr::string, int> umap(&res);
    for (int i = 0; i < 10000; ++i)
      umap[std::pmr::string(fmt::format("key-{}-long-enough-for-the-heap", i), &res)] = i;
    CHECK(strings[4999] == "string number 4999 padded past the SSO buffer");
    CHECK(list.size() == 10000);
    CHECK(map.size() == 5000);
    CHECK(map.at(4999) == strings[4999]);
    CHECK(umap.at(std::pmr::string("key-1234-long-enough-for-the-heap")) == 1234);
    const auto s = res.stats();
    CHECK(s.objects_in_use > 30000);
    CHECK(s.bytes_reserved >= s.bytes_in_use);
    const std::string table = fmt::format("{}", s);
    CHECK(table.find("slab_resource:") != std::string::npos);
    const std::string json = fmt::format("{:j}", s);
    CHECK(json.find("\"objects_in_use\":" + std::to_string(s.objects_in_use)) != std::string::npos);
    CHECK(s.core_caches >= 1);
    CHECK(s.thread_caches_created >= 1);
    CHECK(table.find(fmt::format("{} core caches; {} thread caches created", s.core_caches,
                                 s.thread_caches_created)) != std::string::npos);
    CHECK(json.find(fmt::format("\"thread_caches_created\":{},\"core_caches\":{},",
                                s.thread_caches_created, s.core_caches)) != std::string::npos);
    CHECK(json.find("\"bin_shrinks\":" + std::to_string(s.bin_shrinks)) != std::string::npos);
    res.check_invariants();
  }
  CHECK(pages.stats().allocated_bytes == 0);  // the destructor released everything
}

TEST_CASE("frees from another core go through the remote queues, and its overflow") {
  const auto cpu = two_usable_cpus();
  const auto c0 = static_cast<std::size_t>(cpu[0]), c1 = static_cast<std::size_t>(cpu[1]);
  page_resource pages;
  for (std::size_t capacity : {std::size_t{1024}, std::size_t{1}}) {
    auto k = knobs();
    k.caches = c1 + 1;  // one cache per CPU id up to c1: c0 and c1 have caches of their own
    k.remote_queue_capacity = capacity;
    slab_resource res(std::pmr::pool_options{}, k, &pages);
    std::vector<void*> objs;
    std::thread maker([&] {
      REQUIRE(pin_to_cpu(cpu[0]));
      for (int i = 0; i < 20000; ++i) {
        void* p = res.allocate(48);
        std::memset(p, 0x7e, 48);
        objs.push_back(p);
      }
    });
    maker.join();
    std::thread freer([&] {
      REQUIRE(pin_to_cpu(cpu[1]));
      for (void* p : objs) res.deallocate(p, 48);
    });
    freer.join();  // its exit flushes its cache: everything posted to core c0
    const auto s = res.stats();
    CHECK(s.cores[c1].remote_frees_sent == 20000);
    if (capacity == 1) CHECK(s.cores[c0].remote_overflows > 0);
    res.trim();  // drains core c0's inbox and overflow stacks
    const auto t = res.stats();
    CHECK(t.cores[c0].remote_frees_received == 20000);
    CHECK(t.objects_in_use == 0);
    res.check_invariants();
  }
  CHECK(fully_coalesced(pages));
}

TEST_CASE("release() then reuse") {
  page_resource pages;
  slab_resource res(&pages);
  std::vector<void*> held;
  for (int i = 0; i < 10000; ++i)
    held.push_back(res.allocate(static_cast<std::size_t>(8 + i % 500)));
  void* big = res.allocate(std::size_t{1} << 20);
  (void)big;
  CHECK(pages.stats().allocated_bytes > 0);
  res.release();
  CHECK(pages.stats().allocated_bytes == 0);
  CHECK(res.stats().objects_in_use == 0);
  CHECK(res.stats().bytes_reserved == 0);
  res.check_invariants();
  std::pmr::vector<int> v(&res);
  v.assign(100000, 3);
  std::pmr::string s("after release, the resource serves again", &res);
  CHECK(v[99999] == 3);
  CHECK(s.size() > 30);
}

namespace {
void model_run(bool checked, std::uint64_t seed);
void hand_off_run(bool checked, std::uint64_t seed);
}  // namespace

TEST_CASE("randomised against a model: no overlap, contents kept, every byte accounted") {
  const std::uint64_t seed = bsalloc_test::test_seed("slab model");
  for (bool checked : both_modes) {
    CAPTURE(checked);
    model_run(checked, seed);
  }
}

TEST_CASE("16 threads, cross-thread frees, threads exiting while others hold their objects") {
  const std::uint64_t seed = bsalloc_test::test_seed("slab 16-thread hand-off");
  for (bool checked : both_modes) {
    CAPTURE(checked);
    hand_off_run(checked, seed);
  }
}

namespace {

void model_run(bool checked, std::uint64_t seed) {
  page_resource pages;
  {
    slab_resource res(std::pmr::pool_options{}, knobs(checked), &pages);
    struct block {
      std::size_t bytes, align;
      std::uint8_t tag;
    };
    std::map<std::uintptr_t, block> model;
    std::vector<std::uintptr_t> keys;
    std::mt19937_64 rng(seed);
    std::size_t failures = 0, live_bytes = 0;
    // What bytes_in_use must say: the class size of each small block; unchecked, the run class
    // of each large one up to 256 KiB (the large bins'); the request of every other.
    const std::size_t largest = res.options().largest_required_pool_block;
    CHECK(largest == std::size_t{32} << 10);  // the default
    // (No large bins in checked mode, nor under memcheck: res.large_bins() says which.)
    if (checked) CHECK_FALSE(res.large_bins());
    auto charged = [largest, &res](std::size_t bytes, std::size_t align) {
      const int c = slab_resource::size_class(bytes, align);
      if (c >= 0 && slab_resource::class_size(c) <= largest) return slab_resource::class_size(c);
      if (res.large_bins() && bytes <= (std::size_t{256} << 10) && align <= bsalloc::page_size)
        return bsalloc_test::large_run_bytes(bytes);
      return bytes;
    };
    auto check_block = [&](std::uintptr_t a, const block& b) {
      auto* p = reinterpret_cast<unsigned char*>(a);
      const std::size_t n = std::min<std::size_t>(b.bytes, 64);
      for (std::size_t i = 0; i < n; ++i)
        if (p[i] != b.tag || p[b.bytes - 1 - i] != b.tag) return false;
      return true;
    };
    for (int op = 0; op < 1'000'000; ++op) {
      if (keys.empty() || (rng() % 100) < (keys.size() > 20000 ? 40u : 55u)) {
        const auto r = rng() % 100;
        const std::size_t bytes = r < 70 ? rng() % 129 : r < 95 ? rng() % 4097 : rng() % 70000;
        const std::size_t align = (rng() % 8 == 0) ? std::size_t{1} << (rng() % 13) : 8;
        void* p = res.allocate(bytes, align);
        const auto a = reinterpret_cast<std::uintptr_t>(p);
        if (a % align) ++failures;
        const std::size_t extent = std::max<std::size_t>(bytes, 1);
        auto next = model.lower_bound(a);
        if (next != model.end() && next->first < a + extent) ++failures;
        if (next != model.begin()) {
          auto prev = std::prev(next);
          if (prev->first + std::max<std::size_t>(prev->second.bytes, 1) > a) ++failures;
        }
        const auto tag = static_cast<std::uint8_t>(rng());
        std::memset(p, tag, std::min<std::size_t>(bytes, 64));
        if (bytes > 64) std::memset(static_cast<char*>(p) + bytes - 64, tag, 64);
        model[a] = {bytes, align, tag};
        keys.push_back(a);
        live_bytes += charged(bytes, align);
      } else {
        const std::size_t i = rng() % keys.size();
        const auto a = keys[i];
        keys[i] = keys.back();
        keys.pop_back();
        const block b = model[a];
        if (!check_block(a, b)) ++failures;
        res.deallocate(reinterpret_cast<void*>(a), b.bytes, b.align);
        model.erase(a);
        live_bytes -= charged(b.bytes, b.align);
      }
      if (op % 200'000 == 0) {
        res.check_invariants();
        const auto s = res.stats();
        CHECK(s.objects_in_use + s.large_objects == model.size());
        CHECK(s.bytes_in_use == live_bytes);
      }
    }
    CHECK(failures == 0);
    for (auto& [a, b] : model) {
      if (!check_block(a, b)) ++failures;
      res.deallocate(reinterpret_cast<void*>(a), b.bytes, b.align);
    }
    CHECK(failures == 0);
    res.check_invariants();
    res.trim();
    const auto s = res.stats();
    CHECK(s.objects_in_use == 0);
    CHECK(s.large_objects == 0);
    CHECK(s.bytes_reserved == 0);  // trim returned every empty slab
    CHECK(pages.stats().allocated_bytes == 0);
  }
  CHECK(fully_coalesced(pages));
}

void hand_off_run(bool checked, std::uint64_t seed) {
  page_resource pages;
  {
    slab_resource res(std::pmr::pool_options{}, knobs(checked), &pages);
    constexpr int threads = 16;
    constexpr int rounds = 3;
    // Each thread allocates a batch, keeps half, hands half to the next thread through a
    // mailbox, frees what it receives, and exits; objects outlive their allocating thread.
    struct mailbox {
      std::mutex m;
      std::vector<std::pair<unsigned*, std::size_t>> items;
    };
    std::vector<mailbox> boxes(threads);
    std::atomic<int> bad{0};
    for (int round = 0; round < rounds; ++round) {
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          std::mt19937_64 rng(seed + static_cast<std::uint64_t>(t * 7 + round));
          std::vector<std::pair<unsigned*, std::size_t>> mine;
          for (int i = 0; i < 4000; ++i) {
            const std::size_t n = 1 + rng() % 64;  // unsigned words
            auto* p = static_cast<unsigned*>(res.allocate(n * sizeof(unsigned)));
            for (std::size_t w = 0; w < n; ++w) p[w] = static_cast<unsigned>(t);
            mine.emplace_back(p, n);
            if (mine.size() > 200) {
              auto [q, m] = mine.front();
              mine.erase(mine.begin());
              if (i % 2) {
                std::lock_guard lock(boxes[static_cast<std::size_t>((t + 1) % threads)].m);
                boxes[static_cast<std::size_t>((t + 1) % threads)].items.emplace_back(q, m);
              } else {
                if (q[0] != static_cast<unsigned>(t)) bad.fetch_add(1);
                res.deallocate(q, m * sizeof(unsigned));
              }
            }
            if (i % 500 == 0) {
              std::vector<std::pair<unsigned*, std::size_t>> got;
              {
                std::lock_guard lock(boxes[static_cast<std::size_t>(t)].m);
                got.swap(boxes[static_cast<std::size_t>(t)].items);
              }
              for (auto [q, m] : got) {
                const unsigned owner = static_cast<unsigned>((t + threads - 1) % threads);
                if (q[0] != owner || q[m - 1] != owner) bad.fetch_add(1);
                res.deallocate(q, m * sizeof(unsigned));
              }
            }
          }
          // Leave some objects to the next thread, which frees them after this one exits.
          std::lock_guard lock(boxes[static_cast<std::size_t>((t + 1) % threads)].m);
          for (auto& it : mine)
            boxes[static_cast<std::size_t>((t + 1) % threads)].items.push_back(it);
        });
      }
      for (auto& th : pool) th.join();
    }
    // The last round's leftovers, freed from this thread after every maker exited.
    for (int t = 0; t < threads; ++t)
      for (auto [q, m] : boxes[static_cast<std::size_t>(t)].items) {
        const unsigned owner = static_cast<unsigned>((t + threads - 1) % threads);
        if (q[0] != owner) bad.fetch_add(1);
        res.deallocate(q, m * sizeof(unsigned));
      }
    CHECK(bad.load() == 0);
    res.trim();
    res.check_invariants();
    const auto s = res.stats();
    CHECK(s.objects_in_use == 0);
    CHECK(s.bytes_in_use == 0);
    CHECK(s.cached_objects == 0);
    CHECK(s.thread_caches == 1);  // this thread's; every worker's went away with its thread
    CHECK(s.bytes_reserved == 0);
    std::size_t sent = 0, received = 0;
    for (const auto& c : s.cores) {
      sent += c.remote_frees_sent;
      received += c.remote_frees_received;
    }
    CHECK(sent == received);
  }
  CHECK(pages.stats().allocated_bytes == 0);
  CHECK(fully_coalesced(pages));
  pages.check_invariants();
}

}  // namespace

TEST_CASE("an exhausted upstream: objects free on another core still serve") {
  const auto cpu = two_usable_cpus();
  const std::size_t bytes = std::size_t{1} << 20;
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  {
    page_resource budget(std::span<std::byte>(static_cast<std::byte*>(mem), bytes));
    auto k = knobs();
    k.caches = static_cast<std::size_t>(cpu[1]) + 1;  // cpu[0] and cpu[1] on caches of their own
    slab_resource res(std::pmr::pool_options{}, k, &budget);
    // On CPU 0: fill the budget, then free all but every 100th object, so that core 0's slabs
    // are mostly free but none is empty (none goes back upstream). The thread's exit flushes
    // its cache into core 0.
    std::vector<void*> kept;
    std::size_t made = 0;
    std::thread([&] {
      REQUIRE(pin_to_cpu(cpu[0]));
      std::vector<void*> held;
      try {
        for (;;) held.push_back(res.allocate(256));
      } catch (const std::bad_alloc&) {
      }
      made = held.size();
      for (std::size_t i = 0; i < held.size(); ++i) {
        if (i % 100 == 0)
          kept.push_back(held[i]);
        else
          res.deallocate(held[i], 256);
      }
    }).join();
    REQUIRE(made > 1000);
    // On CPU 1: core 1 has no slab and the upstream is full; core 0's free objects serve.
    std::thread([&] {
      REQUIRE(pin_to_cpu(cpu[1]));
      std::vector<void*> again;
      for (std::size_t i = 0; i < made / 2; ++i) again.push_back(res.allocate(256));
      for (void* p : again) res.deallocate(p, 256);
    }).join();
    for (void* p : kept) res.deallocate(p, 256);
    res.trim();
    res.check_invariants();
    CHECK(res.stats().objects_in_use == 0);
  }
  ::munmap(mem, bytes);
}

TEST_CASE("upstream failure propagates as bad_alloc; the resource stays usable") {
  const std::size_t bytes = std::size_t{2} << 20;
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  {
    page_resource budget(std::span<std::byte>(static_cast<std::byte*>(mem), bytes));
    slab_resource res(&budget);
    std::vector<void*> held;
    bool failed = false;
    for (int i = 0; i < 1000000 && !failed; ++i) {
      try {
        held.push_back(res.allocate(512));
      } catch (const std::bad_alloc&) {
        failed = true;
      }
    }
    CHECK(failed);
    CHECK_THROWS_AS((void)res.allocate(std::size_t{1} << 20), std::bad_alloc);
    res.check_invariants();
    CHECK(res.stats().objects_in_use == held.size());
    for (std::size_t i = 0; i < held.size(); i += 2) res.deallocate(held[i], 512);
    for (std::size_t i = 0; i < held.size(); i += 2) held[i] = res.allocate(512);
    for (void* p : held) res.deallocate(p, 512);
    res.trim();
    res.check_invariants();
    CHECK(budget.stats().allocated_bytes == 0);
  }
  ::munmap(mem, bytes);
}

TEST_CASE("many resources per thread, caches off, destruction before other threads exit") {
  page_resource pages;
  // More resources than thread-cache slots: slots are shared and evicted correctly.
  std::vector<std::unique_ptr<slab_resource>> many;
  for (int i = 0; i < 40; ++i) many.push_back(std::make_unique<slab_resource>(&pages));
  std::vector<std::vector<void*>> held(many.size());
  for (int round = 0; round < 20; ++round)
    for (std::size_t i = 0; i < many.size(); ++i) held[i].push_back(many[i]->allocate(32 + i));
  for (std::size_t i = 0; i < many.size(); ++i)
    for (void* p : held[i]) many[i]->deallocate(p, 32 + i);
  for (auto& r : many) {
    r->trim();
    CHECK(r->stats().objects_in_use == 0);
  }
  many.clear();
  CHECK(pages.stats().allocated_bytes == 0);

  {
    auto k = knobs();
    k.thread_cache = false;
    slab_resource direct(std::pmr::pool_options{}, k, &pages);
    std::pmr::vector<std::pmr::string> v(&direct);
    for (int i = 0; i < 1000; ++i) v.emplace_back(fmt::format("no thread cache, string {:>20}", i));
    CHECK(direct.stats().thread_caches == 0);
    CHECK(direct.stats().objects_in_use == 1000);  // the strings
    CHECK(direct.stats().large_objects == 1);      // the vector: 1024 * 40 B > 32 KiB
    v = std::pmr::vector<std::pmr::string>(&direct);
    direct.check_invariants();
    CHECK(direct.stats().objects_in_use == 0);
  }

  // A resource destroyed while another thread's cache holds its objects: the cache is orphaned
  // and freed when that thread exits.
  std::atomic<int> stage{0};
  auto doomed = std::make_unique<slab_resource>(&pages);
  std::thread worker([&] {
    void* p = doomed->allocate(64);
    doomed->deallocate(p, 64);  // now sits in this thread's cache
    stage = 1;
    while (stage.load() != 2) std::this_thread::yield();
  });
  while (stage.load() != 1) std::this_thread::yield();
  doomed.reset();
  stage = 2;
  worker.join();
  CHECK(pages.stats().allocated_bytes == 0);
}

TEST_CASE("checked mode: bad input aborts with a message naming the pointer and the problem") {
  auto expect_abort = [](const std::function<void(slab_resource&, page_resource&)>& bad,
                         const std::string& problem) {
    const auto result = run_in_child([&] {
      page_resource pages;
      slab_resource res(std::pmr::pool_options{}, knobs(true), &pages);
      bad(res, pages);
    });
    const bool aborted = result.aborted;
    const std::string err = result.err;
    CHECK_MESSAGE(aborted, problem);
    CHECK_MESSAGE(err.find(problem) != std::string::npos, err);
    CHECK_MESSAGE(err.find("deallocate(0x") != std::string::npos, err);
  };
  expect_abort(
      [](slab_resource& r, page_resource&) {
        void* p = r.allocate(40);
        r.deallocate(p, 40);
        r.deallocate(p, 40);
      },
      "double free");
  expect_abort(
      [](slab_resource& r, page_resource&) {
        static long on_stack[4];
        r.deallocate(on_stack, 16);
      },
      "not a live allocation of this resource");
  expect_abort(
      [](slab_resource& r, page_resource& pages) {
        void* page = pages.allocate_pages(1);  // same upstream, not from this resource
        r.deallocate(page, 64);
      },
      "not a live allocation of this resource");
  expect_abort(
      [](slab_resource& r, page_resource&) {
        void* p = r.allocate(100);
        r.deallocate(p, 3000);
      },
      "size does not match the allocation (100 bytes)");
  expect_abort(
      [](slab_resource& r, page_resource&) {
        void* p = r.allocate(64, 64);
        r.deallocate(p, 64, 4096);
      },
      "alignment does not match the allocation (alignment 64)");
  expect_abort(
      [](slab_resource& r, page_resource&) {
        void* p = r.allocate(256);
        r.deallocate(static_cast<char*>(p) + 8, 256);
      },
      "not the start of an object");
  expect_abort(
      [](slab_resource& r, page_resource&) {
        void* p = r.allocate(100000);
        r.deallocate(p, 100000);
        r.deallocate(p, 100000);
      },
      "foreign pointer or double free");
  expect_abort(
      [](slab_resource& r, page_resource&) {
        void* p = r.allocate(100000);
        r.deallocate(p, 90000);
      },
      "size does not match");
  // The same sequences that are fine do not abort.
  const auto fine = run_in_child([] {
    page_resource pages;
    slab_resource res(std::pmr::pool_options{}, knobs(true), &pages);
    std::pmr::vector<std::pmr::string> v(&res);
    for (int i = 0; i < 1000; ++i) v.emplace_back(fmt::format("checked mode string {:>30}", i));
    v.clear();
    res.check_invariants();
  });
  CHECK(!fine.aborted);
  CHECK(fine.err.empty());
}

TEST_CASE("any upstream memory_resource works") {
  // new_delete_resource honours alignment; a monotonic buffer does too and never frees.
  {
    slab_resource res(std::pmr::new_delete_resource());
    std::pmr::vector<std::pmr::string> v(&res);
    for (int i = 0; i < 2000; ++i) v.emplace_back(fmt::format("upstream new/delete {:>24}", i));
    CHECK(v[1999].find("1999") != std::string::npos);
    res.check_invariants();
  }
  {
    std::pmr::monotonic_buffer_resource mono(std::size_t{8} << 20);
    slab_resource res(&mono);
    std::vector<void*> held;
    for (int i = 0; i < 5000; ++i)
      held.push_back(res.allocate(static_cast<std::size_t>(16 + i % 2000)));
    for (int i = 0; i < 5000; ++i)
      res.deallocate(held[static_cast<std::size_t>(i)], static_cast<std::size_t>(16 + i % 2000));
    res.trim();
    res.check_invariants();
    CHECK(res.stats().objects_in_use == 0);
  }
}

TEST_CASE("cache counts below the CPU count: sched_getcpu() ids taken modulo") {
  for (std::size_t caches : {std::size_t{1}, std::size_t{3}}) {
    page_resource pages;
    {
      auto k = knobs();
      k.caches = caches;
      slab_resource res(std::pmr::pool_options{}, k, &pages);
      CHECK(res.stats().cores.size() == caches);
      std::vector<std::thread> pool;
      std::vector<std::vector<void*>> made(8);
      for (std::size_t t = 0; t < made.size(); ++t)
        pool.emplace_back([&, t] {
          for (int i = 0; i < 3000; ++i) made[t].push_back(res.allocate(24 + t * 8));
        });
      for (auto& th : pool) th.join();
      pool.clear();
      for (std::size_t t = 0; t < made.size(); ++t)  // each batch freed by another thread
        pool.emplace_back([&, t] {
          const std::size_t from = (t + 1) % made.size();
          for (void* p : made[from]) res.deallocate(p, 24 + from * 8);
        });
      for (auto& th : pool) th.join();
      res.trim();
      res.check_invariants();
      CHECK(res.stats().objects_in_use == 0);
    }
    CHECK(fully_coalesced(pages));
  }
}

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

#ifdef TEST_ASAN
TEST_CASE("AddressSanitizer sees a use after free inside the pool") {
  for (bool checked : both_modes)
    for (bool cache : {true, false}) {
      CAPTURE(checked);
      CAPTURE(cache);
      const auto result = run_in_child([&] {
        page_resource pages;
        auto k = knobs(checked);
        k.thread_cache = cache;
        slab_resource res(std::pmr::pool_options{}, k, &pages);
        auto* p = static_cast<char*>(res.allocate(64));
        res.deallocate(p, 64);
        volatile char* q = p;
        q[32] = 1;  // after free: poisoned
      });
      CHECK(!(WIFEXITED(result.status) && WEXITSTATUS(result.status) == 0));
      CHECK_MESSAGE(result.err.find("use-after-poison") != std::string::npos, result.err);
    }
}
#endif

TEST_CASE("thread-cache bins grow for a thread that allocates and frees, not for a freer") {
  page_resource pages;
  slab_resource res(&pages);
  // A thread that only frees: its bin keeps the base limit (256 objects of 64 B).
  std::vector<void*> made;
  std::thread maker([&] {
    for (int i = 0; i < 3000; ++i) made.push_back(res.allocate(64));
  });
  maker.join();
  std::thread freer([&] {
    for (void* p : made) res.deallocate(p, 64);
    CHECK(res.stats().cached_objects <= 256);
  });
  freer.join();
  // This thread builds and drops bursts of 1500: after a few rounds the burst stays cached.
  for (int round = 0; round < 4; ++round) {
    std::vector<void*> burst;
    for (int i = 0; i < 1500; ++i) burst.push_back(res.allocate(64));
    for (void* p : burst) res.deallocate(p, 64);
  }
  const auto s = res.stats();
  CHECK(s.cached_objects >= 1500);
  CHECK(s.cached_objects <= 2048);
  CHECK(s.objects_in_use == 0);
  res.trim();
  CHECK(res.stats().cached_objects == 0);
  res.check_invariants();
}
