// SPDX-License-Identifier: Apache-2.0
#include <bsalloc/page_resource.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include <fmt/format.h>
#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::page_size;

namespace {

// A page-aligned caller buffer (from the OS, so the test controls its placement).
struct buffer {
  std::size_t bytes;
  std::byte* data;
  explicit buffer(std::size_t n, std::size_t align = page_size) : bytes(n) {
    void* raw =
        ::mmap(nullptr, n + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(raw != MAP_FAILED);
    map = raw;
    map_bytes = n + align;
    data = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(raw) + align - 1) &
                                        ~(align - 1));
  }
  ~buffer() { ::munmap(map, map_bytes); }
  std::span<std::byte> span() { return {data, bytes}; }
  void* map;
  std::size_t map_bytes;
};

std::size_t free_pages(const page_resource& r) {
  return r.stats().free_bytes / page_size;
}

using bsalloc_test::fully_coalesced;

std::size_t resident_pages(void* p, std::size_t bytes) {
  std::vector<unsigned char> vec(bytes / page_size);
  REQUIRE(::mincore(p, bytes, vec.data()) == 0);
  return static_cast<std::size_t>(
      std::count_if(vec.begin(), vec.end(), [](unsigned char c) { return c & 1; }));
}

std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace

TEST_CASE("split and merge back to a fully coalesced state, every order") {
  buffer buf(std::size_t{64} << 20, std::size_t{64} << 20);
  page_resource res(buf.span());
  res.check_invariants();
  const std::size_t total = free_pages(res);
  CHECK(total > 15000);
  CHECK(fully_coalesced(res));
  for (unsigned order = 0; order <= 12; ++order) {
    const std::size_t count = std::size_t{1} << order;
    std::vector<void*> blocks;
    for (int i = 0; i < 3; ++i) {
      void* p = res.allocate_pages(count);
      CHECK(reinterpret_cast<std::uintptr_t>(p) % (count * page_size) == 0);
      const auto info = res.find_block(p);
      REQUIRE(info);
      CHECK(info->head == p);
      CHECK(info->order == order);
      CHECK(info->state == bsalloc::block_state::allocated);
      blocks.push_back(p);
    }
    res.check_invariants();
    CHECK(res.stats().allocated_bytes == 3 * count * page_size);
    for (void* p : blocks) res.deallocate_pages(p, count);
    res.check_invariants();
    CHECK(free_pages(res) == total);
    CHECK(fully_coalesced(res));
  }
}

TEST_CASE("alignment up to and beyond the block size") {
  page_resource res;
  for (std::size_t align = page_size; align <= (std::size_t{4} << 20); align *= 2) {
    void* a = res.allocate_pages(1, align);
    void* b = res.allocate_pages(3, align);
    CHECK(reinterpret_cast<std::uintptr_t>(a) % align == 0);
    CHECK(reinterpret_cast<std::uintptr_t>(b) % align == 0);
    res.deallocate_pages(a, 1);
    res.deallocate_pages(b, 3);
  }
  res.check_invariants();
  CHECK(res.stats().allocated_bytes == 0);
  // Through the pmr interface: bytes round up to pages, alignment is honoured.
  std::pmr::memory_resource& mr = res;
  void* p = mr.allocate(5000, 65536);
  CHECK(reinterpret_cast<std::uintptr_t>(p) % 65536 == 0);
  CHECK(res.stats().allocated_bytes == 2 * page_size);
  mr.deallocate(p, 5000, 65536);
  void* z = mr.allocate(0);  // zero bytes: one page, distinct
  void* z2 = mr.allocate(0);
  CHECK(z != z2);
  mr.deallocate(z, 0);
  mr.deallocate(z2, 0);
  CHECK_THROWS_AS(res.allocate_pages(1, 3 * page_size), std::invalid_argument);
  volatile std::size_t not_pow2 = 24;  // a run-time value: clang rejects a constant one
  CHECK_THROWS_AS((void)mr.allocate(64, not_pow2), std::invalid_argument);
  CHECK_THROWS_AS((void)mr.allocate(std::size_t{1} << 62), std::bad_alloc);
  CHECK_THROWS_AS(res.allocate_pages((std::size_t{1} << bsalloc::max_order) + 1), std::bad_alloc);
  res.check_invariants();
  CHECK(fully_coalesced(res));
}

TEST_CASE("a page count that is not a power of two wastes no pages") {
  buffer buf(std::size_t{4} << 20, std::size_t{4} << 20);
  page_resource res(buf.span());
  const std::size_t total = free_pages(res);
  std::vector<std::pair<void*, std::size_t>> live;
  std::size_t used = 0;
  for (std::size_t count : {5, 3, 7, 100, 1, 13, 31, 250}) {
    void* p = res.allocate_pages(count);
    std::memset(p, 0xab, count * page_size);  // every page of the run is usable
    live.emplace_back(p, count);
    used += count;
    CHECK(free_pages(res) == total - used);  // exactly `count` pages taken, the tail given back
    res.check_invariants();
  }
  // The lookup finds each block of a run; a wrong count is refused without losing anything.
  auto [p5, n5] = live[0];
  auto tail = res.find_block(static_cast<std::byte*>(p5) + 4 * page_size);
  REQUIRE(tail);
  CHECK(tail->order == 0);
  CHECK(!tail->continued);
  CHECK(res.find_block(p5)->continued);
  CHECK_THROWS_AS(res.deallocate_pages(p5, 4), std::invalid_argument);
  CHECK_THROWS_AS(res.deallocate_pages(p5, 8), std::invalid_argument);
  CHECK(free_pages(res) == total - used);
  res.check_invariants();
  for (auto [p, n] : live) res.deallocate_pages(p, n);
  CHECK(free_pages(res) == total);
  CHECK(fully_coalesced(res));
}

TEST_CASE("exhaustion then recovery; a fixed buffer is never exceeded") {
  const std::size_t bytes = std::size_t{2} << 20;
  buffer buf(bytes + 3 * page_size);
  // Guard pages around the caller's span: a write outside it faults.
  std::byte* start = buf.data + page_size;
  REQUIRE(::mprotect(buf.data, page_size, PROT_NONE) == 0);
  REQUIRE(::mprotect(start + bytes, page_size, PROT_NONE) == 0);
  {
    page_resource res(std::span<std::byte>(start, bytes));
    const auto s = res.stats();
    CHECK(s.os_maps == 0);
    CHECK(s.managed_bytes < bytes);
    CHECK(s.regions.size() == 1);
    CHECK(s.regions[0].start >= reinterpret_cast<std::uintptr_t>(start));
    CHECK(s.regions[0].start + s.regions[0].bytes <=
          reinterpret_cast<std::uintptr_t>(start + bytes));
    std::vector<void*> pages;
    for (;;) {
      try {
        void* p = res.allocate_pages(1);
        auto* b = static_cast<std::byte*>(p);
        CHECK(b >= start);
        CHECK(b + page_size <= start + bytes);
        std::memset(p, 0x5a, page_size);
        pages.push_back(p);
      } catch (const std::bad_alloc&) {
        break;
      }
    }
    CHECK(pages.size() == s.managed_bytes / page_size);
    CHECK_THROWS_AS(res.allocate_pages(1), std::bad_alloc);
    res.check_invariants();
    // Recovery: free half, allocate again.
    for (std::size_t i = 0; i < pages.size(); i += 2) res.deallocate_pages(pages[i], 1);
    for (std::size_t i = 0; i < pages.size(); i += 2) pages[i] = res.allocate_pages(1);
    for (void* p : pages) res.deallocate_pages(p, 1);
    CHECK(fully_coalesced(res));
    CHECK(res.stats().os_maps == 0);
    CHECK(res.stats().peak_allocated_bytes == s.managed_bytes);
  }
  ::mprotect(buf.data, buf.map_bytes - page_size, PROT_READ | PROT_WRITE);
}

TEST_CASE("add_region: unaligned edges trimmed, overlapping and too small refused") {
  buffer a(std::size_t{1} << 20), b(std::size_t{1} << 20);
  page_resource res(std::span<std::byte>(a.data + 100, a.bytes - 300));  // unaligned both ends
  const auto s0 = res.stats();
  REQUIRE(s0.regions.size() == 1);
  CHECK(s0.regions[0].start % page_size == 0);
  CHECK(s0.regions[0].start >= reinterpret_cast<std::uintptr_t>(a.data + 100));
  CHECK(s0.regions[0].start + s0.regions[0].bytes <=
        reinterpret_cast<std::uintptr_t>(a.data + a.bytes - 200));
  CHECK_THROWS_AS(res.add_region(std::span<std::byte>(a.data + 4 * page_size, 8 * page_size)),
                  std::invalid_argument);
  CHECK_THROWS_AS(res.add_region(std::span<std::byte>(b.data, page_size)), std::invalid_argument);
  CHECK_THROWS_AS(res.add_region(std::span<std::byte>(b.data + 1, 2 * page_size)),
                  std::invalid_argument);
  try {
    res.add_region(std::span<std::byte>(a.data, 16 * page_size));
    FAIL("overlap accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("overlaps") != std::string::npos);
  }
  CHECK(res.stats().regions.size() == 1);  // nothing was added by the refusals
  // Hot-add at run time, while something is allocated.
  void* held = res.allocate_pages(8);
  const std::size_t ri = res.add_region(b.span());
  CHECK(ri == 1);
  CHECK(res.stats().regions.size() == 2);
  void* from_b = res.allocate_pages(4, page_size, {.region = ri});
  CHECK(res.find_block(from_b)->region == ri);
  CHECK(from_b >= static_cast<void*>(b.data));
  res.deallocate_pages(from_b, 4);
  res.deallocate_pages(held, 8);
  res.check_invariants();
  CHECK(fully_coalesced(res));
  CHECK_THROWS_AS(res.allocate_pages(1, page_size, {.region = 7}), std::invalid_argument);
}

TEST_CASE("address-constrained allocation") {
  buffer lowbuf(std::size_t{1} << 20), highbuf(std::size_t{1} << 20);
  std::byte* low = std::min(lowbuf.data, highbuf.data);
  std::byte* high = std::max(lowbuf.data, highbuf.data);
  page_resource res(std::span<std::byte>(high, std::size_t{1} << 20));
  res.add_region(std::span<std::byte>(low, std::size_t{1} << 20));
  const auto limit = reinterpret_cast<std::uintptr_t>(low) + (std::size_t{1} << 20);
  std::vector<void*> got;
  for (int i = 0; i < 50; ++i) {
    void* p = res.allocate_pages(2, page_size, {.below = limit});
    CHECK(reinterpret_cast<std::uintptr_t>(p) + 2 * page_size <= limit);
    got.push_back(p);
  }
  // Everything below the limit runs out; then the constrained request fails, others succeed.
  for (;;) {
    try {
      got.push_back(res.allocate_pages(2, page_size, {.below = limit}));
    } catch (const std::bad_alloc&) {
      break;
    }
  }
  void* unconstrained = res.allocate_pages(2);
  CHECK(reinterpret_cast<std::uintptr_t>(unconstrained) >= limit);
  res.deallocate_pages(unconstrained, 2);
  for (void* p : got) res.deallocate_pages(p, 2);
  res.check_invariants();
  CHECK(fully_coalesced(res));
}

TEST_CASE("pointer to block lookup") {
  page_resource res;
  void* p = res.allocate_pages(16);
  for (std::size_t off :
       {std::size_t{0}, std::size_t{1}, page_size * 7 + 123, page_size * 16 - 1}) {
    auto info = res.find_block(static_cast<std::byte*>(p) + off);
    REQUIRE(info);
    CHECK(info->head == p);
    CHECK(info->order == 4);
    CHECK(info->state == bsalloc::block_state::allocated);
  }
  int on_stack = 0;
  CHECK(!res.find_block(&on_stack));
  CHECK(!res.owns(&on_stack));
  res.deallocate_pages(p, 16);
  auto after = res.find_block(p);
  REQUIRE(after);
  CHECK(after->state == bsalloc::block_state::free);
  CHECK(after->order >= 4);
  // Bad frees: foreign pointer, interior pointer, double free. Nothing changes.
  void* q = res.allocate_pages(2);
  const auto before = res.stats().allocated_bytes;
  CHECK_THROWS_AS(res.deallocate_pages(&on_stack, 1), std::invalid_argument);
  CHECK_THROWS_AS(res.deallocate_pages(static_cast<std::byte*>(q) + 8, 2), std::invalid_argument);
  CHECK_THROWS_AS(res.deallocate_pages(static_cast<std::byte*>(q) + page_size, 1),
                  std::invalid_argument);
  res.deallocate_pages(q, 2);
  try {
    res.deallocate_pages(q, 2);
    FAIL("double free accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find(fmt::format("{}", q)) != std::string::npos);
  }
  CHECK(res.stats().allocated_bytes == before - 2 * page_size);
  res.check_invariants();
}

TEST_CASE("purged memory leaves RSS; trim and release give memory back") {
  bsalloc::page_resource_options opt;
  opt.retain_bytes = std::size_t{1} << 20;
  page_resource res(opt);
  const std::size_t bytes = std::size_t{32} << 20;
  void* p = res.allocate_pages(bytes / page_size);
  std::memset(p, 1, bytes);
  CHECK(resident_pages(p, bytes) == bytes / page_size);
  const std::size_t rss_before = rss_bytes();
  res.deallocate_pages(p, bytes / page_size);  // beyond retain_bytes: purged at once
  const auto s = res.stats();
  CHECK(s.purged_bytes >= bytes - opt.retain_bytes);
  CHECK(s.dirty_free_bytes <= opt.retain_bytes);
  CHECK(resident_pages(p, bytes) <= opt.retain_bytes / page_size);
  CHECK(rss_bytes() + (std::size_t{24} << 20) < rss_before);
  res.check_invariants();

  // trim() purges the rest and unmaps the wholly free OS region.
  void* q = res.allocate_pages(64);
  std::memset(q, 2, 64 * page_size);
  res.deallocate_pages(q, 64);
  CHECK(res.stats().dirty_free_bytes > 0);
  res.trim();
  CHECK(res.stats().dirty_free_bytes == 0);
  CHECK(res.stats().os_mapped_bytes == 0);
  CHECK(res.stats().os_unmaps == 1);
  res.check_invariants();

  // release(): everything at once; the resource grows again afterwards.
  void* r1 = res.allocate_pages(10);
  (void)r1;
  res.release();
  CHECK(res.stats().allocated_bytes == 0);
  CHECK(res.stats().managed_bytes == 0);
  void* r2 = res.allocate_pages(3);
  std::memset(r2, 3, 3 * page_size);
  res.deallocate_pages(r2, 3);
  res.check_invariants();
}

TEST_CASE("allocation reuses resident pages before clean ones") {
  page_resource res;  // default retain: nothing is purged below 16 MiB of free resident pages
  void* guard_lo = res.allocate_pages(16);
  void* b = res.allocate_pages(16);
  void* guard_hi = res.allocate_pages(16);
  std::memset(b, 2, 16 * page_size);
  res.deallocate_pages(b, 16);  // b: a dirty order-4 block (its neighbours are allocated)
  CHECK(res.stats().dirty_free_bytes == 16 * page_size);
  // One page aligned to 32 pages: the rest of its 32-page block goes back as clean pieces of
  // orders 0..4, inserted after b. The next 16-page request still gets b, which is resident.
  void* c = res.allocate_pages(1, 32 * page_size);
  res.check_invariants();
  void* again = res.allocate_pages(16);
  CHECK(again == b);
  CHECK(res.stats().dirty_free_bytes == 0);
  for (void* p : {again, guard_lo, guard_hi}) res.deallocate_pages(p, 16);
  res.deallocate_pages(c, 1);
  res.check_invariants();
}

TEST_CASE("release() resets caller regions to wholly free") {
  buffer buf(std::size_t{1} << 20);
  page_resource res(buf.span());
  const std::size_t total = free_pages(res);
  for (int i = 0; i < 10; ++i) (void)res.allocate_pages(static_cast<std::size_t>(i + 1));
  res.release();
  CHECK(free_pages(res) == total);
  CHECK(fully_coalesced(res));
  res.check_invariants();
}

TEST_CASE("randomised against a model: no overlap, contents kept, all pages back") {
  buffer buf(std::size_t{64} << 20, std::size_t{64} << 20);
  page_resource res(buf.span());
  const std::size_t total = free_pages(res);
  struct live_block {
    std::size_t count;
    std::uint32_t tag;
  };
  std::map<std::uintptr_t, live_block> model;  // start -> block
  std::mt19937_64 rng(bsalloc_test::test_seed("page_resource randomised model"));
  std::size_t live_pages = 0;
  const int ops = 1'000'000;
  auto stamp = [](void* p, std::size_t count, std::uint32_t tag) {
    auto* b = static_cast<std::byte*>(p);
    for (std::size_t i = 0; i < count; ++i) {  // first and last word of every page
      std::memcpy(b + i * page_size, &tag, 4);
      std::memcpy(b + (i + 1) * page_size - 4, &tag, 4);
    }
  };
  auto verify = [](std::uintptr_t start, const live_block& lb) {
    auto* b = reinterpret_cast<std::byte*>(start);
    for (std::size_t i = 0; i < lb.count; ++i) {
      std::uint32_t x = 0, y = 0;
      std::memcpy(&x, b + i * page_size, 4);
      std::memcpy(&y, b + (i + 1) * page_size - 4, 4);
      if (x != lb.tag || y != lb.tag) return false;
    }
    return true;
  };
  std::size_t failures = 0, refused = 0;
  for (int op = 0; op < ops; ++op) {
    const bool do_alloc = model.empty() || (rng() % 100) < (live_pages > total / 2 ? 35u : 55u);
    if (do_alloc) {
      const std::size_t count = (rng() % 8 == 0) ? 1 + rng() % 300 : 1 + rng() % 6;
      const std::size_t align = page_size << (rng() % 4 == 0 ? rng() % 5 : 0);
      void* p;
      try {
        p = res.allocate_pages(count, align);
      } catch (const std::bad_alloc&) {
        // Refused only when no free block of the needed order exists.
        ++refused;
        unsigned order = 0;
        while ((std::size_t{1} << order) < count || (page_size << order) < align) ++order;
        const auto s = res.stats();
        for (unsigned k = order; k <= bsalloc::max_order; ++k)
          if (s.free_blocks[k] != 0) ++failures;
        continue;
      }
      const auto a = reinterpret_cast<std::uintptr_t>(p);
      if (a % align) ++failures;
      // No overlap with any live block.
      auto next = model.lower_bound(a);
      if (next != model.end() && next->first < a + count * page_size) ++failures;
      if (next != model.begin()) {
        auto prev = std::prev(next);
        if (prev->first + prev->second.count * page_size > a) ++failures;
      }
      const auto tag = static_cast<std::uint32_t>(rng());
      stamp(p, count, tag);
      model[a] = {count, tag};
      live_pages += count;
    } else {
      auto it = model.lower_bound(static_cast<std::uintptr_t>(rng()) % (buf.bytes) +
                                  reinterpret_cast<std::uintptr_t>(buf.data));
      if (it == model.end()) it = model.begin();
      if (!verify(it->first, it->second)) ++failures;
      res.deallocate_pages(reinterpret_cast<void*>(it->first), it->second.count);
      live_pages -= it->second.count;
      model.erase(it);
    }
    if (op % 100'000 == 0) {
      res.check_invariants();
      CHECK(res.stats().allocated_bytes == live_pages * page_size);
    }
  }
  CHECK(failures == 0);
  CHECK(refused < static_cast<std::size_t>(ops) / 10);
  for (auto& [a, lb] : model) {
    if (!verify(a, lb)) ++failures;
    res.deallocate_pages(reinterpret_cast<void*>(a), lb.count);
  }
  CHECK(failures == 0);
  res.check_invariants();
  CHECK(free_pages(res) == total);
  CHECK(fully_coalesced(res));
}

TEST_CASE("several threads share one resource") {
  page_resource res;
  constexpr int threads = 4;
  std::vector<std::thread> pool;
  std::atomic<int> bad{0};
  const std::uint64_t seed = bsalloc_test::test_seed("several threads share one resource");
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(seed + static_cast<std::uint64_t>(t)));
      std::vector<std::pair<unsigned char*, std::size_t>> mine;
      for (int i = 0; i < 20000; ++i) {
        if (mine.size() < 64 && (mine.empty() || rng() % 2)) {
          const std::size_t n = 1 + rng() % 9;
          auto* p = static_cast<unsigned char*>(res.allocate_pages(n));
          std::memset(p, t + 1, n * page_size);
          mine.emplace_back(p, n);
        } else {
          const std::size_t i2 = rng() % mine.size();
          auto [p, n] = mine[i2];
          if (p[0] != t + 1 || p[n * page_size - 1] != t + 1) bad.fetch_add(1);
          res.deallocate_pages(p, n);
          mine[i2] = mine.back();
          mine.pop_back();
        }
        if (i % 5000 == 0) (void)res.stats();
      }
      for (auto [p, n] : mine) res.deallocate_pages(p, n);
    });
  }
  for (auto& th : pool) th.join();
  CHECK(bad.load() == 0);
  res.check_invariants();
  CHECK(res.stats().allocated_bytes == 0);
  CHECK(fully_coalesced(res));
}

TEST_CASE("global_page_resource and fmt stats") {
  auto& g = bsalloc::global_page_resource();
  CHECK(&g == &bsalloc::global_page_resource());
  std::pmr::vector<int> v(&g);
  v.assign(10000, 7);
  const std::string text = fmt::format("{}", g.stats());
  CHECK(text.find("page_resource:") != std::string::npos);
  CHECK(text.find("allocated") != std::string::npos);
  const std::string json = fmt::format("{:j}", g.stats());
  CHECK(json.front() == '{');
  CHECK(json.back() == '}');
  CHECK(json.find("\"allocated_bytes\":" + std::to_string(g.stats().allocated_bytes)) !=
        std::string::npos);
}

TEST_CASE("stats say what sits in the run cache, per core, and what is free but purged") {
  bsalloc::page_resource_options opt;
  opt.cache_bytes_per_core = std::size_t{1} << 20;
  opt.purge_interval = std::chrono::milliseconds{0};
  bsalloc::page_resource res(opt);
  void* keep = res.allocate_pages(1);  // keeps the region mapped through trim()
  void* p = res.allocate_pages(4);
  res.deallocate_pages(p, 4);  // into the run cache of this core
  const auto s = res.stats();
  CHECK(s.cached_bytes == 4 * bsalloc::page_size);
  std::size_t per_core = 0;
  for (const std::size_t b : s.core_cached_bytes) per_core += b;
  CHECK(per_core == s.cached_bytes);
  const std::string text = fmt::format("{}", s);
  CHECK(text.find("run cache: 16.0 KiB resident") != std::string::npos);
  const std::string json = fmt::format("{:j}", s);
  CHECK(json.find("\"cached_bytes\":16384") != std::string::npos);
  CHECK(json.find("\"free_purged_bytes\":" + std::to_string(s.free_purged_bytes)) !=
        std::string::npos);
  CHECK(json.find("\"core_cached_bytes\":[") != std::string::npos);
  res.trim();  // cached runs go back to the buddy lists and are purged
  const auto t = res.stats();
  CHECK(t.cached_bytes == 0);
  CHECK(t.free_purged_bytes >= 4 * bsalloc::page_size);
  res.deallocate_pages(keep, 1);
}
