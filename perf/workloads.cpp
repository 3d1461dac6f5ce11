// SPDX-License-Identifier: Apache-2.0
// The workloads. Each runs a fixed number of operations through one peer and times them with
// steady_clock. Filling the large working sets of `mixed` and `large` is not timed; the small
// windows of the churn workloads (at most 10 000 objects against millions of ops) are. Every
// allocation is written to and read back before it is freed, so no work can be dropped.
//
// An "op" is one allocate + one deallocate for the churn workloads, one container operation
// for the containers, one push_back for vec_grow, one object handed over for prodcons. For
// several threads, ns/op is wall-clock time ÷ all threads' ops (throughput of the machine).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory_resource>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <bsalloc/object_pool.hpp>

#include "bench.hpp"

// The fast-path probes callgrind counts (perf/callgrind.sh): one call = one allocate or one
// deallocate through memory_resource*, out of line so their inclusive cost is exactly that.
extern "C" [[gnu::noinline]] void* bsalloc_bench_allocate(std::pmr::memory_resource* mr,
                                                          std::size_t bytes, std::size_t align) {
  return mr->allocate(bytes, align);
}
extern "C" [[gnu::noinline]] void bsalloc_bench_deallocate(std::pmr::memory_resource* mr, void* p,
                                                           std::size_t bytes, std::size_t align) {
  mr->deallocate(p, bytes, align);
}

namespace bench {

// The engine-kit workloads, in workloads_engine.cpp.
workload_result frame_arena_frames(peer& pe, const params& pa);
workload_result frame_monotonic_frames(peer& pe, const params& pa);
workload_result frame_slab_frames(peer& pe, const params& pa);
workload_result frame_free_frames(peer& pe, const params& pa);
workload_result budget_lifo(peer& pe, const params& pa);
workload_result budget_lifo_exact(peer& pe, const params& pa);
// perf/workloads_many.cpp
workload_result many_resources(peer& pe, const params& pa);
// perf/workloads_page.cpp
workload_result large_touch64(peer& pe, const params& pa);
workload_result large_threads1(peer& pe, const params& pa);
workload_result large_threads8(peer& pe, const params& pa);
workload_result containers_mix(peer& pe, const params& pa);

namespace {

using clock_type = std::chrono::steady_clock;

double since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Live bytes requested and their peak.
struct tracker {
  std::size_t live = 0;
  std::size_t peak = 0;
  void add(std::size_t n) {
    live += n;
    peak = std::max(peak, live);
  }
  void sub(std::size_t n) { live -= n; }
};

struct block {
  void* p = nullptr;
  std::size_t size = 0;
};

/// Writes a word at the start of a block (every size here is at least 8).
void stamp(void* p, std::uint64_t v) {
  std::memcpy(p, &v, sizeof v);
}
std::uint64_t read(const void* p) {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// 16..256 bytes in steps of 8: the small objects.
std::size_t small_size(rng& r) {
  return 16 + 8 * r.below(31);
}
/// Log-uniform in [lo, hi) (lo, hi powers of two): each power-of-two band equally likely.
std::size_t log_uniform(rng& r, std::size_t lo, std::size_t hi) {
  unsigned bands = 0;
  while ((lo << bands) < hi) ++bands;
  std::size_t base = lo << r.below(bands);
  return base + r.below(base);
}

block take(std::pmr::memory_resource* mr, std::size_t size, std::uint64_t v, std::size_t align) {
  block b{mr->allocate(size, align), size};
  stamp(b.p, v);
  return b;
}
std::uint64_t give(std::pmr::memory_resource* mr, block b, std::size_t align) {
  std::uint64_t v = read(b.p);
  mr->deallocate(b.p, b.size, align);
  return v;
}

// ---- small objects ---------------------------------------------------------------------

/// Allocate a batch of 100 small objects, free them newest first; repeat.
workload_result lifo(peer& pe, const params& pa) {
  auto* mr = pe.resource();
  const std::size_t align = pa.align;
  const std::size_t ops = pa.ops, batch = 100;
  rng r{pa.seed};
  std::vector<block> live(batch);
  workload_result res;
  auto t0 = clock_type::now();
  for (std::size_t done = 0; done < ops; done += batch) {
    for (std::size_t i = 0; i < batch; ++i) live[i] = take(mr, small_size(r), done + i, align);
    for (std::size_t i = batch; i-- > 0;) res.checksum += give(mr, live[i], align);
  }
  res.seconds = since(t0);
  res.ops = (ops + batch - 1) / batch * batch;
  return res;
}

/// A window of `window` live small objects: each op frees the oldest and allocates a new one.
std::uint64_t fifo_churn(std::pmr::memory_resource* mr, std::size_t window, std::size_t ops,
                         std::uint64_t seed, std::size_t align) {
  rng r{seed};
  std::vector<block> ring(window);
  for (std::size_t i = 0; i < window; ++i) ring[i] = take(mr, small_size(r), i, align);
  std::uint64_t sum = 0;
  for (std::size_t i = 0, j = 0; i < ops; ++i) {
    sum += give(mr, ring[j], align);
    ring[j] = take(mr, small_size(r), i, align);
    if (++j == window) j = 0;
  }
  for (block b : ring) sum += give(mr, b, align);
  return sum;
}

workload_result fifo(peer& pe, const params& pa) {
  workload_result res;
  res.ops = pa.ops;
  auto t0 = clock_type::now();
  res.checksum = fifo_churn(pe.resource(), pa.quick ? 100 : 10'000, res.ops, pa.seed, pa.align);
  res.seconds = since(t0);
  return res;
}

/// 64-byte objects with a constructor, through each peer's typed interface.
struct node {
  std::uint64_t key;
  std::uint64_t payload[6];
  node* next = nullptr;
  explicit node(std::uint64_t k) : key(k) {
    for (auto& x : payload) x = k;
  }
};
static_assert(sizeof(node) == 64);

/// FIFO window of objects, typed: new/delete (malloc family), polymorphic_allocator (pmr
/// peers), object_pool<node>::make (object_pool).
workload_result objects(peer& pe, const params& pa) {
  workload_result res;
  res.ops = pa.ops;
  const std::size_t window = pa.quick ? 100 : 10'000;
  auto t0 = clock_type::now();
  if (pe.kind() == peer_kind::malloc_family) {
    std::vector<node*> ring(window);
    for (std::size_t i = 0; i < window; ++i) ring[i] = new node(i);
    for (std::size_t i = 0, j = 0; i < res.ops; ++i) {
      res.checksum += ring[j]->key;
      delete ring[j];
      ring[j] = new node(i);
      if (++j == window) j = 0;
    }
    for (node* n : ring) {
      res.checksum += n->key;
      delete n;
    }
  } else if (pe.kind() == peer_kind::object_pool) {
    bsalloc::object_pool<node> pool;
    std::vector<decltype(pool.make(std::uint64_t{0}))> ring;
    ring.reserve(window);
    for (std::size_t i = 0; i < window; ++i) ring.push_back(pool.make(std::uint64_t{i}));
    for (std::size_t i = 0, j = 0; i < res.ops; ++i) {
      res.checksum += ring[j]->key;
      ring[j] = pool.make(std::uint64_t{i});
      if (++j == window) j = 0;
    }
    for (auto& n : ring) res.checksum += n->key;
    ring.clear();
  } else {
    std::pmr::polymorphic_allocator<node> alloc{pe.resource()};
    std::vector<node*> ring(window);
    for (std::size_t i = 0; i < window; ++i) ring[i] = alloc.new_object<node>(i);
    for (std::size_t i = 0, j = 0; i < res.ops; ++i) {
      res.checksum += ring[j]->key;
      alloc.delete_object(ring[j]);
      ring[j] = alloc.new_object<node>(i);
      if (++j == window) j = 0;
    }
    for (node* n : ring) {
      res.checksum += n->key;
      alloc.delete_object(n);
    }
  }
  res.seconds = since(t0);
  return res;
}

// ---- mixed and large -------------------------------------------------------------------

/// `slots` live blocks of random sizes; each op frees a random one and allocates a new size.
workload_result random_replace(peer& pe, const params& pa, std::size_t slots, std::size_t lo,
                               std::size_t hi, bool touch_pages) {
  auto* mr = pe.resource();
  const std::size_t align = pa.align;
  rng r{pa.seed};
  tracker t;
  workload_result res;
  res.ops = pa.ops;
  auto fresh = [&](std::uint64_t v) {
    block b = take(mr, log_uniform(r, lo, hi), v, align);
    if (touch_pages) {  // write every page, as a program filling the block would
      for (std::size_t off = 4096; off < b.size; off += 4096) static_cast<char*>(b.p)[off] = 1;
    }
    t.add(b.size);
    return b;
  };
  std::vector<block> set(slots);
  for (std::size_t i = 0; i < slots; ++i) set[i] = fresh(i);
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < res.ops; ++i) {
    block& b = set[r.below(slots)];
    t.sub(b.size);
    res.checksum += give(mr, b, align);
    b = fresh(i);
  }
  res.seconds = since(t0);
  for (block b : set) res.checksum += give(mr, b, align);
  res.peak_requested_bytes = t.peak;
  return res;
}

/// 8 B – 8 KiB, log-uniform, 32768 live blocks (about 40 MiB).
workload_result mixed(peer& pe, const params& pa) {
  return random_replace(pe, pa, pa.quick ? 512 : 32768, 8, 8192, false);
}
/// 4 KiB – 1 MiB, log-uniform, 64 live blocks (about 12 MiB), every page written.
workload_result large(peer& pe, const params& pa) {
  return random_replace(pe, pa, pa.quick ? 8 : 64, 4096, 1 << 20, true);
}

/// A std::pmr::vector<uint64_t> grown by push_back to 1 Mi elements (8 MiB), again and again.
workload_result vec_grow(peer& pe, const params& pa) {
  workload_result res;
  res.ops = pa.ops;
  const std::size_t n = pa.quick ? 4096 : std::size_t{1} << 20;
  auto t0 = clock_type::now();
  for (std::size_t done = 0; done < res.ops; done += n) {
    std::pmr::vector<std::uint64_t> v{pe.resource()};
    for (std::size_t i = 0; i < n; ++i) v.push_back(i);
    res.checksum += v[n / 2];
  }
  res.seconds = since(t0);
  res.ops = (res.ops + n - 1) / n * n;
  res.peak_requested_bytes = n * sizeof(std::uint64_t) * 3 / 2;  // old + new buffer at growth
  return res;
}

// ---- pmr containers --------------------------------------------------------------------

/// std::pmr::vector<std::pmr::string>: 10000 strings of 16–128 chars (past the small-string
/// buffer), then the vector is dropped; again. An op is one string.
workload_result vec_strings(peer& pe, const params& pa) {
  workload_result res;
  res.ops = pa.ops;
  const std::size_t n = pa.quick ? 100 : 10'000;
  rng r{pa.seed};
  auto t0 = clock_type::now();
  for (std::size_t done = 0; done < res.ops; done += n) {
    std::pmr::vector<std::pmr::string> v{pe.resource()};
    for (std::size_t i = 0; i < n; ++i) v.emplace_back(16 + r.below(113), char('a' + i % 26));
    for (const auto& s : v) res.checksum += s.size();
  }
  res.seconds = since(t0);
  res.ops = (res.ops + n - 1) / n * n;
  return res;
}

/// Random keys in [0, range): erase the key if present, insert it if not (about range/2 live).
template <class Map>
workload_result toggle_keys(peer& pe, const params& pa, std::size_t range) {
  workload_result res;
  res.ops = pa.ops;
  rng r{pa.seed};
  Map m{pe.resource()};
  auto t0 = clock_type::now();
  for (std::size_t i = 0; i < res.ops; ++i) {
    std::uint64_t k = r.below(range);
    auto it = m.find(k);
    if (it != m.end()) {
      res.checksum += it->second;
      m.erase(it);
    } else {
      m.emplace(k, i);
    }
  }
  res.seconds = since(t0);
  res.checksum += m.size();
  return res;
}

workload_result map(peer& pe, const params& pa) {
  return toggle_keys<std::pmr::map<std::uint64_t, std::uint64_t>>(pe, pa, pa.quick ? 256 : 16384);
}
workload_result umap(peer& pe, const params& pa) {
  return toggle_keys<std::pmr::unordered_map<std::uint64_t, std::uint64_t>>(
      pe, pa, pa.quick ? 256 : 131072);
}

// ---- threads ---------------------------------------------------------------------------

/// Runs body(thread index) on `n` threads released together; returns the wall-clock seconds.
template <class Body>
double run_threads(unsigned n, Body body) {
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (unsigned t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(t);
    });
  }
  while (ready.load() != n) std::this_thread::yield();
  auto t0 = clock_type::now();
  go.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  return since(t0);
}

/// `threads` threads, each its own FIFO churn over 1000 live small objects.
workload_result independent_churn(peer& pe, const params& pa, unsigned threads) {
  workload_result res;
  res.threads = threads;
  const std::size_t per = pa.ops / threads;
  res.ops = per * threads;
  std::vector<std::uint64_t> sums(threads);
  res.seconds = run_threads(threads, [&](unsigned t) {
    sums[t] = fifo_churn(pe.resource(), pa.quick ? 100 : 1000, per, pa.seed + t, pa.align);
  });
  for (auto s : sums) res.checksum += s;
  return res;
}

workload_result threads2(peer& pe, const params& pa) {
  return independent_churn(pe, pa, 2);
}
/// 4 threads per core.
workload_result threads_many(peer& pe, const params& pa) {
  return independent_churn(pe, pa, 4 * std::max(1u, std::thread::hardware_concurrency()));
}

/// A single-producer single-consumer ring of blocks. Each side publishes its index once per
/// 64 blocks (and before it waits), so the ring costs little next to the allocator.
class spsc_ring {
 public:
  void push(block b) {
    if (tail_ - head_seen_ == capacity) {
      publish_tail();
      while (tail_ - (head_seen_ = head_pub_.load(std::memory_order_acquire)) == capacity) {
        std::this_thread::yield();
      }
    }
    slots_[tail_++ % capacity] = b;
    if (tail_ % batch == 0) publish_tail();
  }
  void publish_tail() { tail_pub_.store(tail_, std::memory_order_release); }
  block pop() {
    if (head_ == tail_seen_) {
      head_pub_.store(head_, std::memory_order_release);
      while (head_ == (tail_seen_ = tail_pub_.load(std::memory_order_acquire))) {
        std::this_thread::yield();
      }
    }
    block b = slots_[head_++ % capacity];
    if (head_ % batch == 0) head_pub_.store(head_, std::memory_order_release);
    return b;
  }

 private:
  static constexpr std::size_t capacity = 4096, batch = 64;
  std::vector<block> slots_ = std::vector<block>(capacity);
  alignas(64) std::atomic<std::size_t> tail_pub_{0};
  alignas(64) std::atomic<std::size_t> head_pub_{0};
  alignas(64) std::size_t tail_ = 0, head_seen_ = 0;  // producer's
  alignas(64) std::size_t head_ = 0, tail_seen_ = 0;  // consumer's
};

/// One thread allocates small objects and hands them over a ring; another frees them: every
/// free is a cross-thread free.
workload_result prodcons(peer& pe, const params& pa) {
  workload_result res;
  res.threads = 2;
  res.ops = pa.ops;
  auto* mr = pe.resource();
  const std::size_t align = pa.align;
  spsc_ring ring;
  std::uint64_t sum = 0;
  res.seconds = run_threads(2, [&](unsigned t) {
    if (t == 0) {
      rng r{pa.seed};
      for (std::size_t i = 0; i < res.ops; ++i) ring.push(take(mr, small_size(r), i, align));
      ring.publish_tail();
    } else {
      for (std::size_t i = 0; i < res.ops; ++i) sum += give(mr, ring.pop(), align);
    }
  });
  res.checksum = sum;
  return res;
}

// ---- footprint -------------------------------------------------------------------------

/// Fill to 64 MiB live of 8 B – 1 KiB blocks, free a random half, refill to 64 MiB with
/// 1–8 KiB blocks (a phase change: the freed small blocks help only if the allocator can
/// reuse their memory for other sizes), free everything. Every byte is written, so RSS counts
/// all of it. ns/op is per allocation, memset included.
workload_result footprint(peer& pe, const params& pa) {
  auto* mr = pe.resource();
  const std::size_t align = pa.align;
  const std::size_t target = (pa.quick ? std::size_t{2} : std::size_t{64}) << 20;
  rng r{pa.seed};
  tracker t;
  workload_result res;
  std::vector<block> set;
  auto fill = [&](std::size_t lo, std::size_t hi) {
    while (t.live < target) {
      std::size_t size = log_uniform(r, lo, hi);
      block b{mr->allocate(size, align), size};
      std::memset(b.p, static_cast<int>(res.ops & 0xff), size);
      t.add(size);
      set.push_back(b);
      ++res.ops;
    }
  };
  auto t0 = clock_type::now();
  fill(8, 1024);
  std::size_t kept = 0;
  for (block b : set) {
    if (r.next() & 1) {
      t.sub(b.size);
      res.checksum += give(mr, b, align);
    } else {
      set[kept++] = b;
    }
  }
  set.resize(kept);
  fill(1024, 8192);
  for (block b : set) res.checksum += give(mr, b, align);
  res.seconds = since(t0);
  res.peak_requested_bytes = t.peak;
  return res;
}

// ---- the fast path (for callgrind) -----------------------------------------------------

/// Batches of 16 allocations of `size` bytes freed newest first, through the out-of-line
/// probes; a warm-up of the same pattern runs first (not through the probes).
workload_result fastpath(peer& pe, const params& pa) {
  auto* mr = pe.resource();
  workload_result res;
  res.ops = pa.ops;
  constexpr std::size_t batch = 16;
  void* live[batch];
  for (std::size_t done = 0; done < res.ops; done += batch) {
    for (auto& p : live) p = mr->allocate(pa.size, pa.align);
    for (std::size_t i = batch; i-- > 0;) mr->deallocate(live[i], pa.size, pa.align);
  }
  auto t0 = clock_type::now();
  for (std::size_t done = 0; done < res.ops; done += batch) {
    for (auto& p : live) p = bsalloc_bench_allocate(mr, pa.size, pa.align);
    for (std::size_t i = batch; i-- > 0;) bsalloc_bench_deallocate(mr, live[i], pa.size, pa.align);
  }
  res.seconds = since(t0);
  res.ops = (res.ops + batch - 1) / batch * batch;
  return res;
}

// name, group, small, multi-threaded, page-sized, default ops, function
constexpr workload table[] = {
    {"lifo", "small", true, false, false, 40'000'000, lifo},
    {"fifo", "small", true, false, false, 40'000'000, fifo},
    {"objects", "small", true, false, false, 40'000'000, objects},
    {"mixed", "mixed_large", false, false, false, 5'000'000, mixed},
    {"large", "mixed_large", false, false, true, 200'000, large},
    {"vec_grow", "mixed_large", false, false, true, 100'000'000, vec_grow},
    {"vec_strings", "containers", true, false, false, 10'000'000, vec_strings},
    {"map", "containers", true, false, false, 5'000'000, map},
    {"umap", "containers", true, false, false, 5'000'000, umap},
    {"threads2", "threads", true, true, false, 40'000'000, threads2},
    {"prodcons", "threads", true, true, false, 10'000'000, prodcons},
    {"threads_many", "threads", true, true, false, 40'000'000, threads_many},
    {"many_resources", "small", true, false, false, 20'000'000, many_resources},
    {"footprint", "footprint", false, false, false, 0, footprint},
    {"fastpath", "callgrind", true, false, false, 100'000, fastpath},
    {"frame_arena", "engine", false, false, false, 20'000'000, frame_arena_frames},
    {"frame_monotonic", "engine", false, false, false, 20'000'000, frame_monotonic_frames},
    {"frame_slab", "engine", false, false, false, 20'000'000, frame_slab_frames},
    {"frame_free", "engine", false, false, false, 20'000'000, frame_free_frames},
    {"budget_lifo", "engine", false, false, false, 40'000'000, budget_lifo},
    {"budget_lifo_exact", "engine", false, false, false, 40'000'000, budget_lifo_exact},
    {"large_touch64", "mixed_large", false, false, true, 2'000'000, large_touch64},
    {"large_threads1", "threads", false, false, true, 2'000'000, large_threads1},
    {"large_threads8", "threads", false, true, true, 2'000'000, large_threads8},
    {"containers_mix", "containers", true, false, false, 8'000'000, containers_mix},
};

}  // namespace

std::span<const workload> workloads() {
  return table;
}

bool applies(const workload& w, std::string_view peer_name) {
  if (std::string_view{w.name} == "fastpath") return true;  // callgrind.sh picks its own
  if (peer_name == "null") return false;  // the callgrind baseline hands out one block
  if (peer_name == "page") return w.page_sized;
  if (peer_name == "object_pool") return std::string_view{w.name} == "objects";
  if (peer_name == "std_unsync") return !w.multi_threaded;
  return true;
}

}  // namespace bench
