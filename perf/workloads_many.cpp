// SPDX-License-Identifier: Apache-2.0
// many_resources: one resource per subsystem, as engines and servers use pmr. 32 resources of the
// peer's kind, one thread; each op picks a random resource, frees its oldest small object
// (16..256 B) and allocates a new one there. Each resource keeps a window of 64 live objects.
//
// Fair peers: bsalloc's slab_resource and the std pools get 32 instances of their own type
// (default construction, as the peer makes its one). The malloc family has one heap per process,
// so its 32 "resources" are the same malloc. boost_sync's type is private to peers.cpp: its 32
// are the peer's one resource (it pays no per-resource cost here).
#include <chrono>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <vector>

#include <bsalloc/slab_resource.hpp>

#include "bench.hpp"

namespace bench {
namespace {

constexpr std::size_t resource_count = 32;

template <class R>
bool make_siblings(std::pmr::memory_resource* one,
                   std::vector<std::unique_ptr<std::pmr::memory_resource>>& owned) {
  if (dynamic_cast<R*>(one) == nullptr) return false;
  for (std::size_t i = 1; i < resource_count; ++i) owned.push_back(std::make_unique<R>());
  return true;
}

}  // namespace

workload_result many_resources(peer& pe, const params& pa) {
  std::pmr::memory_resource* one = pe.resource();
  std::vector<std::unique_ptr<std::pmr::memory_resource>> owned;
  if (pe.kind() != peer_kind::malloc_family)
    (void)(make_siblings<bsalloc::slab_resource>(one, owned) ||
           make_siblings<std::pmr::synchronized_pool_resource>(one, owned) ||
           make_siblings<std::pmr::unsynchronized_pool_resource>(one, owned));
  std::vector<std::pmr::memory_resource*> res{one};
  for (auto& o : owned) res.push_back(o.get());
  while (res.size() < resource_count) res.push_back(one);

  const std::size_t window = pa.quick ? 8 : 64;
  const std::size_t align = pa.align;
  rng r{pa.seed};
  struct slot {
    void* p;
    std::size_t size;
  };
  std::vector<slot> live(resource_count * window);
  std::vector<std::size_t> next(resource_count, 0);
  auto small = [&r] { return 16 + 8 * r.below(31); };
  for (std::size_t k = 0; k < resource_count; ++k)
    for (std::size_t i = 0; i < window; ++i) {
      const std::size_t n = small();
      live[k * window + i] = {res[k]->allocate(n, align), n};
      *static_cast<std::uint64_t*>(live[k * window + i].p) = i;
    }
  workload_result out;
  out.ops = pa.ops;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < out.ops; ++i) {
    const std::size_t k = r.below(resource_count);
    slot& s = live[k * window + next[k]];
    if (++next[k] == window) next[k] = 0;
    out.checksum += *static_cast<std::uint64_t*>(s.p);
    res[k]->deallocate(s.p, s.size, align);
    s.size = small();
    s.p = res[k]->allocate(s.size, align);
    *static_cast<std::uint64_t*>(s.p) = i;
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (std::size_t k = 0; k < resource_count; ++k)
    for (std::size_t i = 0; i < window; ++i)
      res[k]->deallocate(live[k * window + i].p, live[k * window + i].size, align);
  return out;
}

}  // namespace bench
