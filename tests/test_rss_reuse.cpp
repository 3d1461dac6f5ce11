// SPDX-License-Identifier: Apache-2.0
// Memory a workload frees and asks for again is reused, not kept beside new memory: a
// slab_resource whose thread moved to another CPU takes the slabs it left there before a new one.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <sched.h>

#include <array>
#include <memory_resource>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

struct pin_guard {
  cpu_set_t old;
  pin_guard() { REQUIRE(::sched_getaffinity(0, sizeof old, &old) == 0); }
  ~pin_guard() { ::sched_setaffinity(0, sizeof old, &old); }
  static bool to(int cpu) { return bsalloc_test::pin_to_cpu(cpu); }
};

}  // namespace

TEST_CASE("slab_resource: a thread that moved to another CPU uses the slabs it left there") {
  const auto cpu = bsalloc_test::two_usable_cpus();
  for (bool cache : {false, true}) {
    CAPTURE(cache);
    pin_guard guard;
    page_resource pages;
    slab_resource_options o;
    o.caches = static_cast<std::size_t>(cpu[1]) + 1;  // each CPU its own core cache
    o.thread_cache = cache;
    slab_resource r(std::pmr::pool_options{}, o, &pages);
    REQUIRE(pin_guard::to(cpu[0]));
    std::vector<void*> v;
    for (int i = 0; i < 100; ++i) v.push_back(r.allocate(64));
    for (int i = 0; i < 50; ++i) {
      r.deallocate(v.back(), 64);
      v.pop_back();
    }
    r.trim();  // the thread cache's objects go back: the slab is partly used, on cpu[0]'s core
    REQUIRE(r.stats().classes.size() == 1);
    REQUIRE(r.stats().classes[0].slabs == 1);
    REQUIRE(pin_guard::to(cpu[1]));
    for (int i = 0; i < 40; ++i) v.push_back(r.allocate(64));
    const auto s = r.stats();
    CHECK(s.classes[0].slabs == 1);  // no new slab on cpu[1]'s core
    CHECK(s.cores[static_cast<std::size_t>(cpu[1])].slab_refills == 0);
    for (void* p : v) r.deallocate(p, 64);
    r.check_invariants();
  }
}
