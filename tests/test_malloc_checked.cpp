// SPDX-License-Identifier: Apache-2.0
// BSALLOC_CHECKED=1: the process allocator catches double frees, foreign pointers and writes
// after free of the free-list link, naming the pointer. The variable is set before main (and
// before any call of the allocator in this executable), as a user would set it in the shell.
#include <bsalloc/malloc.h>
#include <bsalloc/page_resource.hpp>

#include <cstdlib>
#include <cstring>
#include <string>

#include <doctest/doctest.h>

#include "support.hpp"

namespace {
const int checked_env = ::setenv("BSALLOC_CHECKED", "1", 1);

std::string hex(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "%p", p);
  return b;
}
}  // namespace

TEST_CASE("malloc checked: a double free aborts naming the pointer") {
  REQUIRE(checked_env == 0);
  for (std::size_t n : {24u, 5000u, 200000u}) {
    void* p = bsalloc_malloc(n);
    const auto r = bsalloc_test::run_in_child([p] {
      bsalloc_free(p);
      bsalloc_free(p);
    });
    CHECK(r.aborted);
    CHECK_MESSAGE(r.err.find(hex(p)) != std::string::npos, r.err);
    bsalloc_free(p);
  }
}

TEST_CASE("malloc checked: a foreign pointer into bsalloc's pages aborts naming it") {
  char* p = static_cast<char*>(bsalloc_malloc(64));
  const auto r = bsalloc_test::run_in_child([p] { bsalloc_free(p + 16); });  // not an object
  CHECK(r.aborted);
  CHECK_MESSAGE(r.err.find(hex(p + 16)) != std::string::npos, r.err);
  void* big = bsalloc_malloc(1 << 20);
  char* inside = static_cast<char*>(big) + 3 * bsalloc::page_size;
  const auto r2 = bsalloc_test::run_in_child([inside] { bsalloc_free(inside); });
  CHECK(r2.aborted);
  CHECK_MESSAGE(r2.err.find(hex(inside)) != std::string::npos, r2.err);
  bsalloc_free(big);
  bsalloc_free(p);
}

TEST_CASE("malloc checked: a write after free over the free-list link is caught") {
  // Two objects of one class; the first freed is overwritten through a stale pointer so that
  // its link points at the second, live object: handing that out again is caught.
  void* a = bsalloc_malloc(40);
  void* b = bsalloc_malloc(40);
  const auto r = bsalloc_test::run_in_child([a, b] {
    bsalloc_free(a);
    std::memcpy(a, &b, sizeof b);  // the write after free
    void* x = bsalloc_malloc(40);
    void* y = bsalloc_malloc(40);
    (void)x;
    (void)y;
    std::_Exit(0);
  });
  CHECK(r.aborted);
  CHECK_MESSAGE(r.err.find(hex(b)) != std::string::npos, r.err);
  bsalloc_free(a);
  bsalloc_free(b);
}
