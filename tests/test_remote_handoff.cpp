// SPDX-License-Identifier: Apache-2.0
// Remote frees come back to the allocating core as whole chains (src/slab/remote.cpp, drain's
// hand-off and the core's stash): a thread that refills its bin takes a posted chain of its class
// as it is, without putting each object back into its slab and taking it out again; chains that
// no refill in progress can take wait whole in the core's stash for the next refills of their
// class. A producer pinned to one CPU allocates, a consumer pinned to the other frees
// everything; checked against a model: no two live objects overlap, every object's contents
// survive the trip, every remote free reaches its owner, stashed objects are neither in use nor
// live to the heap walk, and nothing is in use at the end.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <memory_resource>
#include <random>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

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
    std::vector<block> live;
    for (int round = 0; round < 12; ++round) {
      live.clear();
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
      live.clear();
      if (round % 4 == 3) {
        // A few allocations: their refills take chains of their class (from the hand-off or the
        // stash) and stash the rest. The model: in use and live to the heap walk are exactly
        // what the model holds — stashed objects are neither; the stash keeps its bounds (S3).
        for (int i = 0; i < 50; ++i) {
          auto* p = static_cast<unsigned char*>(r.allocate(64, 8));
          std::memset(p, 0x5a, 64);
          live.push_back({p, 64, 0x5a});
        }
        CHECK(r.stats().objects_in_use == live.size());
        std::set<const void*> walked;
        for (const auto& b : r.live_blocks()) walked.insert(b.ptr);
        std::set<const void*> model;
        for (const auto& b : live) model.insert(b.p);
        CHECK(walked == model);
        r.check_invariants();
        for (const auto& b : live) r.deallocate(b.p, b.size, 8);  // local frees
        live.clear();
      }
    }
    r.trim();  // drains every core's inbox
    const auto s = r.stats();
    std::size_t received = 0, handed_on = 0, remote_sent = 0, kept = 0;
    for (const auto& c : s.cores) {
      received += c.remote_frees_received;
      handed_on += c.remote_handed_on;
      remote_sent += c.remote_frees_sent;
      kept += c.remote_kept;
    }
    CHECK(s.objects_in_use == 0);
    CHECK(remote_sent == sent);  // every free was remote: the consumer ran on the other CPU
    CHECK(received == sent);     // and reached the producer's core
    // The hand-off ran: a refill took posted chains whole (with thread caches a chain of up to a
    // bin's worth, without them single objects). How many depends on how the posts and refills
    // interleave: a drain hands on what fits the refill and puts the rest back.
    CHECK(handed_on > 0);
    CHECK(handed_on <= received);
    // With thread caches, chains of the other classes waited in the stash (whole, or put back
    // when it was full); without, there is no stash (a refill takes one object).
    CHECK((cache ? kept > 0 : kept == 0));
    CHECK(kept <= received);
    CHECK(s.bytes_reserved == 0);  // trim() put the stash back: every slab emptied, went back
    r.check_invariants();
    ::sched_setaffinity(0, sizeof old, &old);
  }
}

namespace {

struct stash_setup {
  std::array<int, 2> cpu = bsalloc_test::two_usable_cpus();
  cpu_set_t old{};
  page_resource pages;
  std::unique_ptr<slab_resource> r;
  static constexpr std::array<std::size_t, 3> sizes{48, 64, 200};
  stash_setup() {
    REQUIRE(::sched_getaffinity(0, sizeof old, &old) == 0);
    slab_resource_options o;
    o.caches = static_cast<std::size_t>(std::max(cpu[0], cpu[1])) + 1;
    o.checked = false;
    r = std::make_unique<slab_resource>(std::pmr::pool_options{}, o, &pages);
    REQUIRE(bsalloc_test::pin_to_cpu(cpu[0]));
  }
  ~stash_setup() { ::sched_setaffinity(0, sizeof old, &old); }
  stash_setup(const stash_setup&) = delete;
  stash_setup& operator=(const stash_setup&) = delete;
  // n objects of each size allocated by a thread on CPU 0 (which exits: what its cache held
  // goes back into core 0's slabs) and freed by one on CPU 1: its bins post chains to core 0,
  // its exit posts the rest; nobody drains them yet. The calling thread's cache is untouched.
  void send_all(std::size_t n) {
    std::vector<std::pair<void*, std::size_t>> v;
    bool pinned = false;
    std::thread maker([&] {
      if (!(pinned = bsalloc_test::pin_to_cpu(cpu[0]))) return;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t size : sizes) v.emplace_back(r->allocate(size), size);
    });
    maker.join();
    REQUIRE(pinned);
    std::thread consumer([&] {
      if (!(pinned = bsalloc_test::pin_to_cpu(cpu[1]))) return;
      for (const auto& b : v) r->deallocate(b.first, b.second);
    });
    consumer.join();
    REQUIRE(pinned);
  }
  std::size_t counter(std::size_t bsalloc::slab_core_stats::*field) const {
    std::size_t n = 0;
    for (const auto& c : r->stats().cores) n += c.*field;
    return n;
  }
};

}  // namespace

TEST_CASE("slab_resource: drained chains wait in the core's stash for the next refills") {
  stash_setup t;
  slab_resource& r = *t.r;
  t.send_all(2000);  // 6000 objects posted to core 0 as chains of their class
  CHECK(r.stats().objects_in_use == 0);
  // This thread's first allocation of 48 B: its refill drains the inbox, takes a chain of 48 B
  // whole and keeps other chains in the stash (or puts them back when it is full).
  void* a = r.allocate(48);
  const std::size_t kept = t.counter(&bsalloc::slab_core_stats::remote_kept);
  const std::size_t handed = t.counter(&bsalloc::slab_core_stats::remote_handed_on);
  CHECK(kept > 0);
  CHECK(handed > 0);
  CHECK(r.stats().objects_in_use == 1);  // stashed objects are not in use
  CHECK(r.live_blocks().size() == 1);    // nor live to the heap walk
  r.check_invariants();                  // the stash's bounds and chains (S3)
  {  // the printed stats show the counter: a "kept" column, and "remote_kept" in JSON
    const auto st = r.stats();
    for (const auto& c : st.cores) {
      CHECK(fmt::format("{:j}", st)
                .find(fmt::format("\"remote_handed_on\":{},\"remote_kept\":{},", c.remote_handed_on,
                                  c.remote_kept)) != std::string::npos);
      CHECK(fmt::format("{}", st).find(fmt::format(" {:>11} {:>11} {:>9} ", c.remote_handed_on,
                                                   c.remote_kept, c.remote_overflows)) !=
            std::string::npos);
    }
    CHECK(fmt::format("{}", st).find(" handed on        kept ") != std::string::npos);
  }
  // A refill of 200 B takes a stashed chain whole: more handed on, no slab touched for it.
  const std::size_t allocations = t.counter(&bsalloc::slab_core_stats::allocations);
  void* b = r.allocate(200);
  CHECK(t.counter(&bsalloc::slab_core_stats::remote_handed_on) > handed);
  CHECK(t.counter(&bsalloc::slab_core_stats::allocations) > allocations);
  CHECK(r.stats().objects_in_use == 2);
  r.check_invariants();
  // The objects come back intact through the stash: write, free, take again.
  std::memset(b, 0x11, 200);
  r.deallocate(b, 200);
  r.deallocate(a, 48);
  // trim() puts the stash back: every slab empties and goes upstream.
  r.trim();
  const auto s = r.stats();
  CHECK(s.objects_in_use == 0);
  CHECK(s.bytes_reserved == 0);
  CHECK(t.pages.stats().allocated_bytes == 0);
  r.check_invariants();
}

// A flush walks its chain once, cut into runs of one slab: a local run goes back into its slab
// whole, a remote one joins its owner's post. One thread on CPU 1 frees, in runs of random length
// and in random order, objects that CPU 0 allocated and objects of its own, while it keeps some
// of its own live: the model checks that every freed object reaches its slab or its owner, the
// live ones keep their contents and are exactly what the heap walk sees, and nothing is left.
TEST_CASE("slab_resource: a flush of local and remote runs mixed in one chain") {
  stash_setup t;
  slab_resource& r = *t.r;
  std::mt19937_64 rng(bsalloc_test::test_seed("mixed flush"));
  constexpr std::size_t n = 4000;
  std::vector<block> theirs, kept;
  for (std::size_t i = 0; i < n; ++i) {  // this thread, on CPU 0: core 0's slabs
    const std::size_t size = t.sizes[rng() % t.sizes.size()];
    auto* p = static_cast<unsigned char*>(r.allocate(size));
    const auto fill = static_cast<std::uint8_t>(rng());
    std::memset(p, fill, size);
    theirs.push_back({p, size, fill});
  }
  std::size_t bad = 0;
  bool pinned = false;
  std::thread mixer([&] {
    if (!(pinned = bsalloc_test::pin_to_cpu(t.cpu[1]))) return;
    std::vector<block> mine;
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t size = t.sizes[rng() % t.sizes.size()];
      auto* p = static_cast<unsigned char*>(r.allocate(size));
      const auto fill = static_cast<std::uint8_t>(rng());
      std::memset(p, fill, size);
      mine.push_back({p, size, fill});
    }
    auto check_free = [&](const block& b) {
      for (std::size_t k = 0; k < b.size; ++k)
        if (b.p[k] != b.fill) {
          ++bad;
          break;
        }
      r.deallocate(b.p, b.size);
    };
    // Runs of 1..40 from either side, each in allocation order or reversed; a tenth of this
    // thread's own objects stay live.
    std::size_t a = 0, b = 0;
    while (a < theirs.size() || b < mine.size()) {
      const bool from_theirs = b == mine.size() || (a < theirs.size() && rng() % 2 == 0);
      auto& v = from_theirs ? theirs : mine;
      std::size_t& at = from_theirs ? a : b;
      const std::size_t len = std::min<std::size_t>(1 + rng() % 40, v.size() - at);
      std::vector<block> run(v.begin() + static_cast<std::ptrdiff_t>(at),
                             v.begin() + static_cast<std::ptrdiff_t>(at + len));
      at += len;
      if (rng() % 2) std::reverse(run.begin(), run.end());
      for (const auto& x : run) {
        if (!from_theirs && rng() % 10 == 0)
          kept.push_back(x);
        else
          check_free(x);
      }
    }
  });  // its exit flushes what its cache still holds
  mixer.join();
  REQUIRE(pinned);
  CHECK(bad == 0);
  r.trim();  // drains every inbox
  CHECK(r.stats().objects_in_use == kept.size());
  // All of CPU 0's objects went back as remote frees, and those of the mixer's own that its
  // refills found in core 0's slabs (a refill looks at other cores before a new slab); every one
  // reached core 0.
  const std::size_t sent = t.counter(&bsalloc::slab_core_stats::remote_frees_sent);
  CHECK(sent >= n);
  CHECK(t.counter(&bsalloc::slab_core_stats::remote_frees_received) == sent);
  std::set<const void*> walked, model;
  for (const auto& x : r.live_blocks()) walked.insert(x.ptr);
  for (const auto& x : kept) model.insert(x.p);
  CHECK(walked == model);
  r.check_invariants();
  for (const auto& x : kept) {
    for (std::size_t k = 0; k < x.size; ++k)
      if (x.p[k] != x.fill) {
        ++bad;
        break;
      }
    r.deallocate(x.p, x.size);
  }
  CHECK(bad == 0);
  r.trim();
  const auto s = r.stats();
  CHECK(s.objects_in_use == 0);
  CHECK(s.bytes_reserved == 0);
  r.check_invariants();
}

TEST_CASE("slab_resource: release(), destruction and fork with a full stash") {
  SUBCASE("release") {
    stash_setup t;
    t.send_all(1000);
    void* a = t.r->allocate(64);  // drains, stashes
    (void)a;
    CHECK(t.counter(&bsalloc::slab_core_stats::remote_kept) > 0);
    t.r->release();  // drops the stash with the slabs
    CHECK(t.r->stats().objects_in_use == 0);
    CHECK(t.pages.stats().allocated_bytes == 0);
    t.r->check_invariants();
    void* p = t.r->allocate(64);
    CHECK(t.r->stats().objects_in_use == 1);
    t.r->deallocate(p, 64);
    t.r->check_invariants();
  }
  SUBCASE("destruction") {
    stash_setup t;
    t.send_all(1000);
    void* a = t.r->allocate(64);
    t.r->deallocate(a, 64);
    CHECK(t.counter(&bsalloc::slab_core_stats::remote_kept) > 0);
    t.r.reset();  // slabs go back with the stash's objects in them
    CHECK(t.pages.stats().allocated_bytes == 0);
  }
  SUBCASE("fork") {
    stash_setup t;
    t.send_all(1000);
    void* a = t.r->allocate(64);
    REQUIRE(t.counter(&bsalloc::slab_core_stats::remote_kept) > 0);
    const int rc = bsalloc_test::child_exit_code([&]() -> int {
      slab_resource& r = *t.r;
      r.check_invariants();  // the stash survived the fork and its recount
      if (r.stats().objects_in_use != 1) return 1;
      std::vector<void*> v;
      for (int i = 0; i < 3000; ++i) v.push_back(r.allocate(200));  // from the stash first
      for (void* p : v) r.deallocate(p, 200);
      r.deallocate(a, 64);
      r.trim();
      r.check_invariants();
      return r.stats().objects_in_use == 0 && r.stats().bytes_reserved == 0 ? 0 : 2;
    });
    CHECK(rc == 0);
    t.r->deallocate(a, 64);
    t.r->trim();
    CHECK(t.r->stats().bytes_reserved == 0);
    t.r->check_invariants();
  }
}
