// SPDX-License-Identifier: Apache-2.0
// Misuse that only memcheck reports: a use after free and a leak of an object inside a
// slab_resource or an object_pool. Every case is skipped unless asked for by name (--no-skip
// --test-case=...): scripts/ci.d/45-valgrind.sh runs each under valgrind and requires memcheck to
// REPORT it, as it would for malloc. Without memcheck they do nothing harmful (the object stays in
// the pool).
#include <bsalloc/object_pool.hpp>
#include <bsalloc/slab_resource.hpp>

#include <cstdio>
#include <cstring>

#include <doctest/doctest.h>

using bsalloc::slab_resource;
using bsalloc::slab_resource_options;

namespace {

slab_resource_options plain() {
  slab_resource_options o;
  o.checked = false;
  return o;
}

// Not inlined: the leaked pointer lives only in this frame, which the next call overwrites.
[[gnu::noinline]] void leak_one(slab_resource& pool) {
  auto* p = static_cast<char*>(pool.allocate(100));
  std::memset(p, 1, 100);
  std::printf("leaked %p\n", static_cast<void*>(p));
  std::fflush(stdout);
}

[[gnu::noinline]] void scrub_stack() {
  volatile char junk[4096];
  for (auto& c : junk) c = 0;
}

}  // namespace

TEST_CASE("misuse: read after free of a slab_resource object" * doctest::skip()) {
  slab_resource pool({}, plain());
  auto* keep = static_cast<char*>(pool.allocate(64));
  auto* p = static_cast<char*>(pool.allocate(64));
  std::memset(p, 7, 64);
  pool.deallocate(p, 64);
  volatile char c = p[24];  // memcheck: Invalid read of size 1 (inside a freed pool object)
  (void)c;
  pool.deallocate(keep, 64);
}

TEST_CASE("misuse: write after free of a slab_resource object's first word" * doctest::skip()) {
  slab_resource pool({}, plain());
  auto* p = static_cast<char*>(pool.allocate(32));
  pool.deallocate(p, 32);
  volatile char* q = p;
  q[0] = 1;  // memcheck: Invalid write of size 1 (the word holding the free-list link)
}

TEST_CASE("misuse: read past the requested size into the class slack" * doctest::skip()) {
  slab_resource pool({}, plain());
  auto* p = static_cast<char*>(pool.allocate(20));  // a 24-byte object
  volatile char c = p[21];                          // memcheck: Invalid read of size 1
  (void)c;
  pool.deallocate(p, 20);
}

TEST_CASE("misuse: a leaked slab_resource object" * doctest::skip()) {
  // The pool outlives the leak check (it is never destroyed): the object is simply lost.
  static auto* pool = new slab_resource({}, plain());
  leak_one(*pool);
  scrub_stack();
}

struct widget {
  long a[6];
};

[[gnu::noinline]] void leak_widget(bsalloc::object_pool<widget>& pool) {
  widget* w = pool.allocate();
  std::memset(w, 2, sizeof *w);
  std::printf("leaked %p\n", static_cast<void*>(w));
  std::fflush(stdout);
}

TEST_CASE("misuse: read after free of an object_pool object" * doctest::skip()) {
  bsalloc::object_pool<widget> pool;
  widget* keep = pool.allocate();
  widget* w = pool.allocate();
  std::memset(w, 3, sizeof *w);
  pool.deallocate(w);
  volatile long x = w->a[3];  // memcheck: Invalid read of size 8 (inside a freed slot)
  (void)x;
  pool.deallocate(keep);
}

TEST_CASE("misuse: a leaked object_pool object" * doctest::skip()) {
  static auto* pool = new bsalloc::object_pool<widget>();
  leak_widget(*pool);
  scrub_stack();
}

TEST_CASE("clean: allocate, use and free inside a slab_resource under memcheck") {
  slab_resource pool({}, plain());
  for (int round = 0; round < 3; ++round) {
    char* v[200];
    for (int i = 0; i < 200; ++i) {
      v[i] = static_cast<char*>(pool.allocate(static_cast<std::size_t>(1 + i * 13)));
      std::memset(v[i], i, static_cast<std::size_t>(1 + i * 13));
    }
    for (int i = 0; i < 200; ++i) {
      CHECK(v[i][0] == static_cast<char>(i));
      pool.deallocate(v[i], static_cast<std::size_t>(1 + i * 13));
    }
  }
  // release() with objects still out: they die with their slabs (no leak reported).
  (void)pool.allocate(48);
  pool.release();
}

TEST_CASE("clean: an object_pool under memcheck") {
  bsalloc::object_pool<widget> pool;
  for (int round = 0; round < 3; ++round) {
    widget* v[300];
    for (auto& w : v) {
      w = pool.allocate();
      std::memset(w, round, sizeof *w);
    }
    widget expect;
    std::memset(&expect, round, sizeof expect);
    for (widget* w : v) {
      CHECK(w->a[5] == expect.a[5]);
      pool.deallocate(w);
    }
  }
  pool.check_invariants();
  auto p = pool.make();  // a pool_ptr, freed by its destructor
  CHECK(p.get() != nullptr);
}
