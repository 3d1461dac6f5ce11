// SPDX-License-Identifier: Apache-2.0
// The page layer's workloads (issue: large blocks, the container mix, scaling of large blocks
// on many threads). Declared and listed in the table of workloads.cpp.
//
//   large_touch64   1000 live blocks of 4 KiB – 256 KiB (log-uniform), random replace, only
//                   the first 64 bytes of each block written: what a large allocation costs
//                   when the caller does not fill it (peak RSS shows pages touched for it).
//   large_threads1  one thread, 64 live blocks of 4 KiB – 256 KiB, random replace, first 64 B
//   large_threads8  the same on 8 threads at once (each its own blocks): per-op time should
//                   not exceed the one-thread figure (no lock convoy).
//   containers_mix  pmr containers: a vector of 100k strings, a map of 100k, an unordered_map
//                   of 200k, built and dropped, again; an op is one element.
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory_resource>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bench.hpp"

namespace bench {
namespace {

using clock_type = std::chrono::steady_clock;

double since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::size_t log_uniform(rng& r, std::size_t lo, std::size_t hi) {
  unsigned bands = 0;
  while ((lo << bands) < hi) ++bands;
  const std::size_t base = lo << r.below(bands);
  return base + r.below(base);
}

struct big {
  void* p = nullptr;
  std::size_t size = 0;
};

// `slots` live blocks; `ops` replacements; the first 64 bytes of each block written and
// checked. Returns the checksum; *peak gets the most bytes requested at once.
std::uint64_t replace_large(std::pmr::memory_resource* mr, std::size_t slots, std::size_t ops,
                            std::uint64_t seed, std::size_t align, std::size_t* peak) {
  rng r{seed};
  std::vector<big> set(slots);
  std::size_t live = 0, top = 0;
  std::uint64_t sum = 0;
  auto fresh = [&](std::uint64_t v) {
    big b{nullptr, log_uniform(r, 4096, 256 << 10)};
    b.p = mr->allocate(b.size, align);
    std::memset(b.p, static_cast<int>(v & 0xff), 64);
    live += b.size;
    top = std::max(top, live);
    return b;
  };
  auto give = [&](big b) {
    sum += static_cast<unsigned char*>(b.p)[63];
    live -= b.size;
    mr->deallocate(b.p, b.size, align);
  };
  for (std::size_t i = 0; i < slots; ++i) set[i] = fresh(i);
  for (std::size_t i = 0; i < ops; ++i) {
    big& b = set[r.below(slots)];
    give(b);
    b = fresh(i);
  }
  for (big b : set) give(b);
  if (peak) *peak = top;
  return sum;
}

workload_result large_threads(peer& pe, const params& pa, unsigned threads) {
  workload_result res;
  res.threads = threads;
  const std::size_t per = pa.ops / threads;
  res.ops = per * threads;
  std::vector<std::uint64_t> sums(threads);
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      sums[t] =
          replace_large(pe.resource(), pa.quick ? 8 : 64, per, pa.seed + t, pa.align, nullptr);
    });
  while (ready.load() != threads) std::this_thread::yield();
  const auto t0 = clock_type::now();
  go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  res.seconds = since(t0);
  for (auto s : sums) res.checksum += s;
  return res;
}

}  // namespace

workload_result large_touch64(peer& pe, const params& pa) {
  workload_result res;
  res.ops = pa.ops;
  const auto t0 = clock_type::now();
  res.checksum = replace_large(pe.resource(), pa.quick ? 32 : 1000, pa.ops, pa.seed, pa.align,
                               &res.peak_requested_bytes);
  res.seconds = since(t0);
  return res;
}

workload_result large_threads1(peer& pe, const params& pa) {
  return large_threads(pe, pa, 1);
}

workload_result large_threads8(peer& pe, const params& pa) {
  return large_threads(pe, pa, 8);
}

workload_result containers_mix(peer& pe, const params& pa) {
  workload_result res;
  const std::size_t strings = pa.quick ? 1000 : 100'000;
  const std::size_t map_n = pa.quick ? 1000 : 100'000;
  const std::size_t umap_n = pa.quick ? 2000 : 200'000;
  const std::size_t round = strings + map_n + umap_n;
  rng r{pa.seed};
  const auto t0 = clock_type::now();
  for (std::size_t done = 0; done < pa.ops; done += round) {
    std::pmr::vector<std::pmr::string> v{pe.resource()};
    for (std::size_t i = 0; i < strings; ++i) v.emplace_back(16 + r.below(113), 'x');
    std::pmr::map<std::uint64_t, std::uint64_t> m{pe.resource()};
    for (std::size_t i = 0; i < map_n; ++i) m.emplace(r.next(), i);
    std::pmr::unordered_map<std::uint64_t, std::uint64_t> u{pe.resource()};
    for (std::size_t i = 0; i < umap_n; ++i) u.emplace(r.next(), i);
    res.checksum += v.size() + m.size() + u.size();
    res.ops += round;
  }
  res.seconds = since(t0);
  return res;
}

}  // namespace bench
