// SPDX-License-Identifier: Apache-2.0
// std::pmr containers on a slab_resource: a vector of strings, an unordered_map, and the slab
// stats while they live and after they are gone. Exits non-zero if a check fails.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/version.hpp>

#include <cstddef>
#include <cstdio>
#include <memory_resource>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    fmt::print(stderr, "pmr_vector: FAILED: {}\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  fmt::print("bsalloc {}: std::pmr containers on a slab_resource\n\n", BSALLOC_VERSION_STRING);
  bsalloc::slab_resource slab;  // upstream: bsalloc::global_page_resource()
  check(slab.upstream_resource() == &bsalloc::global_page_resource(), "default upstream");

  constexpr int n = 20000;
  {
    // A vector of strings: the vector's buffer and every string long enough to leave the small
    // string buffer come from the slab_resource (the vector passes it on to its elements).
    std::pmr::vector<std::pmr::string> names(&slab);
    names.reserve(n);
    for (int i = 0; i < n; ++i) names.emplace_back(fmt::format("player-{:05}-with-a-long-name", i));

    // A map from those names to scores: nodes, bucket array and keys on the same resource.
    std::pmr::unordered_map<std::pmr::string, int> score(&slab);
    for (int i = 0; i < n; ++i) score.emplace(names[static_cast<std::size_t>(i)], i * 3);

    // Small vectors of varied sizes land in different size classes.
    std::pmr::vector<std::pmr::vector<int>> rows(&slab);
    for (int i = 0; i < 2000; ++i) rows.emplace_back(static_cast<std::size_t>(i % 97 + 1), i);

    long long sum = 0;
    for (const auto& [name, value] : score) sum += value;
    check(score.size() == static_cast<std::size_t>(n), "map size");
    check(sum == 3LL * n * (n - 1) / 2, "map values");
    check(score.at("player-12345-with-a-long-name") == 3 * 12345, "map lookup");
    check(names.get_allocator().resource() == &slab, "vector resource");
    check(names.back().get_allocator().resource() == &slab, "strings use the vector's resource");
    check(score.begin()->first.get_allocator().resource() == &slab, "keys use the map's resource");

    const auto live = slab.stats();
    fmt::print("while the containers live:\n{}\n", live);
    // n strings + n keys + n nodes at least are slab objects.
    check(live.objects_in_use >= 3 * static_cast<std::size_t>(n), "objects in use while live");
    check(live.bytes_in_use > 0 && live.bytes_reserved >= live.bytes_in_use,
          "bytes in use and reserved");
  }

  slab.trim();  // flush this thread's cache, return the empty slabs upstream
  const auto after = slab.stats();
  // "{:j}" prints the same stats as one JSON object, for machines.
  fmt::print("after the containers are gone and trim():\n{}\n", after);
  check(after.objects_in_use == 0 && after.bytes_in_use == 0, "nothing in use afterwards");
  check(after.large_objects == 0 && after.large_bytes == 0, "no large object left");

  if (failures != 0) return 1;
  fmt::print("pmr_vector: ok\n");
  return 0;
}
