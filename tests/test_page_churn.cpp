// SPDX-License-Identifier: Apache-2.0
// Churn through the run cache and the buddy path together, against a model: the residency
// bookkeeping of the buddy path (allocated pages carry no resident bit, I6; every freed page
// counts as dirty until purged) and the run cache's invariants hold after any sequence.
#include <bsalloc/page_resource.hpp>

#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::page_resource_options;
using bsalloc::page_size;

namespace {

page_resource_options cached(std::size_t bytes = std::size_t{4} << 20) {
  return page_resource_options{.cache_bytes_per_core = bytes};
}

}  // namespace

TEST_CASE("buddy path: freed pages count as dirty, reused ones stop counting, page by page") {
  page_resource res;  // no run cache: every call takes the buddy path
  void* p = res.allocate_pages(10);
  CHECK(res.stats().dirty_free_bytes == 0);
  res.deallocate_pages(p, 10);
  CHECK(res.stats().dirty_free_bytes == 10 * page_size);
  res.check_invariants();
  // Dirty blocks are reused first: the same pages, 7 of the 10 (the four-page steps and the rest).
  void* q = res.allocate_pages(7);
  CHECK(q == p);
  CHECK(res.stats().dirty_free_bytes == 3 * page_size);
  res.check_invariants();
  // Whichever block serves 5 more pages, its resident pages stop counting; freeing both runs
  // counts all 12 pages again.
  void* r = res.allocate_pages(5);
  const std::size_t dirty = res.stats().dirty_free_bytes;
  CHECK(dirty <= 3 * page_size);
  res.check_invariants();
  res.deallocate_pages(q, 7);
  res.deallocate_pages(r, 5);
  CHECK(res.stats().dirty_free_bytes == dirty + 12 * page_size);
  res.check_invariants();
}

TEST_CASE("run cache and buddy path: randomised churn keeps every invariant") {
  bsalloc_test::pin_to_this_cpu pin;
  const std::uint64_t seed = bsalloc_test::test_seed("test_page_churn");
  std::mt19937_64 rng(seed);
  page_resource res(cached(std::size_t{1} << 20));
  struct live {
    void* p;
    std::size_t n;
  };
  std::vector<live> blocks;
  for (int step = 0; step < 20000; ++step) {
    if (blocks.size() < 64 && (blocks.empty() || rng() % 2)) {
      const std::size_t n = 1 + rng() % 70;  // beyond max_cached_run_pages too
      void* p = res.allocate_pages(n);
      std::memset(p, static_cast<int>(n), page_size);
      blocks.push_back({p, n});
    } else {
      const std::size_t i = rng() % blocks.size();
      CHECK(*static_cast<unsigned char*>(blocks[i].p) == static_cast<unsigned char>(blocks[i].n));
      CHECK(res.usable_size(blocks[i].p) == blocks[i].n * page_size);
      res.deallocate_pages(blocks[i].p, blocks[i].n);
      blocks[i] = blocks.back();
      blocks.pop_back();
    }
    if (step % 997 == 0) res.check_invariants();
  }
  for (const auto& b : blocks) res.deallocate_pages(b.p, b.n);
  res.check_invariants();
  res.flush_cache();
  CHECK(bsalloc_test::fully_coalesced(res));
  res.check_invariants();
}
