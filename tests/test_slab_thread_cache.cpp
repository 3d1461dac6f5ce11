// SPDX-License-Identifier: Apache-2.0
// The thread cache's memory: bins grow for bursts only within the cache's growth budget, and
// bins whose class went quiet shrink back, giving their objects (and the slabs they pin) back.
#include <bsalloc/slab_resource.hpp>

#include <memory_resource>
#include <vector>

#include <doctest/doctest.h>

using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

// Allocates `n` objects of `bytes` and frees them: a burst that makes the bin overflow.
void burst(slab_resource& r, std::size_t bytes, std::size_t n) {
  std::vector<void*> v;
  for (std::size_t i = 0; i < n; ++i) v.push_back(r.allocate(bytes));
  for (void* p : v) r.deallocate(p, bytes);
}

}  // namespace

TEST_CASE("bins grow within the thread cache's byte budget, across all classes") {
  slab_resource_options o;
  o.thread_cache_bytes = 256 << 10;
  slab_resource r(std::pmr::pool_options{}, o, std::pmr::new_delete_resource());
  for (int round = 0; round < 4; ++round)
    for (std::size_t bytes = 64; bytes <= 4096; bytes += 64) burst(r, bytes, 600);
  const auto s = r.stats();
  CHECK(s.thread_cache_grown_bytes > 0);
  CHECK(s.thread_cache_grown_bytes <= o.thread_cache_bytes);
  r.check_invariants();
}

TEST_CASE("a bin that grew shrinks back once its class goes quiet") {
  slab_resource r(std::pmr::new_delete_resource());
  for (int i = 0; i < 6; ++i) burst(r, 256, 2000);  // grows the 256-byte bin
  const auto grown = r.stats();
  CHECK(grown.thread_cache_grown_bytes > 0);
  CHECK(grown.bin_shrinks == 0);
  // Other classes only: slow-path visits, none of them for 256 bytes.
  for (int i = 0; i < 300; ++i) burst(r, 8 + (i % 4) * 8, 3000);
  const auto quiet = r.stats();
  CHECK(quiet.bin_shrinks > 0);
  CHECK(quiet.thread_cache_grown_bytes < grown.thread_cache_grown_bytes);
  r.check_invariants();
}
