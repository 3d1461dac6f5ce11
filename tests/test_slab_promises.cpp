// SPDX-License-Identifier: Apache-2.0
// slab_resource (and object_pool): the README's promises that had no test that could fail —
// max_empty_slabs_per_class, the per-core and per-class stats counters, the () and
// (pool_options) constructors, and abort messages that name the resource, the pointer, the size
// and the alignment. Each asserted on behaviour: what the upstream holds, what a counter says
// after a known sequence of calls, what the message says.
#include <bsalloc/object_pool.hpp>
#include <bsalloc/slab_resource.hpp>

#include <array>
#include <cstddef>
#include <cstdio>
#include <memory_resource>
#include <optional>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::slab_resource;
using bsalloc::slab_resource_options;
using bsalloc_test::run_in_child;

namespace {

// One core cache and no thread cache: every call reaches the counters at once, on core 0.
slab_resource_options plain(bool checked = false) {
  slab_resource_options o;
  o.caches = 1;
  o.thread_cache = false;
  o.checked = checked;
  return o;
}

// A copy: the stats are often a temporary.
std::optional<bsalloc::slab_class_stats> class_of(const bsalloc::slab_resource_stats& s,
                                                  std::size_t object_size) {
  for (const auto& c : s.classes)
    if (c.object_size == object_size) return c;
  return std::nullopt;
}

}  // namespace

TEST_CASE("max_empty_slabs_per_class: that many empty slabs stay, the rest go upstream") {
  for (std::size_t keep : {std::size_t{1}, std::size_t{3}, std::size_t{0}}) {
    CAPTURE(keep);
    page_resource pages;
    auto k = plain();
    k.max_empty_slabs_per_class = keep;
    slab_resource res(std::pmr::pool_options{}, k, &pages);
    // Fill ten slabs of the 64-byte class.
    std::vector<void*> objs;
    while (true) {
      objs.push_back(res.allocate(64));
      const auto c = class_of(res.stats(), 64);
      REQUIRE(c.has_value());
      if (c->slabs == 11) break;  // the eleventh slab's first object: ten are full
    }
    const std::size_t slab_bytes = class_of(res.stats(), 64)->slab_bytes;
    for (void* p : objs) res.deallocate(p, 64);
    const auto s = res.stats();
    const auto c = class_of(s, 64);
    const std::size_t held = c ? c->slabs : 0;
    CHECK(held == keep);
    CHECK(s.cores[0].slab_refills == 11);
    CHECK(s.cores[0].slab_returns == 11 - keep);
    // The upstream agrees: it holds exactly the kept slabs.
    CHECK(pages.stats().allocated_bytes == keep * slab_bytes);
    res.check_invariants();
  }
}

TEST_CASE("per-core and per-class counters follow a known sequence of calls") {
  page_resource pages;
  slab_resource res(std::pmr::pool_options{}, plain(), &pages);
  std::vector<void*> objs;
  for (int i = 0; i < 1000; ++i) objs.push_back(res.allocate(48));
  auto s = res.stats();
  auto c = class_of(s, 48);
  REQUIRE(c.has_value());
  CHECK(s.cores[0].allocations == 1000);
  CHECK(s.cores[0].deallocations == 0);
  CHECK(c->objects_in_use == 1000);
  CHECK(c->bytes_in_use == 48000);
  CHECK(c->peak_objects == 1000);
  CHECK(s.objects_in_use == 1000);
  CHECK(s.cores[0].slab_refills == c->slabs);
  CHECK(s.bytes_reserved == c->slabs * c->slab_bytes);
  CHECK(pages.stats().allocated_bytes == s.bytes_reserved);  // the upstream agrees
  for (int i = 0; i < 500; ++i) {
    res.deallocate(objs.back(), 48);
    objs.pop_back();
  }
  s = res.stats();
  c = class_of(s, 48);
  REQUIRE(c.has_value());
  CHECK(s.cores[0].deallocations == 500);
  CHECK(c->objects_in_use == 500);
  CHECK(c->peak_objects == 1000);  // the peak stays
  // Large blocks: counted apart, with their requested bytes, and gone when freed.
  void* big = res.allocate(100000);
  s = res.stats();
  CHECK(s.large_objects == 1);
  CHECK(s.large_bytes == 100000);
  CHECK(s.bytes_in_use == 500 * 48 + 100000);
  CHECK(s.cores[0].allocations == 1000);  // not a slab object
  res.deallocate(big, 100000);
  s = res.stats();
  CHECK(s.large_objects == 0);
  CHECK(s.large_bytes == 0);
  for (void* p : objs) res.deallocate(p, 48);
  s = res.stats();
  CHECK(s.cores[0].deallocations == 1000);
  CHECK(s.objects_in_use == 0);
  CHECK(s.cores[0].remote_frees_sent == 0);  // one core: nothing remote
  res.check_invariants();
}

TEST_CASE("the () and (pool_options) constructors: global_page_resource() upstream, options kept") {
  slab_resource a;
  CHECK(a.upstream_resource() == &bsalloc::global_page_resource());
  CHECK(a.options().largest_required_pool_block == std::size_t{32} << 10);
  void* p = a.allocate(100);
  CHECK(bsalloc::page_resource::owner_of(p) == &bsalloc::global_page_resource());
  a.deallocate(p, 100);

  std::pmr::pool_options o;
  o.largest_required_pool_block = 1024;
  slab_resource b(o);
  CHECK(b.upstream_resource() == &bsalloc::global_page_resource());
  CHECK(b.options().largest_required_pool_block >= 1024);
  CHECK(b.options().largest_required_pool_block < 2048);
  void* small = b.allocate(1000);
  void* large = b.allocate(4000);  // above its largest class: the upstream's
  const auto s = b.stats();
  CHECK(s.objects_in_use == 1);
  CHECK(s.large_objects == 1);
  CHECK(s.large_bytes == 4000);
  b.deallocate(large, 4000);
  b.deallocate(small, 1000);
  CHECK(b.stats().large_objects == 0);
  b.check_invariants();
}

namespace {

// The child prints the resource and the pointer before the bad call, so that the parent knows
// what the abort line must say.
std::string expected_line(const std::string& err, const std::string& tail) {
  const auto at = err.find("resource ");
  REQUIRE(at != std::string::npos);
  std::array<char, 64> res{}, ptr{};
  REQUIRE(std::sscanf(err.c_str() + at, "resource %63s pointer %63s", res.data(), ptr.data()) == 2);
  return fmt::format("bsalloc: slab_resource {}: deallocate({}, {}", res.data(), ptr.data(), tail);
}

}  // namespace

TEST_CASE("checked aborts name the resource, the pointer, the size and the alignment") {
  struct scenario {
    const char* name;
    std::size_t bytes, alignment;      // allocated
    std::size_t bad_bytes, bad_align;  // given to deallocate
    bool twice;                        // free first, then free again
    const char* tail;                  // after "deallocate(p, "
  };
  const scenario cases[] = {
      {"double free", 40, 16, 40, 16, true, "40, 16): double free"},
      {"size within the class", 64, 8, 57, 8, false,
       "57, 8): size does not match the allocation (64 bytes)"},
      {"alignment", 64, 16, 64, 64, false,
       "64, 64): alignment does not match the allocation (alignment 16)"},
      {"large block size", 100000, 8, 90000, 8, false,
       "90000, 8): size does not match the allocation (100000 bytes, from the upstream)"},
  };
  for (const scenario& sc : cases) {
    CAPTURE(sc.name);
    const auto r = run_in_child([&] {
      slab_resource res(std::pmr::pool_options{}, plain(true));
      void* p = res.allocate(sc.bytes, sc.alignment);
      if (sc.twice) res.deallocate(p, sc.bytes, sc.alignment);
      fmt::print(stderr, "resource {} pointer {}\n", static_cast<const void*>(&res), p);
      std::fflush(stderr);
      res.deallocate(p, sc.bad_bytes, sc.bad_align);
    });
    CAPTURE(r.err);
    CHECK(r.aborted);
    CHECK(r.err.find(expected_line(r.err, sc.tail)) != std::string::npos);
  }
}

struct promise_object {  // outside any namespace: its name in the message is exactly this
  long a, b;
};

TEST_CASE("object_pool's checked aborts name the type, the operation and the pointer") {
  const auto r = run_in_child([] {
    bsalloc::object_pool<promise_object> pool(bsalloc::object_pool_options{.checked = true});
    promise_object* p = pool.allocate();
    pool.deallocate(p);
    fmt::print(stderr, "pointer {}\n", static_cast<const void*>(p));
    std::fflush(stderr);
    pool.deallocate(p);
  });
  CAPTURE(r.err);
  CHECK(r.aborted);
  const auto at = r.err.find("pointer ");
  REQUIRE(at != std::string::npos);
  const std::string ptr = r.err.substr(at + 8, r.err.find('\n', at) - at - 8);
  CHECK(r.err.find(fmt::format("bsalloc: object_pool<promise_object>: deallocate({}): ", ptr)) !=
        std::string::npos);
  CHECK(r.err.find("double free") != std::string::npos);
}
