// SPDX-License-Identifier: Apache-2.0
// Over-aligned page runs from any state of the page layer: after runs were resized in place and
// freed into the run cache, an allocation with an alignment above the page size must still get
// an aligned run (found by fuzz_malloc: memalign(32 KiB, 129 KiB) returned a run aligned to
// 16 KiB, a cached run that had been grown in place from 4 pages).
#include <bsalloc/page_resource.hpp>

#include <cstdint>
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

bool aligned(const void* p, std::size_t alignment) {
  return reinterpret_cast<std::uintptr_t>(p) % alignment == 0;
}

}  // namespace

TEST_CASE("a run grown in place and freed is not handed to an over-aligned request") {
  bsalloc_test::pin_to_this_cpu pin;  // the run cache is per core
  page_resource res(page_resource_options{.cache_bytes_per_core = 4 << 20});
  // A 4-page run at an odd multiple of 4 pages, grown in place to 33 pages: its head keeps the
  // 4-page alignment, below the 64-page buddy block a fresh 33-page run comes from.
  void* first = res.allocate_pages(4);
  void* small = res.allocate_pages(4);
  REQUIRE(aligned(first, 8 * page_size));
  REQUIRE(small == static_cast<std::byte*>(first) + 4 * page_size);
  REQUIRE(res.resize_pages(small, 4, 33));  // pages 8..36 of a fresh region are free
  const bool low = !aligned(small, 8 * page_size);
  CHECK(low);
  res.deallocate_pages(small, 33);
  res.check_invariants();  // C3: no cached run below its buddy block's alignment
  for (const std::size_t alignment : {2 * page_size, 8 * page_size, 64 * page_size}) {
    CAPTURE(alignment);
    void* p = res.allocate_pages(33, alignment);
    CHECK(aligned(p, alignment));
    if (low && alignment == 8 * page_size) CHECK(p != small);
    res.deallocate_pages(p, 33);
  }
  res.deallocate_pages(first, 4);
  res.check_invariants();
}

TEST_CASE("over-aligned runs, randomised with in-place resizes, against a model") {
  const auto seed = bsalloc_test::test_seed("test_page_alignment");
  std::mt19937_64 rng(seed);
  page_resource res(
      page_resource_options{.os_region_bytes = 8 << 20, .cache_bytes_per_core = 1 << 20});
  struct live {
    unsigned char* p;
    std::size_t n;
    unsigned char fill;
  };
  std::vector<live> v;
  for (int i = 0; i < 6000; ++i) {
    const unsigned op = static_cast<unsigned>(rng() % 5);
    if (op <= 1 || v.empty()) {
      const std::size_t n = 1 + rng() % 70;
      const std::size_t alignment = page_size << (rng() % 8);  // 4 KiB .. 512 KiB
      CAPTURE(n);
      CAPTURE(alignment);
      auto* p = static_cast<unsigned char*>(res.allocate_pages(n, alignment));
      REQUIRE(aligned(p, alignment));
      for (const live& l : v) REQUIRE((p + n * page_size <= l.p || l.p + l.n * page_size <= p));
      const auto fill = static_cast<unsigned char>(rng());
      std::memset(p, fill, n * page_size);
      v.push_back({p, n, fill});
    } else {
      live& l = v[rng() % v.size()];
      for (std::size_t b = 0; b < l.n * page_size; b += 1021) REQUIRE(l.p[b] == l.fill);
      if (op == 2) {
        res.deallocate_pages(l.p, l.n);
        l = v.back();
        v.pop_back();
      } else {
        const std::size_t m = 1 + rng() % 70;
        if (res.resize_pages(l.p, l.n, m)) {
          if (m > l.n) std::memset(l.p + l.n * page_size, l.fill, (m - l.n) * page_size);
          l.n = m;
        }
        REQUIRE(res.usable_size(l.p) == l.n * page_size);
      }
    }
    if (i % 250 == 0) res.check_invariants();
  }
  for (const live& l : v) res.deallocate_pages(l.p, l.n);
  res.check_invariants();
  CHECK(res.stats().allocated_bytes == 0);
}

TEST_CASE("a bad alignment is refused with the run cache warm, as with it cold") {
  // Found by fuzz_page_resource: the cache's fast path tested alignment <= page_size and
  // "power of two" as (a & (a - 1)) == 0, which 0 passes, so allocate_pages(n, 0) returned a
  // cached run instead of throwing.
  bsalloc_test::pin_to_this_cpu pin;
  page_resource res(page_resource_options{.cache_bytes_per_core = 1 << 20});
  for (const std::size_t count : {std::size_t{1}, std::size_t{5}, std::size_t{16}}) {
    CAPTURE(count);
    res.deallocate_pages(res.allocate_pages(count), count);  // a run of `count` in the cache
    REQUIRE(res.stats().cached_bytes == count * page_size);
    for (const std::size_t bad : {std::size_t{0}, std::size_t{3}, std::size_t{12}}) {
      CAPTURE(bad);
      CHECK_THROWS_AS((void)res.allocate_pages(count, bad), std::invalid_argument);
      CHECK_THROWS_AS((void)res.allocate(count * page_size, bad), std::invalid_argument);
    }
    CHECK(res.stats().cached_bytes == count * page_size);  // nothing taken
    CHECK(res.stats().allocated_bytes == 0);
    res.flush_cache();
  }
  res.check_invariants();
}
