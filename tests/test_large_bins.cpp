// SPDX-License-Identifier: Apache-2.0
// The thread cache's large bins (src/slab/large_bins.hpp, slab_resource_options::
// large_cache_bytes): the run classes above the slab classes, up to 256 KiB, are bins of the
// thread cache that the inline path serves as it serves the slab classes. A freed large block
// stays in its thread's bin (still allocated and tagged in the page layer) for the next request
// of its run class; a miss borrows a run of a bin up. Checked here: hits, borrows and their
// accounting, the limits (initial, growth, the ceiling), what stats() and the heap walk say,
// every way runs leave the bins (trim, thread exit, release, destruction, overflow, a quiet
// bin), the slow path's validation, fork, and a randomised model run on several threads.
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

slab_resource_options unchecked(std::size_t budget = slab_resource_options{}.large_cache_bytes) {
  slab_resource_options o;
  o.checked = false;  // the cache works on the path that ships (checked mode keeps records)
  o.large_cache_bytes = budget;
  return o;
}

// The run class of the large bins (large_runs::class_pages): exact up to 8 pages, then four
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

TEST_CASE("large bins: a freed large block is the same thread's next one of its run class") {
  page_resource pages;
  slab_resource r({}, unchecked(), &pages);
  REQUIRE(r.large_bins());
  const std::size_t run = class_pages(100 << 10) * page_size;  // 28 pages
  void* a = r.allocate(100 << 10);
  std::memset(a, 0x5a, 64);
  auto s = r.stats();
  CHECK(s.large_objects == 1);
  CHECK(s.large_bytes == run);  // a large block counts at its run class, as an object at its class
  CHECK(s.large_cached_runs == 0);
  const std::size_t allocated = pages.stats().allocated_bytes;
  r.deallocate(a, 100 << 10);
  s = r.stats();
  CHECK(s.large_objects == 0);
  CHECK(s.large_bytes == 0);
  CHECK(s.large_cached_runs == 1);
  CHECK(s.large_cached_bytes == run);
  CHECK(s.bytes_reserved >= s.large_cached_bytes);
  // Still allocated and live in the page layer (its user's, to the page layer: the bin's).
  CHECK(pages.stats().allocated_bytes == allocated);
  const auto info = pages.find_run(a);
  REQUIRE(info);
  CHECK_FALSE(info->parked);
  CHECK_FALSE(info->cached);
  CHECK(info->pages == 28);
  CHECK(r.live_blocks().empty());  // the calling thread's bins hold free runs
  r.check_invariants();
  pages.check_invariants();
  // 97 KiB and 100 KiB are both 28-page runs: the cached one serves.
  void* b = r.allocate(97 << 10);
  CHECK(b == a);
  s = r.stats();
  CHECK(s.large_objects == 1);
  CHECK(s.large_bytes == run);
  CHECK(s.large_cached_runs == 0);
  const auto walk = r.live_blocks();
  REQUIRE(walk.size() == 1);
  CHECK(walk[0].ptr == b);
  CHECK(walk[0].bytes == run);
  CHECK(walk[0].large);
  // A size of another class does not take it.
  r.deallocate(b, 97 << 10);
  void* c = r.allocate(40 << 10);
  CHECK(c != a);
  r.deallocate(c, 40 << 10);
  r.check_invariants();
  pages.check_invariants();
}

TEST_CASE("large bins: a bin starts small, grows for a thread that churns its class, gives back") {
  page_resource pages;
  SUBCASE("a thread that churns a burst: the bin grows to 16 runs, the rest goes back") {
    // The default 24 MiB: room for the 64 KiB bin to grow from 4 to 16 runs.
    slab_resource r({}, unchecked(), &pages);
    const std::size_t before = pages.stats().allocated_bytes;
    std::vector<void*> v(40);
    std::size_t most = 0;
    for (int round = 0; round < 4; ++round) {
      for (void*& p : v) p = r.allocate(64 << 10);  // hits, then misses
      for (std::size_t i = 0; i < v.size(); ++i) {
        r.deallocate(v[i], 64 << 10);
        const auto cached = r.stats().large_cached_runs;
        most = std::max(most, cached);
        CHECK(cached <= 16);
        // What is neither live nor cached went back to the page layer.
        CHECK(pages.stats().allocated_bytes == before + (v.size() - i - 1 + cached) * (64 << 10));
      }
      if (round == 0) CHECK(most == 8);  // grew once: missed, then overflowed
    }
    CHECK(most == 16);  // each round's misses let it grow again, up to 16
    // A cached run serves the next request (a full bin sent the runs freed after it back).
    void* q = r.allocate(64 << 10);
    CHECK(std::find(v.begin(), v.end(), q) != v.end());
    CHECK(r.stats().large_cached_runs == 15);
    r.deallocate(q, 64 << 10);
    r.check_invariants();
  }
  SUBCASE("a thread that only frees: the bin keeps its initial limit") {
    slab_resource r({}, unchecked(std::size_t{16} << 20), &pages);
    std::vector<void*> v;
    std::thread([&] {
      for (int i = 0; i < 20; ++i) v.push_back(r.allocate(64 << 10));
    }).join();
    for (void* p : v) {
      r.deallocate(p, 64 << 10);
      CHECK(r.stats().large_cached_runs <= 4);
    }
    r.check_invariants();
  }
  SUBCASE("a budget too small for one run of each bin in use: no large bins") {
    slab_resource r({}, unchecked(std::size_t{256} << 10), &pages);
    const std::size_t before = pages.stats().allocated_bytes;
    for (int i = 0; i < 6; ++i) {
      void* p = r.allocate(100 << 10);
      r.deallocate(p, 100 << 10);
      CHECK(r.stats().large_cached_runs == 0);
      CHECK(pages.stats().allocated_bytes == before);
    }
    r.check_invariants();
  }
  SUBCASE("the ceiling: the bins' limits stay within large_cache_bytes") {
    // 8 MiB: 12 bins in use (10 to 64 pages, 1456 KiB), 4 runs each to start (5.7 MiB); the
    // rest is what they may grow into.
    slab_resource r({}, unchecked(std::size_t{8} << 20), &pages);
    std::vector<std::pair<void*, std::size_t>> v;
    for (int round = 0; round < 3; ++round) {
      for (int k = 0; k < 4; ++k)
        for (std::size_t n = 9; n <= 64; ++n) v.emplace_back(r.allocate(n * page_size), n);
      for (auto& [p, n] : v) r.deallocate(p, n * page_size);
      v.clear();
      const auto s = r.stats();
      CHECK(s.large_cached_bytes <= std::size_t{8} << 20);
      r.check_invariants();  // L2: every bin within its limit, the limits within the ceiling
    }
    CHECK(r.stats().large_cached_bytes > 4 * (1456 << 10));  // some bins grew past 4 runs
    r.trim();
  }
  SUBCASE("off: large_cache_bytes 0, checked mode, no thread cache, hardened") {
    for (int mode = 0; mode < 4; ++mode) {
      CAPTURE(mode);
      slab_resource_options o = unchecked(mode == 0 ? 0 : std::size_t{4} << 20);
      if (mode == 1) o.checked = true;
      if (mode == 2) o.thread_cache = false;
      if (mode == 3) o.hardened = true;
      slab_resource r({}, o, &pages);
      const std::size_t before = pages.stats().allocated_bytes;
      void* p = r.allocate(100 << 10);
      r.deallocate(p, 100 << 10);
      CHECK(r.stats().large_cached_runs == 0);
      CHECK(pages.stats().allocated_bytes == before);
    }
  }
  SUBCASE("blocks above 256 KiB and requests aligned above a page pass them by") {
    slab_resource r({}, unchecked(std::size_t{16} << 20), &pages);
    void* big = r.allocate(300 << 10);
    r.deallocate(big, 300 << 10);
    CHECK(r.stats().large_cached_runs == 0);
    void* p = r.allocate(64 << 10);
    r.deallocate(p, 64 << 10);
    REQUIRE(r.stats().large_cached_runs == 1);
    // Aligned to a page (above the inline path's 16): the slow path serves it from the bin.
    void* q = r.allocate(64 << 10, page_size);
    CHECK(q == p);
    CHECK(r.stats().large_cached_runs == 0);
    r.deallocate(q, 64 << 10, page_size);  // validated, into the bin of its pages
    CHECK(r.stats().large_cached_runs == 1);
    // Above a page: from the page layer, whatever the bin holds.
    void* huge_align = r.allocate(64 << 10, std::size_t{1} << 22);
    CHECK(reinterpret_cast<std::uintptr_t>(huge_align) % (std::size_t{1} << 22) == 0);
    CHECK(r.stats().large_cached_runs == 1);
    r.deallocate(huge_align, 64 << 10, std::size_t{1} << 22);
    r.check_invariants();
  }
  pages.check_invariants();
}

TEST_CASE("large bins: a miss takes a run of the next two bins up, at most half as big again") {
  page_resource pages;
  slab_resource r({}, unchecked(std::size_t{16} << 20), &pages);
  const std::size_t reserved = r.stats().bytes_reserved;
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
  auto s = r.stats();
  CHECK(s.large_cached_runs == 0);
  CHECK(s.large_bytes == (40 + 48) * page_size);                // at the classes asked
  CHECK(s.bytes_reserved - reserved == (40 + 64) * page_size);  // every page held
  const auto run = pages.find_run(p48);
  REQUIRE(run);
  CHECK(run->pages == 64);
  pages.check_invariants();
  r.check_invariants();
  std::memset(p48, 0x5a, asked);
  // Freed as asked, the inline path puts it in the 48-page bin, where it serves 48 pages.
  r.deallocate(p48, asked);
  s = r.stats();
  CHECK(s.large_cached_bytes == 48 * page_size);
  CHECK(s.large_bytes == 40 * page_size);
  CHECK(s.bytes_reserved - reserved == (40 + 64) * page_size);
  r.check_invariants();
  void* again = r.allocate(48 * page_size);
  CHECK(again == run64);
  // Freed on a slow path (aligned to a page: validated), it goes to the bin of its own pages.
  r.deallocate(again, 48 * page_size, page_size);
  s = r.stats();
  CHECK(s.large_cached_bytes == 64 * page_size);
  CHECK(s.bytes_reserved - reserved == (40 + 64) * page_size);
  CHECK(r.allocate(64 * page_size) == run64);
  r.check_invariants();
  // The exact bin first when it holds a run: a 48-page run cached next to the 64-page one.
  void* run48 = r.allocate(48 * page_size);
  r.deallocate(run48, 48 * page_size);
  r.deallocate(run64, 64 * page_size);
  CHECK(r.allocate(48 * page_size) == run48);
  // 56 pages takes the 64-page run (one bin up); then nothing is left for 56 pages.
  void* p56 = r.allocate(56 * page_size);
  CHECK(p56 == run64);
  CHECK(r.stats().large_cached_runs == 0);
  void* other = r.allocate(56 * page_size);  // nothing cached: from the page layer
  CHECK(other != run64);
  r.deallocate(other, 56 * page_size);
  r.deallocate(p56, 56 * page_size);
  r.deallocate(run48, 48 * page_size);
  r.deallocate(p40, 40 * page_size);
  s = r.stats();
  CHECK(s.large_objects == 0);
  CHECK(s.large_bytes == 0);
  r.check_invariants();
  // Given back, a borrowed run takes its excess with it: nothing is left reserved.
  r.trim();
  s = r.stats();
  CHECK(s.large_cached_runs == 0);
  CHECK(s.bytes_reserved == reserved);
  pages.check_invariants();
}

TEST_CASE("large bins: a borrowed run's excess pages are counted wherever the run ends up") {
  // A 12-page run borrowed by a 10-page request carries 2 pages past its class: reserved, not
  // in use, whichever thread frees it, caches it, gives it back or exits meanwhile.
  page_resource pages;
  slab_resource r({}, unchecked(), &pages);
  void* warm = r.allocate(64);  // this thread has a cache (its large frees go inline), and a
                                // slab that trim() keeps
  const std::size_t reserved = r.stats().bytes_reserved;
  constexpr std::size_t asked = 40 << 10, run = 48 << 10;
  auto borrow = [&r] {
    void* a = r.allocate(run);
    r.deallocate(a, run);
    void* b = r.allocate(asked);  // the 10-page bin is empty: the 12-page run, one bin up
    CHECK(b == a);
    return b;
  };
  auto check = [&](std::size_t live, std::size_t cached, std::size_t held) {
    const auto s = r.stats();
    CHECK(s.large_objects == (live ? 1u : 0u));
    CHECK(s.large_bytes == live);
    CHECK(s.large_cached_bytes == cached);
    CHECK(s.bytes_reserved - reserved == held);
  };
  void* p = nullptr;
  SUBCASE("the borrower exits; this thread frees it inline, then gives it back") {
    std::thread([&] { p = borrow(); }).join();
    check(asked, 0, run);
    r.deallocate(p, asked);  // into this thread's 10-page bin, 12 pages and all
    check(0, asked, run);
    r.trim();
    check(0, 0, 0);
  }
  SUBCASE("a thread without a cache frees it while the borrower lives") {
    p = borrow();
    std::thread([&] { r.deallocate(p, asked); }).join();  // its first call: no cache
    check(0, 0, 0);
  }
  SUBCASE("a thread without a cache frees it after the borrower exited") {
    std::thread([&] { p = borrow(); }).join();
    std::thread([&] { r.deallocate(p, asked); }).join();
    check(0, 0, 0);
  }
  SUBCASE("the borrower frees it on a slow path: back to the bin of its own pages") {
    p = borrow();
    r.deallocate(p, asked, page_size);
    check(0, run, run);
    r.trim();
    check(0, 0, 0);
  }
  r.check_invariants();
  pages.check_invariants();
  r.deallocate(warm, 64);
}

TEST_CASE("large bins: trim, release, destruction and thread exit give every cached run back") {
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
  SUBCASE("destruction, with runs cached in another thread's bins") {
    auto r = std::make_unique<slab_resource>(std::pmr::pool_options{}, unchecked(), &pages);
    std::atomic<bool> cached{false}, done{false};
    std::thread t([&] {
      churn(*r, 6);
      cached = true;
      while (!done) std::this_thread::yield();
    });
    while (!cached) std::this_thread::yield();
    CHECK(r->stats().large_cached_runs == 6);
    r->check_invariants();
    r.reset();  // t lives on, idle: its cache of the dead resource is freed with it
    CHECK(pages.stats().allocated_bytes == base);
    done = true;
    t.join();
  }
  SUBCASE("a thread that goes on with small objects only gives its cached runs back") {
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
  SUBCASE("thread exit: cached runs go back, the thread's counts stay with the resource") {
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
    // At their run classes: 50 KiB in 14 pages, 70 KiB in 20.
    CHECK(s.large_bytes ==
          bsalloc_test::large_run_bytes(50 << 10) + bsalloc_test::large_run_bytes(70 << 10));
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

TEST_CASE("large bins: a slow-path free of a pointer that is no run of ours is refused by name") {
  // The inline path pushes what it is given (unchecked mode promises nothing for a bad
  // pointer; checked and hardened resources have no large bins). A free that reaches the slow
  // path — aligned above 16, or into a full bin — is validated before a bin takes it: a pointer
  // inside a run, or into another resource's run, goes to the page layer, which names it.
  page_resource pages, other_pages;
  slab_resource r({}, unchecked(), &pages);
  slab_resource other({}, unchecked(), &other_pages);
  void* keep = r.allocate(60 << 10);
  std::memset(keep, 0x3c, 60 << 10);
  void* p = r.allocate(100 << 10);
  void* foreign = other.allocate(100 << 10);
  const auto before = r.stats();
  for (void* bad : {static_cast<void*>(static_cast<char*>(p) + page_size), foreign}) {
    try {
      r.deallocate(bad, 100 << 10, page_size);
      FAIL("a bad pointer was taken in");
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(fmt::format("{}", bad)) != std::string::npos);
    }
  }
  const auto after = r.stats();
  CHECK(after.large_objects == before.large_objects);
  CHECK(after.large_bytes == before.large_bytes);
  CHECK(after.large_cached_runs == 0);
  r.check_invariants();
  pages.check_invariants();
  other.deallocate(foreign, 100 << 10);
  r.deallocate(p, 100 << 10, page_size);
  CHECK(r.stats().large_cached_runs == 1);
  CHECK(std::all_of(static_cast<unsigned char*>(keep),
                    static_cast<unsigned char*>(keep) + (60 << 10),
                    [](unsigned char c) { return c == 0x3c; }));
  r.deallocate(keep, 60 << 10);
  r.check_invariants();
}

TEST_CASE("large bins: a large size with a bad alignment is refused, warm bin or cold") {
  // Requests above every class with alignment <= 16 take the inline path to a large bin: it
  // must refuse what the slow path refuses (a bad alignment finds bad_class's bin), warm bin or
  // cold, and lose nothing.
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
      void* q = r.allocate(big, 8);  // the cached run, still there
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
    void* again = r.allocate(big);  // both rounds end with the run cached, then taken back
    CHECK(again == p);
    r.deallocate(again, big);
  }
  r.check_invariants();
  pages.check_invariants();
}

TEST_CASE("large bins: a resource without an inline path has no large bins") {
  // Hardened mode (here with zero-on-free) has no large bins, and with zero-on-free no inline
  // path: every call, 0 bytes included, takes the slow path, which validates it. A free of a large
  // block that says 0 bytes is a bad free there (an abort naming it), not a block cached for the
  // next request.
  slab_resource_options o = unchecked();
  o.hardened = true;
  o.hardened_zero_on_free = true;
  {
    page_resource pages;
    slab_resource r({}, o, &pages);
    void* p = r.allocate(100 << 10);
    r.deallocate(p, 100 << 10);
    CHECK(r.stats().large_cached_runs == 0);  // no large bins: the page layer validates
    CHECK(r.stats().large_objects == 0);
    r.check_invariants();
  }
  const auto child = bsalloc_test::run_in_child([o] {
    page_resource pages;
    slab_resource r({}, o, &pages);
    void* p = r.allocate(100 << 10);
    r.deallocate(p, 0, 8);
    std::fprintf(stderr, "cached: %zu\n", r.stats().large_cached_runs);
  });
  CHECK(child.aborted);
  CHECK(child.err.find("cached:") == std::string::npos);
}

TEST_CASE("large bins: request sizes across the run classes hit the bin of their class") {
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

TEST_CASE("large bins: a forked child allocates and frees large blocks; parent's bins intact") {
  page_resource pages;
  slab_resource r({}, unchecked(), &pages);
  std::vector<void*> v;
  for (int i = 0; i < 4; ++i) v.push_back(r.allocate(std::size_t(50 + 30 * i) << 10));
  for (int i = 0; i < 4; ++i) r.deallocate(v[std::size_t(i)], std::size_t(50 + 30 * i) << 10);
  REQUIRE(r.stats().large_cached_runs == 4);
  const int rc = bsalloc_test::child_exit_code([&] {
    void* a = r.allocate(80 << 10);  // the cached run of its class, in the child's copy
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

TEST_CASE("large bins: model check, several threads, frees on other threads than the allocator") {
  const std::uint64_t seed = bsalloc_test::test_seed("large bins model");
  page_resource pages;
  // 4 MiB: two runs a bin to start, growing into the rest.
  slab_resource r({}, unchecked(std::size_t{4} << 20), &pages);
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
      // At its run class when a large bin's (unchecked, up to 256 KiB, aligned to a page at
      // most), else as asked.
      left_bytes += r.large_bins() && b.size <= (std::size_t{256} << 10) && b.align <= page_size
                        ? bsalloc_test::large_run_bytes(b.size)
                        : b.size;
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
