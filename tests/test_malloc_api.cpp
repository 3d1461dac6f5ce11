// SPDX-License-Identifier: Apache-2.0
// The C contract of the process allocator through its prefixed API (include/bsalloc/malloc.h):
// the same code that malloc, free, ... run when they are replaced, so these tests also run
// under ASan and TSan, where malloc itself cannot be replaced.
#include <bsalloc/malloc.h>
#include <bsalloc/page_resource.hpp>

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

namespace {

bool aligned(const void* p, std::size_t a) {
  return reinterpret_cast<std::uintptr_t>(p) % a == 0;
}

void fill(void* p, std::size_t n, unsigned char seed) {
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(seed + i * 7);
}
bool filled(const void* p, std::size_t n, unsigned char seed) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i)
    if (b[i] != static_cast<unsigned char>(seed + i * 7)) return false;
  return true;
}

}  // namespace

TEST_CASE("malloc: malloc(0) is unique, free(NULL) is nothing, usable size is writable") {
  std::set<void*> seen;
  std::vector<void*> zeros;
  for (int i = 0; i < 100; ++i) {
    void* p = bsalloc_malloc(0);
    REQUIRE(p != nullptr);
    CHECK(seen.insert(p).second);
    CHECK(bsalloc_malloc_owns(p));
    zeros.push_back(p);
  }
  for (void* p : zeros) bsalloc_free(p);
  bsalloc_free(nullptr);
  CHECK(bsalloc_malloc_usable_size(nullptr) == 0);
  for (std::size_t n :
       {1u, 7u, 16u, 24u, 100u, 1000u, 4096u, 40000u, 65536u, 65537u, 300000u, 5u << 20}) {
    void* p = bsalloc_malloc(n);
    REQUIRE(p != nullptr);
    CHECK(aligned(p, 16));
    const std::size_t u = bsalloc_malloc_usable_size(p);
    CHECK(u >= n);
    std::memset(p, 0xab, u);  // all of it is the caller's
    bsalloc_free(p);
  }
}

TEST_CASE("malloc: failure is NULL with errno ENOMEM; calloc and reallocarray overflow fail") {
  errno = 0;
  CHECK(bsalloc_malloc(~std::size_t{0} - 8) == nullptr);
  CHECK(errno == ENOMEM);
  errno = 0;
  CHECK(bsalloc_malloc(std::size_t{1} << 46) == nullptr);  // beyond the page layer's largest
  CHECK(errno == ENOMEM);
  errno = 0;
  CHECK(bsalloc_calloc(std::size_t{1} << 33, std::size_t{1} << 33) == nullptr);
  CHECK(errno == ENOMEM);
  errno = 0;
  CHECK(bsalloc_calloc(~std::size_t{0}, 2) == nullptr);
  CHECK(errno == ENOMEM);
  void* p = bsalloc_malloc(32);
  errno = 0;
  CHECK(bsalloc_reallocarray(p, ~std::size_t{0} / 2, 3) == nullptr);
  CHECK(errno == ENOMEM);
  errno = 0;
  CHECK(bsalloc_realloc(p, ~std::size_t{0} - 8) == nullptr);  // p is untouched
  CHECK(errno == ENOMEM);
  CHECK(bsalloc_malloc_usable_size(p) >= 32);
  bsalloc_free(p);
}

TEST_CASE("malloc: realloc of any block to a size nobody holds fails and keeps the block") {
  // Found by fuzz_malloc: for a page run, realloc(p, SIZE_MAX) rounded the size to a page count
  // that wrapped to 0 and "shrank" the run in place, returning p.
  for (const std::size_t n : {std::size_t{16}, std::size_t{4000}, std::size_t{70000},
                              std::size_t{600000}, std::size_t{3} << 20}) {
    auto* p = static_cast<unsigned char*>(bsalloc_malloc(n));
    REQUIRE(p != nullptr);
    std::memset(p, 0x5c, n);
    for (const std::size_t huge : {~std::size_t{0}, ~std::size_t{0} - 1, ~std::size_t{0} - 4095,
                                   ~std::size_t{0} >> 1, (~std::size_t{0} >> 1) + 1,
                                   std::size_t{1} << 46}) {
      CAPTURE(n);
      CAPTURE(huge);
      errno = 0;
      CHECK(bsalloc_realloc(p, huge) == nullptr);
      CHECK(errno == ENOMEM);
      errno = 0;
      CHECK(bsalloc_reallocarray(p, 1, huge) == nullptr);
      CHECK(errno == ENOMEM);
      CHECK(bsalloc_malloc_usable_size(p) >= n);
    }
    CHECK(std::count(p, p + n, 0x5c) == static_cast<std::ptrdiff_t>(n));
    bsalloc_free(p);
  }
  bsalloc_malloc_check_invariants();
}
// The page count of any byte count, without wrapping.
static_assert(bsalloc::page_resource::pages_for(~std::size_t{0}) ==
              (~std::size_t{0} >> bsalloc::page_shift) + 1);
static_assert(bsalloc::page_resource::pages_for(~std::size_t{0} - 4095) ==
              (~std::size_t{0} >> bsalloc::page_shift));

TEST_CASE("malloc: calloc zeroes, also memory given back dirty") {
  for (std::size_t n : {24u, 3000u, 70000u, 1u << 20}) {
    void* d = bsalloc_malloc(n);
    std::memset(d, 0xff, n);
    bsalloc_free(d);
    auto* z = static_cast<unsigned char*>(bsalloc_calloc(1, n));
    REQUIRE(z != nullptr);
    bool zero = true;
    for (std::size_t i = 0; i < n; ++i) zero = zero && z[i] == 0;
    CHECK(zero);
    bsalloc_free(z);
  }
}

TEST_CASE("malloc: posix_memalign EINVAL leaves the pointer untouched; ENOMEM too") {
  void* const sentinel = reinterpret_cast<void*>(0x1234);
  void* out = sentinel;
  CHECK(bsalloc_posix_memalign(&out, 24, 100) == EINVAL);
  CHECK(out == sentinel);
  CHECK(bsalloc_posix_memalign(&out, 4, 100) == EINVAL);  // not a multiple of sizeof(void*)
  CHECK(out == sentinel);
  CHECK(bsalloc_posix_memalign(&out, 0, 100) == EINVAL);
  CHECK(out == sentinel);
  const int before = errno = 77;
  CHECK(bsalloc_posix_memalign(&out, 64, ~std::size_t{0} - 64) == ENOMEM);
  CHECK(out == sentinel);
  CHECK(errno == before);  // posix_memalign reports by its result only
  for (std::size_t a : {8u, 16u, 32u, 64u, 256u, 4096u, 8192u, 1u << 16, 1u << 21}) {
    void* p = nullptr;
    REQUIRE(bsalloc_posix_memalign(&p, a, 100) == 0);
    CHECK(aligned(p, a));
    bsalloc_free(p);
  }
}

TEST_CASE("malloc: aligned_alloc, memalign, valloc, pvalloc; alignments up to 1 GiB") {
  errno = 0;
  CHECK(bsalloc_aligned_alloc(24, 100) == nullptr);
  CHECK(errno == EINVAL);
  for (std::size_t shift = 0; shift <= 30; ++shift) {
    const std::size_t a = std::size_t{1} << shift;
    for (std::size_t n : {std::size_t{1}, std::size_t{100}, std::size_t{5000}, a + 1}) {
      void* p = bsalloc_aligned_alloc(a, n);
      REQUIRE(p != nullptr);
      CHECK(aligned(p, a));
      CHECK(bsalloc_malloc_usable_size(p) >= n);
      static_cast<char*>(p)[n - 1] = 1;
      bsalloc_free(p);
    }
  }
  void* m = bsalloc_memalign(48, 10);  // glibc rounds the alignment up to a power of two
  CHECK(aligned(m, 64));
  bsalloc_free(m);
  void* v = bsalloc_valloc(10);
  CHECK(aligned(v, bsalloc::page_size));
  bsalloc_free(v);
  void* pv = bsalloc_pvalloc(5000);
  CHECK(aligned(pv, bsalloc::page_size));
  CHECK(bsalloc_malloc_usable_size(pv) >= 8192);
  bsalloc_free(pv);
}

TEST_CASE("malloc: realloc(NULL, n) is malloc; realloc keeps the contents both ways") {
  void* p = bsalloc_realloc(nullptr, 40);
  REQUIRE(p != nullptr);
  CHECK(bsalloc_malloc_owns(p));
  fill(p, 40, 1);
  std::size_t n = 40;
  // Grow through every kind of block, then shrink back: the first min(old, new) bytes survive.
  for (std::size_t next : {48u, 100u, 1000u, 20000u, 65536u, 70000u, 300000u, 3u << 20, 200000u,
                           60000u, 1000u, 30u, 1u}) {
    void* q = bsalloc_realloc(p, next);
    REQUIRE(q != nullptr);
    CHECK(filled(q, std::min(n, next), 1));
    CHECK(bsalloc_malloc_usable_size(q) >= next);
    fill(q, next, 1);
    p = q;
    n = next;
  }
  CHECK(bsalloc_realloc(p, 0) == nullptr);  // frees, as glibc does
  bsalloc_malloc_check_invariants();
}

TEST_CASE("malloc: realloc stays in place within a class and for runs that can resize") {
  void* p = bsalloc_malloc(100);  // class 112
  CHECK(bsalloc_realloc(p, 110) == p);
  CHECK(bsalloc_realloc(p, 98) == p);
  bsalloc_free(p);
  // A run: shrinking gives the tail back in place; growing takes the pages it gave back.
  void* r = bsalloc_malloc(std::size_t{64} << 12);
  fill(r, std::size_t{64} << 12, 3);
  CHECK(bsalloc_realloc(r, std::size_t{32} << 12) == r);
  CHECK(bsalloc_malloc_usable_size(r) == (std::size_t{32} << 12));
  CHECK(filled(r, std::size_t{32} << 12, 3));
  CHECK(bsalloc_realloc(r, std::size_t{48} << 12) == r);
  CHECK(bsalloc_malloc_usable_size(r) == (std::size_t{48} << 12));
  CHECK(filled(r, std::size_t{32} << 12, 3));
  bsalloc_free(r);
}

// rulloc's realloc has its grow and shrink branches swapped and copies the new size from the
// old block, past its end. Here the pages right after the old block are made inaccessible: a
// copy of more than the old block faults, and the swapped branches would give a block too
// small (the writes over the whole new size fault or corrupt) or lose the contents.
TEST_CASE("malloc: realloc grows and shrinks the right way and copies only what was there") {
  const std::size_t pages = 32, bytes = pages * bsalloc::page_size;  // a run (above 64 KiB)
  std::vector<void*> held;
  void* a = nullptr;
  void* b = nullptr;
  for (int i = 0; i < 64 && !b; ++i) {  // two runs one after the other
    void* x = bsalloc_malloc(bytes);
    for (void* y : held) {
      if (static_cast<char*>(y) + bytes == x) a = y, b = x;
      if (static_cast<char*>(x) + bytes == y) a = x, b = y;
    }
    held.push_back(x);
  }
  REQUIRE(b != nullptr);
  const auto r = bsalloc_test::run_in_child([&] {
    fill(a, bytes, 9);
    if (::mprotect(b, bytes, PROT_NONE) != 0) std::_Exit(3);
    void* g = bsalloc_realloc(a, bytes * 3);  // cannot grow in place: b is in the way
    if (!g || !filled(g, bytes, 9)) std::_Exit(4);
    if (bsalloc_malloc_usable_size(g) < bytes * 3) std::_Exit(5);
    std::memset(g, 1, bytes * 3);
    fill(g, bytes, 9);
    const std::size_t half = bytes / 2 + bsalloc::page_size;  // still a run (above 64 KiB)
    void* s = bsalloc_realloc(g, half);                       // shrink: in place, nothing copied
    if (s != g || !filled(s, half, 9)) std::_Exit(6);
    void* small = bsalloc_realloc(s, 1000);  // into the slab layer: copies 1000 bytes
    if (!small || !filled(small, 1000, 9)) std::_Exit(7);
    std::_Exit(0);
  });
  CHECK_MESSAGE(WIFEXITED(r.status), r.err);
  CHECK(WEXITSTATUS(r.status) == 0);
  for (void* x : held) bsalloc_free(x);
}

TEST_CASE("malloc: a pointer bsalloc did not hand out goes to the next allocator") {
  // In a program without the replacement the next allocator is the process's malloc.
  void* foreign = std::malloc(200);
  REQUIRE(foreign != nullptr);
  CHECK_FALSE(bsalloc_malloc_owns(foreign));
  CHECK(bsalloc_malloc_usable_size(foreign) >= 200);
  std::memset(foreign, 5, 200);
  void* grown = bsalloc_realloc(foreign, 400);  // handed on: the next allocator's realloc
  REQUIRE(grown != nullptr);
  CHECK(static_cast<unsigned char*>(grown)[199] == 5);
  bsalloc_free(grown);  // handed on: no crash, no leak (LeakSanitizer checks under ASan)
}

TEST_CASE("malloc: a pointer nobody can own aborts with a message naming it") {
  void* p = bsalloc_malloc(10);  // the allocator is running
  const auto r = bsalloc_test::run_in_child([] {
    bsalloc_free(reinterpret_cast<void*>(0x12345));  // misaligned: no allocator's
  });
  CHECK(r.aborted);
  CHECK(r.err.find("0x12345") != std::string::npos);
  const auto r2 = bsalloc_test::run_in_child([p] {
    bsalloc_free(static_cast<char*>(p) + 1 + (bsalloc::page_size << 2));  // inside slab pages
    bsalloc_free(static_cast<char*>(p) + 16 * 1000);
  });
  (void)r2;  // unchecked mode: undefined (the checked suite asserts the verdict)
  const auto r3 = bsalloc_test::run_in_child([] {
    void* big = bsalloc_malloc(1 << 20);
    bsalloc_free(static_cast<char*>(big) + bsalloc::page_size);  // a run's tail page
  });
  CHECK(r3.aborted);
  CHECK(r3.err.find("free(0x") != std::string::npos);
  bsalloc_free(p);
}

// The inline malloc / free path (src/malloc/fast.hpp) and the slab layer's own path share the
// thread cache: every size maps to a class whose objects fit it, a freed object is the next one
// handed out for its class (LIFO), bins that overflow and objects freed by another thread go
// through the slow path, and the counts agree with the slab layer's afterwards.
TEST_CASE("malloc: the inline path serves every size up to 64 KiB and agrees with the slab layer") {
  const std::size_t before = bsalloc_malloc_objects_in_use();
  std::vector<std::size_t> sizes;
  for (std::size_t n = 0; n <= 2048; ++n) sizes.push_back(n);
  for (std::size_t n = 2049; n <= 65536; n += 127) sizes.push_back(n);
  sizes.push_back(65535);
  sizes.push_back(65536);
  for (const std::size_t n : sizes) {
    void* p = bsalloc_malloc(n);
    REQUIRE(p != nullptr);
    CHECK(aligned(p, 16));
    const std::size_t usable = bsalloc_malloc_usable_size(p);
    CHECK(usable >= n);
    CHECK(usable % 16 == 0);
    fill(p, usable, static_cast<unsigned char>(n));
    bsalloc_free(p);
    void* q = bsalloc_malloc(n);  // the same class's newest free object: p again
    CHECK(q == p);
    CHECK(bsalloc_malloc_usable_size(q) == usable);
    bsalloc_free(q);
  }
  // Far more objects of one class than a bin holds: the bin overflows on free (slow path) and
  // runs empty on malloc (refills).
  for (const std::size_t n : {24u, 200u, 5000u}) {
    std::vector<void*> v;
    for (int i = 0; i < 20000; ++i) {
      v.push_back(bsalloc_malloc(n));
      REQUIRE(v.back() != nullptr);
      fill(v.back(), n, static_cast<unsigned char>(i));
    }
    for (std::size_t i = 0; i < v.size(); ++i)
      REQUIRE(filled(v[i], n, static_cast<unsigned char>(i)));
    for (void* p : v) bsalloc_free(p);
  }
  // Allocated here, freed by another thread (into that thread's cache, then flushed at its
  // exit as remote frees).
  std::vector<void*> v;
  for (int i = 0; i < 5000; ++i) v.push_back(bsalloc_malloc(static_cast<std::size_t>(i % 300)));
  std::thread t([&] {
    for (void* p : v) bsalloc_free(p);
  });
  t.join();
  CHECK(bsalloc_malloc_objects_in_use() == before);
  bsalloc_malloc_check_invariants();
}
