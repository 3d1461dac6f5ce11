// SPDX-License-Identifier: Apache-2.0
// Misuse that only memcheck reports: a use after free and a leak of an object inside a
// slab_resource or an object_pool, or of a page_resource run; a stray write into a slab header.
// Every case is skipped unless asked for by name (--no-skip
// --test-case=...): scripts/ci.d/45-valgrind.sh runs each under valgrind and requires memcheck to
// REPORT it, as it would for malloc. Without memcheck they do nothing harmful (the object stays in
// the pool).
#include <bsalloc/object_pool.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>

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

// -- page_resource: a run handed out is a malloc-like block, free pages are no-access ----------

[[gnu::noinline]] void leak_run(bsalloc::page_resource& pages) {
  auto* p = static_cast<char*>(pages.allocate_pages(3));
  std::memset(p, 4, 3 * 4096);
  std::printf("leaked %p\n", static_cast<void*>(p));
  std::fflush(stdout);
}

TEST_CASE("misuse: read after free of a page_resource run" * doctest::skip()) {
  bsalloc::page_resource pages;
  auto* keep = static_cast<char*>(pages.allocate_pages(1));
  auto* p = static_cast<char*>(pages.allocate_pages(2));
  std::memset(p, 5, 2 * 4096);
  pages.deallocate_pages(p, 2);
  volatile char c = p[5000];  // memcheck: Invalid read of size 1 (inside a freed run)
  (void)c;
  pages.deallocate_pages(keep, 1);
}

TEST_CASE("misuse: a leaked page_resource run" * doctest::skip()) {
  static auto* pages = new bsalloc::page_resource();
  // The region's first page is its base, which the region's record points at: the leaked run
  // is the next one.
  static void* first = pages->allocate_pages(1);
  (void)first;
  leak_run(*pages);
  scrub_stack();
}

// -- slab headers are no-access but to the allocator ---------------------------------------------

TEST_CASE("misuse: write into a slab header through a stray pointer" * doctest::skip()) {
  slab_resource_options o = plain();
  o.thread_cache = false;  // the first object of the class comes from its slab at once
  slab_resource pool({}, o);
  auto* p = static_cast<char*>(pool.allocate(64));
  std::size_t slab_bytes = 0;
  for (const auto& c : pool.stats().classes)
    if (c.object_size == 64) slab_bytes = c.slab_bytes;
  REQUIRE(slab_bytes != 0);
  auto* header = reinterpret_cast<char*>(reinterpret_cast<std::uintptr_t>(p) & ~(slab_bytes - 1));
  volatile char* stray = header + 22;  // padding after `list`: harmless to the allocator
  stray[0] = 0;                        // memcheck: Invalid write of size 1
  pool.deallocate(p, 64);
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

TEST_CASE("clean: page_resource runs and a slab_resource on them under memcheck") {
  bsalloc::page_resource pages;
  char* runs[40];
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 40; ++i) {
      const auto n = static_cast<std::size_t>(1 + i % 5);
      runs[i] = static_cast<char*>(pages.allocate_pages(n));
      std::memset(runs[i], i, n * 4096);
    }
    // Grown and shrunk in place (the block follows), then freed.
    char* big = static_cast<char*>(pages.allocate_pages(2));
    std::memset(big, 9, 2 * 4096);
    if (pages.resize_pages(big, 2, 4)) {
      std::memset(big + 2 * 4096, 8, 2 * 4096);
      CHECK(big[0] == 9);
      CHECK(pages.resize_pages(big, 4, 1));
      pages.deallocate_pages(big, 1);
    } else {
      pages.deallocate_pages(big, 2);
    }
    for (int i = 0; i < 40; ++i) {
      CHECK(runs[i][4095] == static_cast<char>(i));
      pages.deallocate_pages(runs[i], static_cast<std::size_t>(1 + i % 5));
    }
  }
  {
    slab_resource pool({}, plain(), &pages);
    char* v[300];
    for (int i = 0; i < 300; ++i) {
      v[i] = static_cast<char*>(pool.allocate(static_cast<std::size_t>(8 + i * 7)));
      std::memset(v[i], 1, static_cast<std::size_t>(8 + i * 7));
    }
    pool.check_invariants();
    CHECK(pool.live_blocks().size() == 300);
    for (int i = 0; i < 300; ++i) pool.deallocate(v[i], static_cast<std::size_t>(8 + i * 7));
  }
  // A run still out at release() dies with it: no leak, no stale block.
  (void)pages.allocate_pages(2);
  pages.release();
  std::byte buffer[16 * 4096];
  {
    bsalloc::page_resource fixed{std::span<std::byte>(buffer)};
    auto* r = static_cast<char*>(fixed.allocate_pages(2));
    std::memset(r, 3, 2 * 4096);
    // Destroyed with the run still out: the caller's buffer is its own again, all of it.
  }
  std::memset(buffer, 0, sizeof buffer);
  CHECK(buffer[100] == std::byte{0});
}
