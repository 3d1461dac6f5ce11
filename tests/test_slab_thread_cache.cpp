// SPDX-License-Identifier: Apache-2.0
// The thread cache's memory: bins grow for bursts only within the cache's growth budget, and
// bins whose class went quiet shrink back, giving their objects (and the slabs they pin) back.
#include <bsalloc/slab_resource.hpp>

#include <cstdint>
#include <memory>
#include <memory_resource>
#include <stdexcept>
#include <utility>
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

// A thread that churns a working set of big objects keeps it in its cache once the bin has grown:
// a bin may grow to 256 KiB of objects (8 of 32 KiB). Before, the 32 KiB class stopped at 4, and
// every round of 8 went to the core cache for half of its objects.
TEST_CASE("a bin of 32 KiB objects grows to hold a working set of 8") {
  slab_resource_options o;
  o.caches = 1;  // one core cache: its counters see every refill
  slab_resource r(std::pmr::pool_options{}, o, std::pmr::new_delete_resource());
  REQUIRE(slab_resource::class_size(slab_resource::size_class(32 << 10, 8)) == (32 << 10));
  const auto core_allocations = [&r] {
    std::size_t n = 0;
    for (const auto& c : r.stats().cores) n += c.allocations;
    return n;
  };
  for (int i = 0; i < 16; ++i) burst(r, 32 << 10, 8);  // overflows and refills: the bin grows
  const std::size_t warm = core_allocations();
  for (int i = 0; i < 100; ++i) burst(r, 32 << 10, 8);
  CHECK(core_allocations() == warm);  // every round served by the thread cache
  CHECK(r.stats().cached_objects == 8);
  // A ninth object does not fit: the bin is at its most (256 KiB), so the rounds of 9 go on
  // taking objects from the core cache.
  for (int i = 0; i < 10; ++i) burst(r, 32 << 10, 9);
  CHECK(core_allocations() > warm);
  CHECK(r.stats().cached_objects <= 8);
  r.check_invariants();
}

// The inline path finds a request's bin by a table: up to 8 KiB by size / 8, above by size / 128
// (the wide row). Whatever the path, an object must come from the class that size_class()
// names: every size to 8 KiB and past it, every inline alignment, the second time from the
// bin (the inline hit), its class's count in use is the one that moves.
TEST_CASE("the inline path serves every size from the class size_class() names") {
  slab_resource r(std::pmr::pool_options{}, slab_resource_options{},
                  std::pmr::new_delete_resource());
  std::size_t wrong = 0;
  for (const std::size_t align : {1, 2, 4, 8, 16}) {
    for (std::size_t bytes = 1; bytes <= 8192 + 1024; ++bytes) {
      const int c = slab_resource::size_class(bytes, align);
      REQUIRE(c >= 0);
      const std::size_t size = slab_resource::class_size(c);
      void* p = r.allocate(bytes, align);
      r.deallocate(p, bytes, align);
      void* q = r.allocate(bytes, align);  // the bin's newest: the inline path's hit
      const auto s = r.stats();
      std::size_t mine = 0;
      for (const auto& k : s.classes)
        if (k.object_size == size) mine = k.objects_in_use;
      if (q != p || mine != 1 || s.objects_in_use != 1 ||
          reinterpret_cast<std::uintptr_t>(q) % align != 0) {
        ++wrong;
        INFO("bytes " << bytes << ", alignment " << align << ", class size " << size);
        CHECK(q == p);
        CHECK(mine == 1);
      }
      r.deallocate(q, bytes, align);
    }
  }
  CHECK(wrong == 0);
  r.check_invariants();
}

// The same for a resource whose largest class (2 KiB) is below the small table's end: sizes above
// it go upstream, whatever the path; and an alignment that is not a power of two is refused at
// every size, warm cache or cold.
TEST_CASE("the inline path: a smaller largest class, and bad alignments at every size") {
  slab_resource r(std::pmr::pool_options{0, 2048}, slab_resource_options{},
                  std::pmr::new_delete_resource());
  const std::size_t largest = r.options().largest_required_pool_block;
  REQUIRE(largest == 2048);
  std::size_t wrong = 0;
  for (const std::size_t align : {8, 16}) {
    for (std::size_t bytes = 1; bytes <= 8192 + 1024; ++bytes) {
      const int c = slab_resource::size_class(bytes, align);
      const bool slab = c >= 0 && slab_resource::class_size(c) <= largest;
      void* p = r.allocate(bytes, align);
      r.deallocate(p, bytes, align);
      void* q = r.allocate(bytes, align);
      const auto s = r.stats();
      std::size_t in_use = 0;
      for (const auto& k : s.classes) {
        in_use += k.objects_in_use;
        if (slab && k.object_size == slab_resource::class_size(c) && k.objects_in_use != 1) ++wrong;
      }
      if (in_use != (slab ? 1u : 0u) || s.large_objects != (slab ? 0u : 1u)) {
        ++wrong;
        INFO("bytes " << bytes << ", alignment " << align);
        CHECK(in_use == (slab ? 1u : 0u));
      }
      r.deallocate(q, bytes, align);
      // warm: the bins of the classes just used hold objects now
      for (const std::size_t bad : {0, 3, 12})
        CHECK_THROWS_AS((void)r.allocate(bytes, bad), std::invalid_argument);
    }
  }
  CHECK(wrong == 0);
  r.check_invariants();
}

// Slow start: a bin's first refill takes 8 objects, each next refill of the emptied bin twice as
// many, up to half its limit (128 for 64 bytes); a bin whose class went quiet starts small again.
// Before, every refill took half the limit: a thread using a few objects of a class in each of
// many resources pinned (and touched) half a bin of them in every one.
TEST_CASE("a bin's refills start at 8 objects and double up to half its limit") {
  slab_resource_options o;
  o.caches = 1;  // one core cache: its counters see every refill
  slab_resource r(std::pmr::pool_options{}, o, std::pmr::new_delete_resource());
  const auto taken = [&r] {
    std::size_t n = 0;
    for (const auto& c : r.stats().cores) n += c.allocations;
    return n;
  };
  std::vector<void*> held;
  const auto drain_and_refill = [&](std::size_t expect) {
    const std::size_t cached = r.stats().cached_objects;
    for (std::size_t i = 0; i < cached; ++i) held.push_back(r.allocate(64));
    CHECK(r.stats().cached_objects == 0);
    const std::size_t before = taken();
    held.push_back(r.allocate(64));  // an empty bin: one refill
    CHECK(taken() - before == expect);
    CHECK(r.stats().cached_objects == expect - 1);
  };
  drain_and_refill(8);
  for (std::size_t want : {16, 32, 64, 128, 128, 128}) drain_and_refill(want);
  r.check_invariants();

  // Quiet: slow-path visits for other classes only, then the 64-byte bin starts at 8 again.
  for (int i = 0; i < 300; ++i) burst(r, 8 + (i % 4) * 8, 3000);
  r.trim();  // empties the thread cache (its bins keep their refill steps)
  drain_and_refill(8);
  drain_and_refill(16);
  for (void* p : held) r.deallocate(p, 64);
  r.check_invariants();
}

// What slow start is for: one thread, one resource per subsystem, a few objects of each class in
// each. Each resource's thread cache holds 7 of every class it used, not 127.
TEST_CASE("a thread using a few objects in each of 32 resources caches a few in each") {
  std::vector<std::unique_ptr<slab_resource>> rs;
  std::vector<std::pair<slab_resource*, void*>> held;
  for (int k = 0; k < 32; ++k) {
    rs.push_back(std::make_unique<slab_resource>(std::pmr::new_delete_resource()));
    for (std::size_t bytes = 16; bytes <= 256; bytes += 16)
      held.emplace_back(rs.back().get(), rs.back()->allocate(bytes));
  }
  for (auto& r : rs) {
    const auto s = r->stats();
    CHECK(s.objects_in_use == 16);
    CHECK(s.cached_objects == 16 * 7);
  }
  for (std::size_t i = 0; i < held.size(); ++i)
    held[i].first->deallocate(held[i].second, 16 + 16 * (i % 16));
  for (auto& r : rs) r->check_invariants();
}
