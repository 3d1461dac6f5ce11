// SPDX-License-Identifier: Apache-2.0
// The per-thread cache of large runs (src/slab/large_cache.hpp, slab_resource_options::
// large_cache_bytes): a large block a thread frees is parked in its cache and handed to its
// next large request of the same run class (or of one up to a third smaller: a borrow); the
// page layer sees the run allocated and parked (I11) meanwhile. Checked here: hits, borrows,
// the bounds (per bin, the budget and how it follows the live bytes), what stats() says, every
// way runs leave the cache (trim, thread exit, release, destruction, a bin or budget that is
// full), a double free of a parked run, fork, and a randomised model run on several threads.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::page_size;
using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

slab_resource_options unchecked(std::size_t budget = std::size_t{4} << 20) {
  slab_resource_options o;
  o.checked = false;  // the cache works on the path that ships (checked mode keeps records)
  o.large_cache_bytes = budget;
  return o;
}

// The run class of the large cache (large_cache::class_pages): exact up to 8 pages, then four
// counts per doubling.
std::size_t class_pages(std::size_t bytes) {
  const std::size_t pages = page_resource::pages_for(bytes);
  if (pages <= 8) return pages;
  std::size_t pow = 8;
  while (pow * 2 < pages) pow *= 2;  // pow < pages <= 2 pow
  const std::size_t step = pow / 4;
  return (pages + step - 1) / step * step;
}

}  // namespace

TEST_CASE("large cache: a freed large block is the same thread's next one of its run class") {
  page_resource pages;
  slab_resource r({}, unchecked(), &pages);
  void* a = r.allocate(100 << 10);
  std::memset(a, 0x5a, 64);
  auto s = r.stats();
  CHECK(s.large_objects == 1);
  CHECK(s.large_bytes == 100 << 10);
  CHECK(s.large_cached_runs == 0);
  const std::size_t allocated = pages.stats().allocated_bytes;
  r.deallocate(a, 100 << 10);
  s = r.stats();
  CHECK(s.large_objects == 0);
  CHECK(s.large_bytes == 0);
  CHECK(s.large_cached_runs == 1);
  CHECK(s.large_cached_bytes == class_pages(100 << 10) * page_size);
  CHECK(s.bytes_reserved >= s.large_cached_bytes);
  // Still allocated in the page layer, marked parked; not its user's any more.
  CHECK(pages.stats().allocated_bytes == allocated);
  const auto run = pages.find_run(a);
  REQUIRE(run);
  CHECK(run->parked);
  CHECK_FALSE(run->cached);
  CHECK(r.live_blocks().empty());
  r.check_invariants();
  pages.check_invariants();
  // 97 KiB and 100 KiB are both 28-page runs: the parked one serves.
  void* b = r.allocate(97 << 10);
  CHECK(b == a);
  s = r.stats();
  CHECK(s.large_objects == 1);
  CHECK(s.large_bytes == 97 << 10);
  CHECK(s.large_cached_runs == 0);
  const auto walk = r.live_blocks();
  REQUIRE(walk.size() == 1);
  CHECK(walk[0].ptr == b);
  CHECK(walk[0].bytes == 97 << 10);
  CHECK(walk[0].large);
  // A size of another class does not take it.
  r.deallocate(b, 97 << 10);
  void* c = r.allocate(40 << 10);
  CHECK(c != a);
  r.deallocate(c, 40 << 10);
  r.check_invariants();
  pages.check_invariants();
}

TEST_CASE("large cache: bounded per bin and by large_cache_bytes; the rest goes to the pages") {
  page_resource pages;
  SUBCASE("a full bin gives its oldest run back") {
    constexpr std::size_t per_bin = 16;  // large_cache::per_bin
    constexpr std::size_t extra = 4;
    slab_resource r({}, unchecked(std::size_t{16} << 20), &pages);
    std::vector<void*> v;
    for (std::size_t i = 0; i < per_bin + extra; ++i) v.push_back(r.allocate(64 << 10));
    const std::size_t live = pages.stats().allocated_bytes;
    for (void* p : v) r.deallocate(p, 64 << 10);
    const auto s = r.stats();
    CHECK(s.large_cached_runs == per_bin);
    CHECK(s.large_cached_bytes == per_bin * (64 << 10));
    CHECK(pages.stats().allocated_bytes == live - extra * (64 << 10));
    // The newest per_bin stay (LIFO): the last one freed comes back first.
    CHECK(r.allocate(64 << 10) == v.back());
    for (std::size_t i = extra; i + 1 < v.size(); ++i) CHECK(pages.find_run(v[i])->parked);
    for (std::size_t i = 0; i < extra; ++i) {
      const auto run = pages.find_run(v[i]);  // free, or in the page layer's run cache
      CHECK((!run || !run->parked));
    }
    r.deallocate(v.back(), 64 << 10);
    r.check_invariants();
  }
  SUBCASE("a run that would go over the budget is given back") {
    slab_resource r({}, unchecked(std::size_t{256} << 10), &pages);
    std::vector<void*> v;
    for (int i = 0; i < 6; ++i) v.push_back(r.allocate(100 << 10));  // 28 pages each
    for (void* p : v) r.deallocate(p, 100 << 10);
    const auto s = r.stats();
    CHECK(s.large_cached_runs == 2);  // 2 x 112 KiB <= 256 KiB < 3 x 112 KiB
    CHECK(s.large_cached_bytes == 2 * 28 * page_size);
    r.check_invariants();
  }
  SUBCASE("off: large_cache_bytes 0, checked mode, or no thread cache") {
    for (int mode = 0; mode < 3; ++mode) {
      CAPTURE(mode);
      slab_resource_options o = unchecked(mode == 0 ? 0 : std::size_t{4} << 20);
      if (mode == 1) o.checked = true;
      if (mode == 2) o.thread_cache = false;
      slab_resource r({}, o, &pages);
      const std::size_t before = pages.stats().allocated_bytes;
      void* p = r.allocate(100 << 10);
      r.deallocate(p, 100 << 10);
      CHECK(r.stats().large_cached_runs == 0);
      CHECK(pages.stats().allocated_bytes == before);
    }
  }
  SUBCASE("blocks above 256 KiB and over-aligned requests pass it by") {
    slab_resource r({}, unchecked(std::size_t{16} << 20), &pages);
    void* big = r.allocate(300 << 10);
    r.deallocate(big, 300 << 10);
    CHECK(r.stats().large_cached_runs == 0);
    void* p = r.allocate(64 << 10);
    r.deallocate(p, 64 << 10);
    REQUIRE(r.stats().large_cached_runs == 1);
    // Stricter than a page: a parked run aligned enough serves (a 16-page buddy run is
    // aligned to 64 KiB), one that is not stays parked.
    const bool aligned = reinterpret_cast<std::uintptr_t>(p) % 65536 == 0;
    void* q = r.allocate(64 << 10, 65536);
    CHECK(reinterpret_cast<std::uintptr_t>(q) % 65536 == 0);
    CHECK(r.stats().large_cached_runs == (aligned ? 0u : 1u));
    if (aligned) CHECK(q == p);
    void* huge_align = r.allocate(64 << 10, std::size_t{1} << 22);
    CHECK(reinterpret_cast<std::uintptr_t>(huge_align) % (std::size_t{1} << 22) == 0);
    r.deallocate(huge_align, 64 << 10, std::size_t{1} << 22);
    r.deallocate(q, 64 << 10, 65536);
    // Both parked now; a parked run aligned to 4 MiB (huge_align at least) serves that again.
    const auto parked = r.stats().large_cached_runs;
    CHECK(parked == (aligned ? 2u : 3u));
    void* again = r.allocate(64 << 10, std::size_t{1} << 22);
    CHECK(reinterpret_cast<std::uintptr_t>(again) % (std::size_t{1} << 22) == 0);
    CHECK(r.stats().large_cached_runs == parked - 1);
    CHECK((again == huge_align || again == q));
    r.deallocate(again, 64 << 10, std::size_t{1} << 22);
    r.check_invariants();
  }
  pages.check_invariants();
}

TEST_CASE("large cache: a miss takes a run of the next two bins up, at most half as big again") {
  page_resource pages;
  slab_resource r({}, unchecked(std::size_t{16} << 20), &pages);
  // Run classes above 8 pages go in four steps per doubling: 32, 40, 48, 56, 64 pages.
  void* run64 = r.allocate(64 * page_size);
  r.deallocate(run64, 64 * page_size);
  REQUIRE(r.stats().large_cached_runs == 1);
  // 40 pages: three bins below, and 64 > 1.5 x 40: not borrowed.
  void* p40 = r.allocate(40 * page_size);
  CHECK(p40 != run64);
  CHECK(r.stats().large_cached_runs == 1);
  // 48 pages (class 48, two bins below, 64 <= 72): the 64-page run, still of 64 pages.
  const std::size_t asked = 47 * page_size + 1;
  void* p48 = r.allocate(asked);
  CHECK(p48 == run64);
  CHECK(r.stats().large_cached_runs == 0);
  CHECK(r.stats().large_bytes == 40 * page_size + asked);  // what was asked, not the run
  const auto run = pages.find_run(p48);
  REQUIRE(run);
  CHECK(run->pages == 64);
  CHECK(!run->parked);
  pages.check_invariants();  // the borrowed run live again, tagged with what was asked
  r.check_invariants();
  std::memset(p48, 0x5a, asked);
  // Freed, it goes back to the 64-page bin: a 64-page request takes it.
  r.deallocate(p48, asked);
  CHECK(r.stats().large_cached_bytes == 64 * page_size);
  CHECK(r.allocate(64 * page_size) == run64);
  r.check_invariants();
  // The exact bin first when it holds a run: a 48-page run parked next to the 64-page one.
  void* run48 = r.allocate(48 * page_size);
  r.deallocate(run48, 48 * page_size);
  r.deallocate(run64, 64 * page_size);
  CHECK(r.allocate(48 * page_size) == run48);
  // 56 pages takes the 64-page run (one bin up); then nothing is left for 56 pages.
  void* p56 = r.allocate(56 * page_size);
  CHECK(p56 == run64);
  CHECK(r.stats().large_cached_runs == 0);
  void* other = r.allocate(56 * page_size);  // nothing parked: from the page layer
  CHECK(other != run64);
  r.deallocate(other, 56 * page_size);
  r.deallocate(p56, 56 * page_size);
  r.deallocate(run48, 48 * page_size);
  r.deallocate(p40, 40 * page_size);
  r.check_invariants();
  pages.check_invariants();
}

TEST_CASE("large cache: the budget grows to a quarter of the thread's live large bytes") {
  page_resource pages;
  constexpr std::size_t base = 256 << 10;   // large_cache_bytes
  constexpr std::size_t block = 100 << 10;  // a run of 28 pages (112 KiB)
  constexpr std::size_t run = 28 * page_size;
  slab_resource r({}, unchecked(base), &pages);
  SUBCASE("few live blocks: the base budget") {
    std::vector<void*> v;
    for (int i = 0; i < 10; ++i) v.push_back(r.allocate(block));
    for (void* p : v) r.deallocate(p, block);
    CHECK(r.stats().large_cached_runs == 2);  // 2 x 112 KiB <= 256 KiB
  }
  SUBCASE("many live blocks: up to 4 x the base, and back down as they are freed") {
    std::vector<void*> live, churn;
    for (int i = 0; i < 60; ++i) live.push_back(r.allocate(block));
    for (int i = 0; i < 12; ++i) churn.push_back(r.allocate(block));
    // Each free of the churn sees at least 60 blocks live: a quarter of 6000 KiB is over the
    // ceiling of 4 x 256 KiB = 1 MiB, which holds 9 runs (1008 KiB), not 10 (1120 KiB).
    for (void* p : churn) r.deallocate(p, block);
    CHECK(r.stats().large_cached_runs == 9);
    CHECK(r.stats().large_cached_bytes == 9 * run);
    r.check_invariants();
    // They serve the thread's next requests.
    for (std::size_t i = 0; i < 9; ++i) churn[i] = r.allocate(block);
    CHECK(r.stats().large_cached_runs == 0);
    for (std::size_t i = 0; i < 9; ++i) r.deallocate(churn[i], block);
    CHECK(r.stats().large_cached_runs == 9);
    // Freeing the live blocks: the budget follows a quarter of what is left (at least the
    // base), and each free past it gives the oldest runs back until the cache fits.
    std::size_t left = live.size() * block;
    for (void* p : live) {
      r.deallocate(p, block);
      left -= block;
      const std::size_t budget = std::max(base, std::min(left / 4, 4 * base));
      CAPTURE(left);
      CHECK(r.stats().large_cached_bytes <= budget);
    }
    CHECK(r.stats().large_cached_bytes <= base);  // nothing live: the base budget
    CHECK(r.stats().large_cached_runs == 2);
    r.check_invariants();
  }
  r.trim();
  CHECK(r.stats().large_cached_runs == 0);
  pages.check_invariants();
}

TEST_CASE("large cache: trim, release, destruction and thread exit give every parked run back") {
  page_resource pages;
  const std::size_t base = pages.stats().allocated_bytes;
  auto churn = [](slab_resource& r, int n) {
    std::vector<void*> v;
    for (int i = 0; i < n; ++i) v.push_back(r.allocate(std::size_t(40 + 20 * i) << 10));
    for (int i = 0; i < n; ++i) r.deallocate(v[std::size_t(i)], std::size_t(40 + 20 * i) << 10);
  };
  SUBCASE("trim() flushes the caller's cache and reports the bytes") {
    slab_resource r({}, unchecked(), &pages);
    churn(r, 6);
    const auto cached = r.stats().large_cached_bytes;
    REQUIRE(cached > 0);
    CHECK(r.trim() >= cached);
    CHECK(r.stats().large_cached_runs == 0);
    CHECK(pages.stats().allocated_bytes == base);
  }
  SUBCASE("release()") {
    slab_resource r({}, unchecked(), &pages);
    churn(r, 6);
    void* live = r.allocate(80 << 10);
    void* odd = r.allocate(70 << 10);  // 18 pages asked, a 20-page run (the cache's class)
    REQUIRE(r.stats().large_cached_runs > 0);
    r.release();
    const auto s = r.stats();
    CHECK(s.large_cached_runs == 0);
    CHECK(s.large_objects == 0);
    CHECK(s.large_bytes == 0);
    CHECK(pages.stats().allocated_bytes == base);
    (void)live;  // released with the rest, whatever their page counts
    (void)odd;
    r.check_invariants();
    churn(r, 3);  // usable afterwards
    r.check_invariants();
  }
  SUBCASE("destruction, with runs parked in another thread's cache") {
    auto r = std::make_unique<slab_resource>(std::pmr::pool_options{}, unchecked(), &pages);
    std::atomic<bool> parked{false}, done{false};
    std::thread t([&] {
      churn(*r, 6);
      parked = true;
      while (!done) std::this_thread::yield();
    });
    while (!parked) std::this_thread::yield();
    CHECK(r->stats().large_cached_runs == 6);
    r->check_invariants();
    r.reset();  // t lives on, idle: its cache of the dead resource is freed with it
    CHECK(pages.stats().allocated_bytes == base);
    done = true;
    t.join();
  }
  SUBCASE("a thread that goes on with small objects only gives its parked runs back") {
    slab_resource r({}, unchecked(), &pages);
    churn(r, 6);
    REQUIRE(r.stats().large_cached_runs == 6);
    // 4 KiB objects: a bin of 8, refilled 4 at a time, so each round is hundreds of slow-path
    // visits (refills and overflows), and scavenges with them.
    for (int round = 0; round < 3; ++round) {
      std::vector<void*> v;
      for (int i = 0; i < 2000; ++i) v.push_back(r.allocate(4096));
      for (void* p : v) r.deallocate(p, 4096);
    }
    CHECK(r.stats().large_cached_runs == 0);
    r.check_invariants();
  }
  SUBCASE("thread exit: parked runs go back, the thread's counts stay with the resource") {
    slab_resource r({}, unchecked(), &pages);
    std::vector<void*> kept;
    std::thread([&] {
      churn(r, 6);
      kept.push_back(r.allocate(50 << 10));
      kept.push_back(r.allocate(70 << 10));
    }).join();
    auto s = r.stats();
    CHECK(s.large_cached_runs == 0);
    CHECK(s.large_objects == 2);
    CHECK(s.large_bytes == (120 << 10));
    r.deallocate(kept[0], 50 << 10);  // freed by another thread than its allocator's
    r.deallocate(kept[1], 70 << 10);
    s = r.stats();
    CHECK(s.large_objects == 0);
    CHECK(s.large_bytes == 0);
    r.check_invariants();
    CHECK(pages.stats().allocated_bytes == base);
  }
  pages.check_invariants();
}

TEST_CASE("large cache: a second free of a parked run throws naming it, losing nothing") {
  page_resource pages;
  slab_resource r({}, unchecked(), &pages);
  void* keep = r.allocate(60 << 10);
  std::memset(keep, 0x3c, 60 << 10);
  void* p = r.allocate(100 << 10);
  r.deallocate(p, 100 << 10);
  const auto before = r.stats();
  REQUIRE(before.large_cached_runs == 1);
  try {
    r.deallocate(p, 100 << 10);
    FAIL("a double free of a parked run was accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find(fmt::format("{}", p)) != std::string::npos);
  }
  const auto after = r.stats();
  CHECK(after.large_objects == before.large_objects);
  CHECK(after.large_bytes == before.large_bytes);
  CHECK(after.large_cached_runs == 1);
  r.check_invariants();
  pages.check_invariants();
  // The parked run still serves, tagged again: freed once more, it is parked once more.
  void* q = r.allocate(100 << 10);
  CHECK(q == p);
  CHECK(r.live_blocks().size() == 2);
  r.deallocate(q, 100 << 10);
  CHECK(r.stats().large_cached_runs == 1);
  CHECK(std::all_of(static_cast<unsigned char*>(keep),
                    static_cast<unsigned char*>(keep) + (60 << 10),
                    [](unsigned char c) { return c == 0x3c; }));
  r.deallocate(keep, 60 << 10);
  r.check_invariants();
}

TEST_CASE("large cache: the large front refuses a bad alignment as the slow path does") {
  // Requests above every class with alignment <= 16 take the large front (a hit in the
  // thread's cache, no classification): it must refuse what the slow path refuses, warm
  // cache or cold, and lose nothing.
  page_resource pages;
  slab_resource r({}, unchecked(), &pages);
  constexpr std::size_t big = 100 << 10;
  for (const bool warm : {false, true}) {
    CAPTURE(warm);
    void* p = r.allocate(big);
    std::memset(p, 0x77, big);
    if (warm) {
      r.deallocate(p, big);
      REQUIRE(r.stats().large_cached_runs == 1);
    }
    for (const std::size_t a : {0u, 3u, 12u}) {
      CAPTURE(a);
      CHECK_THROWS_AS((void)r.allocate(big, a), std::invalid_argument);
    }
    CHECK(r.stats().large_cached_runs == (warm ? 1u : 0u));
    if (warm) {
      void* q = r.allocate(big, 8);  // the parked run, still there
      CHECK(q == p);
      std::memset(q, 0x77, big);
    }
    // A free with a bad alignment is refused; the block stays its user's.
    for (const std::size_t a : {0u, 3u, 12u}) {
      CAPTURE(a);
      CHECK_THROWS_AS(r.deallocate(p, big, a), std::invalid_argument);
    }
    CHECK(r.stats().large_objects == 1);
    CHECK(static_cast<unsigned char*>(p)[big - 1] == 0x77);
    r.check_invariants();
    pages.check_invariants();
    r.deallocate(p, big, 16);
    CHECK(r.stats().large_objects == 0);
    CHECK(r.stats().large_cached_runs == 1);
    void* again = r.allocate(big);  // both rounds end with the run parked, then taken back
    CHECK(again == p);
    r.deallocate(again, big);
  }
  r.check_invariants();
  pages.check_invariants();
}

TEST_CASE("large cache: a resource without an inline path sends no call to the large front") {
  // Hardened mode with zero-on-free keeps large caches (a page_resource upstream, checked mode
  // off) but has no inline path: every call, 0 bytes included, takes the slow path, which
  // validates it. A free of a large block that says 0 bytes is a bad free there (an abort
  // naming it), not a block parked for the next request.
  slab_resource_options o = unchecked();
  o.hardened = true;
  o.hardened_zero_on_free = true;
  {
    page_resource pages;
    slab_resource r({}, o, &pages);
    void* p = r.allocate(100 << 10);
    r.deallocate(p, 100 << 10);
    CHECK(r.stats().large_cached_runs == 1);  // the cache works there, on the slow path
    CHECK(r.allocate(100 << 10) == p);
    r.deallocate(p, 100 << 10);
    r.check_invariants();
  }
  const auto child = bsalloc_test::run_in_child([o] {
    page_resource pages;
    slab_resource r({}, o, &pages);
    void* p = r.allocate(100 << 10);
    r.deallocate(p, 0, 8);
    std::fprintf(stderr, "parked: %zu\n", r.stats().large_cached_runs);
  });
  CHECK(child.aborted);
  CHECK(child.err.find("parked:") == std::string::npos);
}

TEST_CASE("large cache: request sizes across the run classes hit the bin of their class") {
  // Every page count up to 64 pages (the front's table against class_pages()): a block freed
  // and asked again at any size of its class comes back; one of the next class does not.
  page_resource pages;
  slab_resource r({}, unchecked(std::size_t{64} << 20), &pages);
  for (std::size_t n = 9; n <= 64; ++n) {  // 8 pages and below are classes of the slabs
    CAPTURE(n);
    const std::size_t bytes = n * page_size - 100;
    void* p = r.allocate(bytes);
    r.deallocate(p, bytes);
    const std::size_t cls = class_pages(bytes);
    // The smallest request of the same class, then one of the next class up.
    std::size_t first = cls;
    while (first > 1 && class_pages((first - 1) * page_size) == cls) --first;
    CAPTURE(first);
    void* q = r.allocate((first - 1) * page_size + 1);
    CHECK(q == p);
    r.deallocate(q, (first - 1) * page_size + 1);
    if (cls < 64) {
      void* other = r.allocate(cls * page_size + 1);
      CHECK(other != p);
      r.deallocate(other, cls * page_size + 1);
    }
    CHECK(r.trim() > 0);
  }
  r.check_invariants();
  pages.check_invariants();
}

TEST_CASE("large cache: a forked child allocates and frees large blocks; parent's cache intact") {
  page_resource pages;
  slab_resource r({}, unchecked(), &pages);
  std::vector<void*> v;
  for (int i = 0; i < 4; ++i) v.push_back(r.allocate(std::size_t(50 + 30 * i) << 10));
  for (int i = 0; i < 4; ++i) r.deallocate(v[std::size_t(i)], std::size_t(50 + 30 * i) << 10);
  REQUIRE(r.stats().large_cached_runs == 4);
  const int rc = bsalloc_test::child_exit_code([&] {
    void* a = r.allocate(80 << 10);  // the parked run of its class, in the child's copy
    if (a != v[1]) return 1;
    std::memset(a, 1, 80 << 10);
    void* b = r.allocate(200 << 10);
    r.deallocate(b, 200 << 10);
    r.deallocate(a, 80 << 10);
    r.check_invariants();
    pages.check_invariants();
    return r.trim() > 0 && r.stats().large_cached_runs == 0 ? 0 : 2;
  });
  CHECK(rc == 0);
  CHECK(r.stats().large_cached_runs == 4);
  r.check_invariants();
}

TEST_CASE("large cache: model check, several threads, frees on other threads than the allocator") {
  const std::uint64_t seed = bsalloc_test::test_seed("large cache model");
  page_resource pages;
  slab_resource r({}, unchecked(std::size_t{1} << 20), &pages);
  const std::size_t base = pages.stats().allocated_bytes;
  constexpr int threads = 4;
  constexpr int ops = 4000;
  struct block {
    unsigned char* p;
    std::size_t size, align;
    unsigned char fill;
  };
  // Each thread frees what the next one allocated (handed over under a lock) and its own.
  std::mutex hand_lock;
  std::vector<std::vector<block>> handed(threads);
  std::atomic<int> failures{0};
  auto check = [&](const block& b) {
    for (std::size_t i = 0; i < b.size; i += 4093)
      if (b.p[i] != b.fill) return false;
    return b.p[b.size - 1] == b.fill && reinterpret_cast<std::uintptr_t>(b.p) % b.align == 0;
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(seed + std::uint64_t(t));
      std::vector<block> mine;
      for (int i = 0; i < ops; ++i) {
        const unsigned op = rng() % 8;
        if (op < 4 || mine.empty()) {
          const std::size_t size = (std::size_t{32} << 10) + rng() % (std::size_t{300} << 10);
          const std::size_t align = std::size_t{16} << (rng() % 10);  // 16 … 8192
          auto* p = static_cast<unsigned char*>(r.allocate(size, align));
          const auto fill = static_cast<unsigned char>(rng());
          for (std::size_t k = 0; k < size; k += 4093) p[k] = fill;
          p[size - 1] = fill;
          mine.push_back({p, size, align, fill});
        } else if (op < 7) {
          const std::size_t k = rng() % mine.size();
          if (!check(mine[k])) ++failures;
          r.deallocate(mine[k].p, mine[k].size, mine[k].align);
          mine[k] = mine.back();
          mine.pop_back();
        } else {
          std::lock_guard lock(hand_lock);
          handed[std::size_t((t + 1) % threads)].push_back(mine.back());
          mine.pop_back();
          for (const block& b : handed[std::size_t(t)]) {
            if (!check(b)) ++failures;
            r.deallocate(b.p, b.size, b.align);
          }
          handed[std::size_t(t)].clear();
        }
      }
      for (const block& b : mine) {
        if (!check(b)) ++failures;
        r.deallocate(b.p, b.size, b.align);
      }
    });
  for (auto& th : pool) th.join();
  std::size_t left_objects = 0, left_bytes = 0;
  for (auto& h : handed)
    for (const block& b : h) {
      ++left_objects;
      left_bytes += b.size;
    }
  CHECK(failures == 0);
  auto s = r.stats();
  CHECK(s.large_objects == left_objects);
  CHECK(s.large_bytes == left_bytes);
  CHECK(s.large_cached_runs == 0);  // every thread exited: its cache went back
  r.check_invariants();
  pages.check_invariants();
  for (auto& h : handed)
    for (const block& b : h) {
      CHECK(check(b));
      r.deallocate(b.p, b.size, b.align);
    }
  r.trim();
  CHECK(r.stats().large_objects == 0);
  CHECK(pages.stats().allocated_bytes == base);
}
