// SPDX-License-Identifier: Apache-2.0
// Multi-threaded stress of the process allocator through its C API (bsalloc_malloc & co.):
// random sizes and alignments, frees from other threads, realloc chains, a pattern written on
// allocation and checked on free. Through the prefixed API it runs in every build, ASan and
// TSan included (a replaced malloc cannot be combined with the sanitizers' own).
// BSALLOC_SEED repeats a run.
#include <bsalloc/malloc.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

namespace {

std::uint64_t seed() {
  return bsalloc_test::test_seed("test_malloc_stress");
}

constexpr int rounds = bsalloc_test::sanitized_build ? 3000 : 20000;

struct block {
  unsigned char* p = nullptr;
  std::size_t n = 0;
  unsigned char tag = 0;
};

void stamp(const block& b) {
  for (std::size_t i = 0; i < b.n; i += 61) b.p[i] = static_cast<unsigned char>(b.tag + i);
  if (b.n) b.p[b.n - 1] = b.tag;
}
bool intact(const block& b) {
  for (std::size_t i = 0; i < b.n; i += 61)
    if (b.p[i] != static_cast<unsigned char>(b.tag + i) && i != b.n - 1) return false;
  return b.n == 0 || b.p[b.n - 1] == b.tag;
}

// The first `kept` bytes of a block that realloc moved or resized still hold c's pattern.
bool prefix_intact(const unsigned char* q, std::size_t kept, const block& c) {
  for (std::size_t i = 0; i < kept; i += 61) {
    const auto want = i == c.n - 1 ? c.tag : static_cast<unsigned char>(c.tag + i);
    if (q[i] != want) return false;
  }
  return kept < c.n || kept == 0 || q[c.n - 1] == c.tag;
}

// Handed between threads: every thread frees what others put here.
struct mailbox {
  std::mutex m;
  std::vector<block> items;
};

}  // namespace

TEST_CASE("malloc stress: threads, remote frees, realloc chains, patterns") {
  const std::uint64_t base = seed();
  constexpr int nthreads = 4;
  mailbox boxes[nthreads];
  std::atomic<int> broken{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < nthreads; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(base + static_cast<std::uint64_t>(t) * 7919);
      std::vector<block> mine;
      auto size = [&] {
        const unsigned k = static_cast<unsigned>(rng() % 100);
        if (k < 70) return static_cast<std::size_t>(rng() % 256);
        if (k < 95) return static_cast<std::size_t>(rng() % 70000);
        return static_cast<std::size_t>(rng() % (std::size_t{2} << 20));
      };
      auto drop = [&](block& b) {
        if (!intact(b)) broken.fetch_add(1);
        bsalloc_free(b.p);
      };
      for (int r = 0; r < rounds; ++r) {
        const unsigned op = static_cast<unsigned>(rng() % 10);
        block b;
        b.tag = static_cast<unsigned char>(rng());
        if (op < 4) {
          b.n = size();
          b.p = static_cast<unsigned char*>(bsalloc_malloc(b.n));
        } else if (op < 5) {
          const std::size_t a = std::size_t{1} << (rng() % 14);  // 1 .. 8 KiB
          b.n = size();
          void* p = nullptr;
          if (a >= sizeof(void*) && bsalloc_posix_memalign(&p, a, b.n) != 0) p = nullptr;
          if (a < sizeof(void*)) p = bsalloc_aligned_alloc(a, b.n);
          if (p && reinterpret_cast<std::uintptr_t>(p) % a != 0) broken.fetch_add(1);
          b.p = static_cast<unsigned char*>(p);
        } else if (op < 6) {
          b.n = size() % 4096;
          b.p = static_cast<unsigned char*>(bsalloc_calloc(1, b.n));
          for (std::size_t i = 0; b.p && i < b.n; ++i)
            if (b.p[i] != 0) {
              broken.fetch_add(1);
              break;
            }
        } else if (op < 8 && !mine.empty()) {  // realloc chain step
          block& c = mine[rng() % mine.size()];
          if (!intact(c)) broken.fetch_add(1);
          const std::size_t n = size();
          auto* q = static_cast<unsigned char*>(bsalloc_realloc(c.p, n));
          if (!q && n) {
            failed.fetch_add(1);
            continue;
          }
          if (!prefix_intact(q, std::min(c.n, n), c)) broken.fetch_add(1);
          c.p = q;
          c.n = n;
          if (!q) c.n = 0;
          stamp(c);
          continue;
        } else if (!mine.empty()) {  // free here, or hand to another thread
          const std::size_t i = rng() % mine.size();
          block c = mine[i];
          mine[i] = mine.back();
          mine.pop_back();
          if (rng() % 2) {
            drop(c);
          } else {
            mailbox& to = boxes[(t + 1 + static_cast<int>(rng() % (nthreads - 1))) % nthreads];
            std::lock_guard lock(to.m);
            to.items.push_back(c);
          }
          continue;
        } else {
          continue;
        }
        if (!b.p) {
          failed.fetch_add(1);
          continue;
        }
        if (bsalloc_malloc_usable_size(b.p) < b.n) broken.fetch_add(1);
        stamp(b);
        mine.push_back(b);
        if (r % 64 == 0) {  // frees from other threads
          std::vector<block> got;
          {
            std::lock_guard lock(boxes[t].m);
            got.swap(boxes[t].items);
          }
          for (auto& g : got) drop(g);
        }
        if (mine.size() > 400) {
          for (auto& c : mine) drop(c);
          mine.clear();
        }
      }
      for (auto& c : mine) drop(c);
    });
  for (auto& th : threads) th.join();
  for (auto& box : boxes)
    for (auto& b : box.items) {
      if (!intact(b)) broken.fetch_add(1);
      bsalloc_free(b.p);
    }
  bsalloc_malloc_check_invariants();  // aborts naming a broken invariant
  CHECK(broken.load() == 0);
  CHECK(failed.load() == 0);
}
