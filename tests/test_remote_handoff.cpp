// SPDX-License-Identifier: Apache-2.0
// Remote frees come back to the allocating core as whole chains (src/slab/core_cache.cpp,
// drain's hand-off): a thread that refills its bin takes a posted chain of its class as it is,
// without putting each object back into its slab and taking it out again. A producer pinned to
// one CPU allocates, a consumer pinned to the other frees everything; checked against a model:
// no two live objects overlap, every object's contents survive the trip, every remote free
// reaches its owner, and nothing is in use at the end.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <sched.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

struct block {
  unsigned char* p;
  std::size_t size;
  std::uint8_t fill;
};

}  // namespace

TEST_CASE("slab_resource: remote frees return to their core as whole chains, nothing lost") {
  const auto cpu = bsalloc_test::two_usable_cpus();
  const std::uint64_t seed = bsalloc_test::test_seed("remote hand-off");
  for (bool cache : {true, false}) {
    CAPTURE(cache);
    cpu_set_t old;
    REQUIRE(::sched_getaffinity(0, sizeof old, &old) == 0);
    page_resource pages;
    slab_resource_options o;
    o.caches = static_cast<std::size_t>(std::max(cpu[0], cpu[1])) + 1;  // a core cache per CPU
    o.thread_cache = cache;
    o.checked =
        false;  // the path that ships (checked mode, the Debug default, puts every object back)
    slab_resource r(std::pmr::pool_options{}, o, &pages);
    REQUIRE(bsalloc_test::pin_to_cpu(cpu[0]));
    std::mt19937_64 rng(seed + (cache ? 1 : 0));
    std::size_t sent = 0;
    for (int round = 0; round < 12; ++round) {
      std::vector<block> live;
      for (int i = 0; i < 3000; ++i) {
        // Three classes, so that chains of other classes are put back while one is handed on.
        const std::size_t size = std::array<std::size_t, 3>{48, 64, 200}[rng() % 3];
        auto* p = static_cast<unsigned char*>(r.allocate(size, 8));
        const auto fill = static_cast<std::uint8_t>(rng());
        std::memset(p, fill, size);
        live.push_back({p, size, fill});
      }
      // The model: no two live objects overlap.
      std::vector<std::pair<std::uintptr_t, std::size_t>> spans;
      for (const auto& b : live) spans.emplace_back(reinterpret_cast<std::uintptr_t>(b.p), b.size);
      std::sort(spans.begin(), spans.end());
      for (std::size_t i = 1; i < spans.size(); ++i)
        REQUIRE(spans[i - 1].first + spans[i - 1].second <= spans[i].first);
      // Every object goes to the other CPU and is freed there (contents checked first).
      std::size_t bad = 0;
      std::thread consumer([&] {
        if (!bsalloc_test::pin_to_cpu(cpu[1])) {
          bad = ~std::size_t{0};
          return;
        }
        for (const auto& b : live) {
          for (std::size_t k = 0; k < b.size; ++k)
            if (b.p[k] != b.fill) {
              ++bad;
              break;
            }
          r.deallocate(b.p, b.size, 8);
        }
      });  // its exit posts what its cache still holds
      consumer.join();
      REQUIRE(bad == 0);
      sent += live.size();
    }
    r.trim();  // drains every core's inbox
    const auto s = r.stats();
    std::size_t received = 0, handed_on = 0, remote_sent = 0;
    for (const auto& c : s.cores) {
      received += c.remote_frees_received;
      handed_on += c.remote_handed_on;
      remote_sent += c.remote_frees_sent;
    }
    CHECK(s.objects_in_use == 0);
    CHECK(remote_sent == sent);  // every free was remote: the consumer ran on the other CPU
    CHECK(received == sent);     // and reached the producer's core
    // The hand-off ran: a refill took posted chains whole (with thread caches a chain of up to a
    // bin's worth, without them single objects). How many depends on how the posts and refills
    // interleave: a drain hands on what fits the refill and puts the rest back.
    CHECK(handed_on > 0);
    CHECK(handed_on <= received);
    r.check_invariants();
    ::sched_setaffinity(0, sizeof old, &old);
  }
}
