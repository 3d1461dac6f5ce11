// SPDX-License-Identifier: Apache-2.0
// Slab colour (include/bsalloc/detail/slab_core.hpp): a slab hands its untouched objects out from
// a start spread over the slab, wrapping from the last object to the first, so that the first
// objects of many slabs do not share cache sets. Checked against a model: every object of every
// slab is handed out exactly once before a slab is reused, objects stay inside their slab and do
// not overlap, contents are kept, the invariants (S1 with the wrap, S5 in checked mode) and the
// heap walk agree with what is live, and the colours of many slabs differ.
#include <bsalloc/heap_walk.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

namespace {

constexpr std::size_t object = 64;
constexpr std::size_t slab_bytes = 64 << 10;  // the 64-byte class's slab (stats check it)

void run_model(bool checked, bool thread_cache) {
  CAPTURE(checked);
  CAPTURE(thread_cache);
  bsalloc::page_resource pages;
  bsalloc::slab_resource_options knobs;
  knobs.checked = checked;
  knobs.thread_cache = thread_cache;
  bsalloc::slab_resource res({}, knobs, &pages);
  const auto seed = bsalloc_test::test_seed("slab colour");
  std::mt19937_64 rng(seed);

  // Fill several slabs completely: each slab's objects wrap around its colour.
  std::map<std::uintptr_t, std::uint8_t> live;  // object -> fill byte
  std::set<std::uintptr_t> slabs_seen, first_offsets;
  std::map<std::uintptr_t, std::size_t> per_slab;
  const std::size_t count = 6000;
  for (std::size_t i = 0; i < count; ++i) {
    auto* p = static_cast<unsigned char*>(res.allocate(object, 16));
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    REQUIRE(a % 16 == 0);
    const auto fill = static_cast<std::uint8_t>(rng());
    std::memset(p, fill, object);
    REQUIRE(live.emplace(a, fill).second);  // never handed out twice
    const std::uintptr_t slab = a & ~(slab_bytes - 1);
    if (slabs_seen.insert(slab).second && !thread_cache) first_offsets.insert(a - slab);
    ++per_slab[slab];
    if (i % 997 == 0) res.check_invariants();
  }
  res.check_invariants();
  // No overlap: consecutive live objects are at least an object apart, inside one slab each.
  std::uintptr_t prev = 0;
  for (const auto& [a, fill] : live) {
    REQUIRE((prev == 0 || a >= prev + object));
    REQUIRE((a & ~(slab_bytes - 1)) + slab_bytes >= a + object);
    prev = a;
  }
  // Every slab that was filled before the next one was started holds the class's capacity
  // (the most any slab holds: checked mode's records make it smaller), whatever its colour.
  std::size_t capacity = 0;
  for (const auto& [slab, n] : per_slab) capacity = std::max(capacity, n);
  REQUIRE(capacity * object <= slab_bytes);
  REQUIRE(capacity * object > slab_bytes / 2);
  std::size_t full = 0;
  for (const auto& [slab, n] : per_slab)
    if (n == capacity) ++full;
  CHECK(full + 2 >= per_slab.size());
  // Colours: with the thread cache off each slab's first object is its colour; five slabs or
  // more must not all start at the same offset (they did before colouring: all at the header).
  if (!thread_cache && per_slab.size() >= 5) CHECK(first_offsets.size() >= 3);

  // The heap walk reports exactly what is live (thread caches' objects count as free when the
  // thread cache is off or in checked mode; otherwise, trim first).
  res.trim();
  std::set<std::uintptr_t> walked;
  bsalloc::for_each_allocation(res, [&](const bsalloc::heap_block& b) {
    if (!b.large) walked.insert(reinterpret_cast<std::uintptr_t>(b.ptr));
  });
  std::set<std::uintptr_t> model;
  for (const auto& [a, fill] : live) model.insert(a);
  CHECK(walked == model);

  // Free a random half, check contents on the way, reallocate (free objects first, then the
  // untouched rest with the wrap), check again, then free everything.
  std::vector<std::uintptr_t> order;
  for (const auto& [a, fill] : live) order.push_back(a);
  std::shuffle(order.begin(), order.end(), rng);
  for (std::size_t i = 0; i < order.size() / 2; ++i) {
    const auto a = order[i];
    const auto* p = reinterpret_cast<const unsigned char*>(a);
    for (std::size_t b = 0; b < object; ++b) REQUIRE(p[b] == live[a]);
    res.deallocate(reinterpret_cast<void*>(a), object, 16);
    live.erase(a);
  }
  res.check_invariants();
  for (std::size_t i = 0; i < count / 2; ++i) {
    void* p = res.allocate(object, 16);
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    REQUIRE(live.emplace(a, std::uint8_t{0x5a}).second);
    std::memset(p, 0x5a, object);
  }
  res.check_invariants();
  for (const auto& [a, fill] : live) {
    const auto* p = reinterpret_cast<const unsigned char*>(a);
    for (std::size_t b = 0; b < object; ++b) REQUIRE(p[b] == fill);
    res.deallocate(reinterpret_cast<void*>(a), object, 16);
  }
  res.check_invariants();
  CHECK(res.stats().objects_in_use == 0);
  res.trim();
  CHECK(res.stats().bytes_reserved == 0);
}

}  // namespace

TEST_CASE("slab colour: objects wrap around each slab's start, checked against a model") {
  run_model(false, true);
  run_model(false, false);
  run_model(true, true);
  run_model(true, false);
}

TEST_CASE("slab colour: the first objects of many slabs are spread over the slab") {
  // 64 slabs of the 64-byte class, the thread cache off: each slab's first object is at its
  // colour. Without colour they are all at the same offset (the header's end).
  bsalloc::page_resource pages;
  bsalloc::slab_resource_options knobs;
  knobs.checked = false;
  knobs.thread_cache = false;
  knobs.max_empty_slabs_per_class = 64;
  bsalloc::slab_resource res({}, knobs, &pages);
  std::vector<void*> all;
  std::set<std::uintptr_t> slabs;
  std::set<std::uintptr_t> offsets;
  while (slabs.size() < 64) {
    void* p = res.allocate(object, 16);
    all.push_back(p);
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    if (slabs.insert(a & ~(slab_bytes - 1)).second) offsets.insert(a & (slab_bytes - 1));
  }
  res.check_invariants();
  // 64 colours drawn from ~1000 starts: nearly all distinct; the cache-set index (offset / 64)
  // must cover more than a few sets.
  CHECK(offsets.size() >= 48);
  const auto [lo, hi] = std::minmax_element(offsets.begin(), offsets.end());
  CHECK(*hi - *lo >= slab_bytes / 2);
  for (void* p : all) res.deallocate(p, object, 16);
  res.check_invariants();
}
