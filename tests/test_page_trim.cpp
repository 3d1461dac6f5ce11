// SPDX-License-Identifier: Apache-2.0
// What trim() gives back, measured as the kernel sees it (RSS): after freeing many small
// objects, slab_resource::trim() over a page_resource brings RSS back to where it started.
#include <bsalloc/detail/config.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::page_resource_options;

namespace {

std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// Sanitizers' shadow memory follows what is touched and stays resident.
constexpr bool sanitized = bsalloc_test::sanitized_build;

// Allocates `total` bytes of `size`-byte objects through `mr` (each written), frees them all,
// then calls trim; returns RSS growth over the start, in bytes (may be negative).
template <class Trim>
long rss_after_churn(std::pmr::memory_resource& mr, std::size_t size, std::size_t total,
                     Trim trim) {
  std::vector<void*> objs(total / size, nullptr);  // touched before the baseline
  // Warm up: the first slabs, thread cache and page-map leaves exist before the baseline.
  const std::size_t warm = std::min<std::size_t>(1000, objs.size());
  for (std::size_t i = 0; i < warm; ++i) objs[i] = mr.allocate(size);
  for (std::size_t i = 0; i < warm; ++i) mr.deallocate(objs[i], size);
  trim();
  const std::size_t before = rss_bytes();
  for (auto& p : objs) {
    p = mr.allocate(size);
    std::memset(p, 0x3c, size);
  }
  const std::size_t peak = rss_bytes();
  CHECK(peak > before + total / 2);  // the objects were resident
  for (void* p : objs) mr.deallocate(p, size);
  trim();
  const std::size_t after = rss_bytes();
  MESSAGE("RSS: start ", before >> 10, " KiB, with objects ", peak >> 10, " KiB, after trim ",
          after >> 10, " KiB");
  return static_cast<long>(after) - static_cast<long>(before);
}

}  // namespace

TEST_CASE("slab_resource::trim() over a page_resource brings RSS back within 1 MiB") {
  const std::size_t total = sanitized ? std::size_t{32} << 20 : std::size_t{256} << 20;
  for (bool run_cache : {false, true}) {
    CAPTURE(run_cache);
    page_resource pages(
        page_resource_options{.cache_bytes_per_core = run_cache ? std::size_t{4} << 20 : 0});
    bsalloc::slab_resource slab(&pages);
    for (std::size_t size : {std::size_t{64}, std::size_t{1024}}) {
      CAPTURE(size);
      const long grown = rss_after_churn(slab, size, total, [&] { slab.trim(); });
      if (!sanitized) CHECK(grown < (1l << 20));
      slab.check_invariants();
      pages.check_invariants();
    }
  }
}

TEST_CASE("page_resource::trim() after large blocks brings RSS back within 1 MiB") {
  const std::size_t total = sanitized ? std::size_t{32} << 20 : std::size_t{256} << 20;
  page_resource pages(page_resource_options{.cache_bytes_per_core = std::size_t{4} << 20});
  for (std::size_t size : {std::size_t{20} << 10, std::size_t{256} << 10}) {
    CAPTURE(size);
    const long grown = rss_after_churn(pages, size, total, [&] { pages.trim(); });
    if (!sanitized) CHECK(grown < (1l << 20));
    pages.check_invariants();
  }
}
