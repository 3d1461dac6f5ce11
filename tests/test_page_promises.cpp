// SPDX-License-Identifier: Apache-2.0
// page_resource: the README's promises about giving memory back and growing, each asserted on
// behaviour (what the kernel says is resident, which pages come back) rather than on constants:
// the rate-limited purge between retain_bytes and 4 x retain_bytes, "purged down to half",
// oldest freed first, resident pages reused first, grow_from_os = false, os_region_bytes and
// the 128-region cap.
#include <bsalloc/page_resource.hpp>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <set>
#include <stdexcept>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::page_resource_options;
using bsalloc::page_size;

namespace {

constexpr std::size_t block_pages = 64;  // 256 KiB blocks: order 6
constexpr std::size_t block_bytes = block_pages * page_size;
constexpr std::size_t retain = 4 * block_bytes;  // 1 MiB: half of it is two blocks

// What the kernel says: every page of [p, p + bytes) resident / none of them.
std::size_t resident_pages(const void* p, std::size_t bytes) {
  std::vector<unsigned char> vec(bytes / page_size);
  REQUIRE(::mincore(const_cast<void*>(p), bytes, vec.data()) == 0);
  return static_cast<std::size_t>(
      std::count_if(vec.begin(), vec.end(), [](unsigned char c) { return (c & 1) != 0; }));
}

// n blocks of block_pages each, every page written (resident), each followed by a spacer block
// that stays allocated, so that a freed block never merges with its buddy.
struct blocks {
  page_resource& r;
  std::vector<std::byte*> b, spacers;
  blocks(page_resource& res, std::size_t n) : r(res) {
    for (std::size_t i = 0; i < n; ++i) {
      b.push_back(static_cast<std::byte*>(r.allocate_pages(block_pages)));
      spacers.push_back(static_cast<std::byte*>(r.allocate_pages(block_pages)));
      std::memset(b.back(), 0x5a, block_bytes);
    }
  }
  ~blocks() {
    for (std::byte* s : spacers) r.deallocate_pages(s, block_pages);
  }
};

page_resource_options policy(std::chrono::milliseconds interval) {
  page_resource_options o;
  o.retain_bytes = retain;
  o.purge_interval = interval;
  return o;
}

}  // namespace

TEST_CASE(
    "purge_interval: between retain_bytes and 4 x retain_bytes, at most one purge per "
    "interval; beyond 4 x retain_bytes, at once; down to half of retain_bytes") {
  page_resource r(policy(std::chrono::hours(1)));
  blocks all(r, 40);
  std::size_t freed = 0;
  // Phase 1: free until a purge happens. It may be the first one of the interval (retained just
  // above retain_bytes), or the one beyond 4 x retain_bytes: either way, within 17 blocks.
  while (r.stats().purged_bytes == 0) {
    REQUIRE(freed < 17);
    r.deallocate_pages(all.b[freed++], block_pages);
  }
  // Purged down to half of retain_bytes: two blocks stay resident, not fewer.
  CHECK(r.stats().dirty_free_bytes == retain / 2);
  // Phase 2: the interval has not passed. Above retain_bytes, up to 4 x retain_bytes, nothing is
  // purged; the free that takes it beyond 4 x purges at once, down to half again.
  const std::size_t purged = r.stats().purged_bytes;
  std::size_t last_purge_at = 0;
  for (; freed < all.b.size(); ++freed) {
    const auto before = r.stats();
    r.deallocate_pages(all.b[freed], block_pages);
    const auto after = r.stats();
    const std::size_t retained = before.dirty_free_bytes + block_bytes;
    CAPTURE(freed);
    CAPTURE(retained);
    if (retained <= 4 * retain) {
      CHECK(after.purged_bytes == before.purged_bytes);
      CHECK(after.dirty_free_bytes == retained);
    } else {
      CHECK(after.purged_bytes > before.purged_bytes);
      CHECK(after.dirty_free_bytes == retain / 2);
      last_purge_at = freed;
    }
  }
  CHECK(r.stats().purged_bytes > purged);
  REQUIRE(last_purge_at > 0);
  // The kernel agrees: purged blocks hold no resident page; the two kept were freed last.
  std::size_t resident_blocks = 0;
  for (std::size_t i = 0; i <= last_purge_at; ++i) {
    const std::size_t n = resident_pages(all.b[i], block_bytes);
    CHECK((n == 0 || n == block_pages));
    if (n != 0) {
      ++resident_blocks;
      CHECK(i + 2 > last_purge_at);  // oldest freed first: only the two newest stay
    }
  }
  CHECK(resident_blocks == 2);
  r.check_invariants();
}

TEST_CASE("purge_interval zero: every free that takes retained memory above retain_bytes purges") {
  page_resource r(policy(std::chrono::milliseconds(0)));
  blocks all(r, 12);
  for (std::byte* p : all.b) {
    r.deallocate_pages(p, block_pages);
    const auto s = r.stats();
    CHECK(s.dirty_free_bytes <= retain);
  }
  CHECK(r.stats().purged_bytes > 0);
  r.check_invariants();
}

TEST_CASE("allocation reuses resident pages before purged ones, the newest freed first") {
  page_resource r(policy(std::chrono::milliseconds(0)));
  blocks all(r, 6);
  // Free five: the fifth takes retained memory above retain_bytes (4 blocks), and the purge
  // keeps half of it: the newest two.
  for (std::size_t i = 0; i < 5; ++i) r.deallocate_pages(all.b[i], block_pages);
  std::set<std::byte*> resident;
  for (std::size_t i = 0; i < 5; ++i)
    if (resident_pages(all.b[i], block_bytes) == block_pages) resident.insert(all.b[i]);
  REQUIRE(resident.size() == 2);
  CHECK(resident.count(all.b[4]) == 1);
  CHECK(resident.count(all.b[3]) == 1);
  // The next two blocks of that size are exactly the resident ones: no page faulted in again.
  auto* x = static_cast<std::byte*>(r.allocate_pages(block_pages));
  auto* y = static_cast<std::byte*>(r.allocate_pages(block_pages));
  CHECK(resident.count(x) == 1);
  CHECK(resident.count(y) == 1);
  CHECK(x != y);
  CHECK(x == all.b[4]);  // the last freed comes back first
  CHECK(r.stats().dirty_free_bytes == 0);
  r.deallocate_pages(x, block_pages);
  r.deallocate_pages(y, block_pages);
  r.deallocate_pages(all.b[5], block_pages);
  r.check_invariants();
}

TEST_CASE("grow_from_os = false: only the regions added, then std::bad_alloc") {
  page_resource_options o;
  o.grow_from_os = false;
  page_resource r(o);
  CHECK_THROWS_AS((void)r.allocate_pages(1), std::bad_alloc);
  CHECK(r.stats().os_maps == 0);
  constexpr std::size_t bytes = 64 * page_size;
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  {
    r.add_region(std::span<std::byte>(static_cast<std::byte*>(mem), bytes));
    std::vector<void*> got;
    try {
      for (;;) got.push_back(r.allocate_pages(1));
    } catch (const std::bad_alloc&) {
    }
    CHECK(got.size() > 32);         // the region served (its metadata takes a few pages)
    CHECK(got.size() < 64);         // and only it
    CHECK(r.stats().os_maps == 0);  // never the OS
    for (void* p : got) {
      CHECK(p >= mem);
      CHECK(static_cast<std::byte*>(p) < static_cast<std::byte*>(mem) + bytes);
      r.deallocate_pages(p, 1);
    }
    r.check_invariants();
    r.release();
  }
  ::munmap(mem, bytes);
}

TEST_CASE("os_region_bytes: the first OS regions have that size; later ones grow") {
  page_resource_options o;
  o.os_region_bytes = std::size_t{4} << 20;
  page_resource r(o);
  void* p = r.allocate_pages(1);
  auto s = r.stats();
  REQUIRE(s.regions.size() == 1);
  CHECK(s.os_maps == 1);
  CHECK(s.regions[0].os_backed);
  CHECK(s.regions[0].bytes <= o.os_region_bytes);
  CHECK(s.regions[0].bytes >= o.os_region_bytes - o.os_region_bytes / 64);  // metadata only
  // More regions as needed; they grow geometrically (so that their number stays low).
  constexpr std::size_t mib = (std::size_t{1} << 20) / page_size;
  std::vector<void*> got;
  while (r.stats().os_maps < 6) {
    REQUIRE(got.size() < 64);
    got.push_back(r.allocate_pages(mib));
  }
  s = r.stats();
  for (const auto& reg : s.regions) CHECK(reg.bytes >= s.regions[0].bytes);
  CHECK(s.regions.back().bytes >= 2 * s.regions[0].bytes);
  for (void* q : got) r.deallocate_pages(q, mib);
  r.deallocate_pages(p, 1);
  r.check_invariants();
}

TEST_CASE("at most 128 regions: the next add_region throws std::length_error") {
  page_resource_options o;
  o.grow_from_os = false;
  page_resource r(o);
  constexpr std::size_t each = 4 * page_size;
  const std::size_t n = bsalloc::max_regions + 1;
  const std::size_t bytes = (n + 1) * each;
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  {
    auto* base = static_cast<std::byte*>(mem);
    // Regions separated by a page nobody manages, so they are distinct regions.
    std::size_t added = 0;
    for (; added < 128; ++added)
      CHECK_NOTHROW(
          (void)r.add_region(std::span<std::byte>(base + added * each, each - page_size)));
    CHECK(r.stats().regions.size() == 128);
    CHECK_THROWS_AS((void)r.add_region(std::span<std::byte>(base + added * each, each - page_size)),
                    std::length_error);
    CHECK(r.stats().regions.size() == 128);
    void* p = r.allocate_pages(1);  // still usable
    r.deallocate_pages(p, 1);
    r.check_invariants();
    r.release();
  }
  ::munmap(mem, bytes);
}
