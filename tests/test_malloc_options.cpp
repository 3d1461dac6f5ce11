// SPDX-License-Identifier: Apache-2.0
// The process allocator's environment options (docs/malloc.md), as read when it starts, and the
// stats report that BSALLOC_STATS prints at exit.
#include <bsalloc/malloc.h>

#include <cstdlib>
#include <string>

#include <doctest/doctest.h>

#include "../src/malloc/options.hpp"
#include "support.hpp"

using bsalloc::detail::mx::read_options;

namespace {
void clear_env() {
  for (const char* v : {"BSALLOC_RETAIN_BYTES", "BSALLOC_PURGE_MS", "BSALLOC_CHECKED",
                        "BSALLOC_HARDENED", "BSALLOC_STATS"})
    ::unsetenv(v);
}
}  // namespace

TEST_CASE("malloc options: defaults") {
  clear_env();
  const auto o = read_options();
  CHECK(o.stats == 0);
  CHECK(o.knobs.checked == bool(BSALLOC_CHECKED_DEFAULT));
  CHECK_FALSE(o.knobs.hardened);
  CHECK(o.knobs.min_slab_bytes == (std::size_t{1} << 20));
  CHECK(o.slab_pages.retain_bytes == bsalloc::page_resource_options{}.retain_bytes);
  CHECK(o.large_pages.cache_bytes_per_core == (std::size_t{4} << 20));
}

TEST_CASE("malloc options: each variable, and malformed values are ignored") {
  clear_env();
  ::setenv("BSALLOC_RETAIN_BYTES", "64m", 1);
  ::setenv("BSALLOC_PURGE_MS", "250", 1);
  ::setenv("BSALLOC_CHECKED", "1", 1);
  ::setenv("BSALLOC_HARDENED", "1", 1);
  ::setenv("BSALLOC_STATS", "json", 1);
  auto o = read_options();
  CHECK(o.slab_pages.retain_bytes == (std::size_t{64} << 20));
  CHECK(o.large_pages.retain_bytes == (std::size_t{64} << 20));
  CHECK(o.slab_pages.purge_interval.count() == 250);
  CHECK(o.large_pages.purge_interval.count() == 250);
  CHECK(o.knobs.checked);
  CHECK(o.knobs.hardened);
  CHECK(o.stats == 2);
  ::setenv("BSALLOC_RETAIN_BYTES", "4096", 1);
  ::setenv("BSALLOC_CHECKED", "0", 1);
  ::setenv("BSALLOC_HARDENED", "off", 1);
  ::setenv("BSALLOC_STATS", "1", 1);
  o = read_options();
  CHECK(o.slab_pages.retain_bytes == 4096);
  CHECK_FALSE(o.knobs.checked);
  CHECK_FALSE(o.knobs.hardened);
  CHECK(o.stats == 1);
  ::setenv("BSALLOC_RETAIN_BYTES", "-5", 1);
  ::setenv("BSALLOC_PURGE_MS", "soon", 1);
  ::setenv("BSALLOC_CHECKED", "maybe", 1);
  ::setenv("BSALLOC_STATS", "loud", 1);
  const auto r = bsalloc_test::run_in_child([] {
    const auto bad = read_options();
    std::_Exit(bad.slab_pages.retain_bytes == bsalloc::page_resource_options{}.retain_bytes &&
                       bad.slab_pages.purge_interval ==
                           bsalloc::page_resource_options{}.purge_interval &&
                       bad.stats == 0
                   ? 0
                   : 1);
  });
  CHECK(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  CHECK(r.err.find("BSALLOC_PURGE_MS=soon is not understood") != std::string::npos);
  CHECK(r.err.find("BSALLOC_RETAIN_BYTES=-5") != std::string::npos);
  CHECK(r.err.find("BSALLOC_STATS=loud") != std::string::npos);
  clear_env();
}

TEST_CASE("malloc options: the stats report shows the calls served") {
  clear_env();
  void* p = bsalloc_malloc(100);
  void* big = bsalloc_malloc(1 << 20);
  const auto r = bsalloc_test::run_in_child([] {
    bsalloc_malloc_stats_print(0);
    bsalloc_malloc_stats_print(1);
  });
  CHECK(r.err.find("bsalloc malloc (pid") != std::string::npos);
  CHECK(r.err.find("objects in use") != std::string::npos);
  CHECK(r.err.find("{\"bsalloc_malloc\": {\"pid\":") != std::string::npos);
  CHECK(bsalloc_malloc_objects_in_use() >= 1);
  CHECK(bsalloc_malloc_large_in_use() >= (std::size_t{1} << 20));
  bsalloc_free(big);
  bsalloc_free(p);
}
