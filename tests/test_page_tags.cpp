// SPDX-License-Identifier: Apache-2.0
// Owner tags (page_resource.hpp, I12): a run records its user's tag and bytes in its second
// page's metadata, and slab_resource keeps its large blocks there instead of a table when its
// upstream is a page_resource (checked mode off): stats, release(), the heap walk, a wrong size
// and a double free behave as with the table.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::page_resource_options;
using bsalloc::page_size;
using bsalloc::slab_resource;

namespace {

std::vector<page_resource::tagged_run> all_tagged(const page_resource& res, std::uint32_t tag) {
  std::vector<page_resource::tagged_run> v;
  std::array<page_resource::tagged_run, 3> batch;  // small: the cursor is exercised
  std::uint64_t cursor = 0;
  while (const std::size_t n = res.tagged_runs(tag, batch, cursor))
    v.insert(v.end(), batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(n));
  return v;
}

// Unchecked (debug builds default to checked mode, which keeps the table).
// Without large bins (large_cache_bytes 0): every large block on the tagged path, as a thread
// without a cache has it (the bins are tests/test_large_bins.cpp's).
slab_resource unchecked_on(page_resource& pages) {
  bsalloc::slab_resource_options o;
  o.checked = false;
  o.large_cache_bytes = 0;
  return slab_resource(std::pmr::pool_options{}, o, &pages);
}

}  // namespace

TEST_CASE("owner tags: set, found, cleared once, never on a run of one page") {
  for (std::size_t cache : {std::size_t{0}, std::size_t{4} << 20}) {
    CAPTURE(cache);
    page_resource res(page_resource_options{.cache_bytes_per_core = cache});
    bool tagged = true;
    void* one = res.allocate_tagged(100, 16, 7, tagged);
    CHECK_FALSE(tagged);  // no second page
    void* untagged = res.allocate_tagged(5 * page_size, 16, 0, tagged);
    CHECK_FALSE(tagged);  // 0 is "untagged"
    void* five = res.allocate_tagged(5 * page_size - 100, 16, 7, tagged);
    CHECK(tagged);
    void* big = res.allocate_tagged(99 * page_size + 1, 4 * page_size, 7, tagged);
    CHECK(tagged);
    CHECK(reinterpret_cast<std::uintptr_t>(big) % (4 * page_size) == 0);
    res.check_invariants();
    auto v = all_tagged(res, 7);
    REQUIRE(v.size() == 2);
    for (const auto& t : v) {
      CHECK((t.start == five || t.start == big));
      CHECK(t.bytes == (t.start == five ? 5 * page_size - 100 : 99 * page_size + 1));
    }
    CHECK(all_tagged(res, 8).empty());
    std::size_t bytes = 0;
    CHECK_FALSE(res.deallocate_tagged(five, 8, bytes));  // another owner's tag
    CHECK_FALSE(res.deallocate_tagged(one, 7, bytes));   // never tagged
    CHECK_FALSE(res.deallocate_tagged(untagged, 7, bytes));
    CHECK_FALSE(res.deallocate_tagged(static_cast<std::byte*>(five) + page_size, 7, bytes));
    int outside = 0;
    CHECK_FALSE(res.deallocate_tagged(&outside, 7, bytes));  // not this resource's
    CHECK(res.deallocate_tagged(five, 7, bytes));            // freed
    CHECK(bytes == 5 * page_size - 100);
    CHECK_FALSE(res.deallocate_tagged(five, 7, bytes));                     // once
    CHECK_THROWS_AS(res.deallocate_pages(five, 5), std::invalid_argument);  // already free
    CHECK(all_tagged(res, 7).size() == 1);
    res.check_invariants();
    // A run handed out again starts untagged, whichever path it comes from.
    void* again = res.allocate_pages(5);
    CHECK_FALSE(res.deallocate_tagged(again, 7, bytes));
    res.deallocate_pages(again, 5);
    res.flush_cache();
    again = res.allocate_pages(5);
    CHECK_FALSE(res.deallocate_tagged(again, 7, bytes));
    // take_tagged_runs clears what it reports.
    std::array<page_resource::tagged_run, 4> batch;
    std::uint64_t cursor = 0;
    CHECK(res.take_tagged_runs(7, batch, cursor) == 1);
    CHECK(batch[0].start == big);
    CHECK(res.take_tagged_runs(7, batch, cursor) == 0);
    cursor = 0;
    CHECK(res.take_tagged_runs(7, batch, cursor) == 0);
    CHECK_FALSE(res.deallocate_tagged(big, 7, bytes));
    res.check_invariants();
    res.deallocate_pages(again, 5);
    res.deallocate(big, 99 * page_size + 1, 4 * page_size);
    res.deallocate(one, 100, 16);
    res.deallocate(untagged, 5 * page_size, 16);
    res.flush_cache();
    CHECK(res.stats().allocated_bytes == 0);
    res.check_invariants();
  }
}

TEST_CASE("owner tags: many runs, batches of any size") {
  page_resource res(page_resource_options{.cache_bytes_per_core = std::size_t{1} << 20});
  std::vector<void*> mine;
  for (std::size_t i = 0; i < 300; ++i) {
    bool tagged = false;
    mine.push_back(res.allocate_tagged(2 * page_size + i * 512, 16, i % 3 == 0 ? 5 : 6, tagged));
    CHECK(tagged);
  }
  CHECK(all_tagged(res, 5).size() == 100);
  CHECK(all_tagged(res, 6).size() == 200);
  std::array<page_resource::tagged_run, 7> batch;
  std::uint64_t cursor = 0;
  std::size_t taken = 0;
  while (const std::size_t n = res.take_tagged_runs(5, batch, cursor)) {
    taken += n;
    for (std::size_t i = 0; i < n; ++i) res.deallocate(batch[i].start, batch[i].bytes, 16);
  }
  CHECK(taken == 100);
  CHECK(all_tagged(res, 5).empty());
  res.check_invariants();
  for (std::size_t i = 0; i < mine.size(); ++i) {
    std::size_t bytes = 0;
    CHECK(res.deallocate_tagged(mine[i], 6, bytes) == (i % 3 != 0));
  }
  res.flush_cache();
  CHECK(res.stats().allocated_bytes == 0);
  res.check_invariants();
}

TEST_CASE("slab_resource on a page_resource: large blocks without a table") {
  page_resource pages(page_resource_options{.cache_bytes_per_core = std::size_t{4} << 20});
  slab_resource r = unchecked_on(pages);
  std::vector<std::pair<void*, std::size_t>> blocks;
  for (std::size_t bytes : {70000, 100000, 65537, 1 << 20, 300000})
    blocks.emplace_back(r.allocate(bytes), bytes);
  void* odd = r.allocate(64, 8192);  // one page: recorded in the table
  CHECK(r.stats().large_objects == 6);
  CHECK(r.stats().large_bytes == 70000 + 100000 + 65537 + (1 << 20) + 300000 + 64);
  // The heap walk reports each with the bytes asked for.
  auto walk = r.live_blocks();
  std::size_t large = 0;
  for (const auto& b : walk)
    if (b.large) {
      ++large;
      const auto it =
          std::find_if(blocks.begin(), blocks.end(), [&](auto& e) { return e.first == b.ptr; });
      if (it != blocks.end())
        CHECK(b.bytes == it->second);
      else
        CHECK((b.ptr == odd && b.bytes == 64));
    }
  CHECK(large == 6);
  r.check_invariants();
  pages.check_invariants();
  // Unchecked, a wrong size: the recorded one goes upstream (the page count matches).
  r.deallocate(blocks[1].first, 90000);
  CHECK(r.stats().large_objects == 5);
  // A double free reaches the upstream, which names it.
  CHECK_THROWS_AS(r.deallocate(blocks[1].first, 100000), std::invalid_argument);
  CHECK(r.stats().large_objects == 5);
  r.deallocate(blocks[0].first, 70000);
  r.deallocate(odd, 64, 8192);
  CHECK(r.stats().large_objects == 3);
  // release() finds the rest in the page runs.
  r.release();
  CHECK(r.stats().large_objects == 0);
  CHECK(r.stats().large_bytes == 0);
  pages.flush_cache();
  CHECK(pages.stats().allocated_bytes == 0);
  pages.check_invariants();
}

TEST_CASE("two slab_resources on one page_resource: each releases only its own") {
  page_resource pages;
  std::vector<void*> a_blocks, b_blocks;
  {
    slab_resource a = unchecked_on(pages);
    slab_resource b = unchecked_on(pages);
    for (int i = 0; i < 20; ++i) {
      a_blocks.push_back(a.allocate(70000 + 4096 * static_cast<std::size_t>(i)));
      b_blocks.push_back(b.allocate(80000));
    }
    a.release();
    CHECK(a.stats().large_objects == 0);
    CHECK(b.stats().large_objects == 20);
    for (void* p : b_blocks) std::memset(p, 1, 80000);  // still b's
    CHECK(b.live_blocks().size() == 20);
    pages.check_invariants();
  }  // b's destructor frees its blocks
  CHECK(pages.stats().allocated_bytes == 0);
}

TEST_CASE("slab_resource large blocks on a page_resource: threads, against the stats") {
  page_resource pages(page_resource_options{.cache_bytes_per_core = std::size_t{1} << 20});
  slab_resource r = unchecked_on(pages);
  const std::uint64_t seed = bsalloc_test::test_seed("test_page_tags");
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(seed + t);
      std::vector<std::pair<void*, std::size_t>> mine;
      for (int i = 0; i < 3000; ++i) {
        if (mine.size() < 16 && (mine.empty() || rng() % 2)) {
          const std::size_t bytes = 65537 + rng() % 400000;
          mine.emplace_back(r.allocate(bytes), bytes);
        } else {
          const std::size_t k = rng() % mine.size();
          r.deallocate(mine[k].first, mine[k].second);
          mine[k] = mine.back();
          mine.pop_back();
        }
      }
      for (auto& [p, n] : mine) r.deallocate(p, n);
    });
  for (auto& th : threads) th.join();
  CHECK(r.stats().large_objects == 0);
  CHECK(r.stats().large_bytes == 0);
  CHECK(r.live_blocks().empty());
  pages.check_invariants();
}
