// SPDX-License-Identifier: Apache-2.0
// Fuzz target: the malloc API (bsalloc_malloc, bsalloc_free, ... of <bsalloc/malloc.h>: the code
// that malloc, free and operator new/delete run when bsalloc replaces them). Operations: malloc,
// calloc, realloc (grow, shrink, same size, to 0, from NULL), reallocarray, aligned_alloc,
// posix_memalign, memalign, valloc, pvalloc of sizes from 0 to 4 MiB (log-uniform over six
// bands), alignments 1 B .. 2 MiB, and the bad inputs with a documented outcome: sizes no
// allocator holds and n * size overflows (NULL, errno ENOMEM, a realloc'd block untouched),
// alignments that are not powers of two (aligned_alloc: NULL, EINVAL; posix_memalign: EINVAL,
// *out untouched; memalign: rounded up), free(NULL), and foreign pointers (from the process's
// own malloc: bsalloc_malloc_owns says no, bsalloc_free and bsalloc_realloc hand them on).
// A shadow model checks alignment, no overlap, fill patterns (kept across realloc up to the
// smaller size, calloc's zeroes), malloc_usable_size >= the request with all of it writable,
// and bsalloc_malloc_check_invariants() every 128 operations and every 8th input; at the end of
// every input, after everything is freed, the allocator's objects and large bytes in use are back
// where they were.
#include <bsalloc/malloc.h>

#include <cerrno>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace bsalloc_fuzz;

struct harness {
  FuzzedDataProvider& in;
  shadow model;  // tag: 1 for a foreign block (the process's malloc)
  std::uint8_t next_fill = 1;

  std::uint8_t fill() { return next_fill = static_cast<std::uint8_t>(next_fill * 5 + 3); }

  // Log-uniform over bands: 0..64, ..1 KiB, ..16 KiB, ..64 KiB (the largest class), ..512 KiB,
  // ..4 MiB (page runs).
  std::size_t size() {
    static constexpr std::size_t top[] = {64, 1024, 16 << 10, 64 << 10, 512 << 10, 4 << 20};
    const std::size_t band = in.ConsumeIntegralInRange<std::size_t>(0, 5);
    const std::size_t lo = band == 0 ? 0 : top[band - 1] + 1;
    return in.ConsumeIntegralInRange<std::size_t>(lo, top[band]);
  }
  std::size_t alignment() { return std::size_t{1} << in.ConsumeIntegralInRange<unsigned>(0, 21); }

  // A size nobody can hold.
  std::size_t huge() {
    const std::size_t k = in.ConsumeIntegralInRange<std::size_t>(0, 4096);
    return in.ConsumeBool() ? SIZE_MAX - k : (SIZE_MAX >> 1) + k;
  }

  // A new block from bsalloc: owned, at least `bytes` usable and all of it writable, then filled.
  void add(void* p, std::size_t bytes, std::size_t align, const char* how) {
    FUZZ_CHECK(p != nullptr, std::string(how) + "(" + num(bytes) + ") returned NULL");
    FUZZ_CHECK(bsalloc_malloc_owns(p) != 0,
               std::string(how) + " gave " + hex(p) + " that bsalloc_malloc_owns denies");
    const std::size_t usable = bsalloc_malloc_usable_size(p);
    FUZZ_CHECK(usable >= bytes, std::string(how) + ": usable size " + num(usable) + " below " +
                                    num(bytes) + " at " + hex(p));
    if (usable > bytes) static_cast<volatile char*>(p)[usable - 1] = 1;  // writable to the end
    model.add(p, bytes, align, fill(), 0);
  }

  void expect_fail(void* p, int err, const std::string& what) {
    const int e = errno;
    FUZZ_CHECK(p == nullptr, what + " returned " + hex(p) + " instead of NULL");
    FUZZ_CHECK(e == err, what + ": errno " + num(static_cast<std::size_t>(e)) + ", expected " +
                             num(static_cast<std::size_t>(err)));
  }

  void free_one() {
    if (model.empty()) {
      bsalloc_free(nullptr);
      return;
    }
    auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    const auto a = it->first;
    const bool foreign = it->second.tag == 1;
    model.remove(a);
    if (foreign)
      FUZZ_CHECK(bsalloc_malloc_owns(reinterpret_cast<void*>(a)) == 0, "foreign block owned");
    bsalloc_free(reinterpret_cast<void*>(a));
  }

  void realloc_one(bool array) {
    const bool from_null = model.empty() || in.ConsumeIntegralInRange<int>(0, 7) == 0;
    std::uintptr_t a = 0;
    live_block old{};
    if (!from_null) {
      auto it = model.pick(in.ConsumeIntegral<std::size_t>());
      a = it->first;
      old = it->second;
    }
    void* p = reinterpret_cast<void*>(a);
    if (old.tag == 1) {  // foreign: handed on to the process's realloc, stays foreign
      const std::size_t n = in.ConsumeIntegralInRange<std::size_t>(1, 4096);
      void* q = bsalloc_realloc(p, n);
      FUZZ_CHECK(q != nullptr, "realloc of a foreign block returned NULL");
      FUZZ_CHECK(bsalloc_malloc_owns(q) == 0, "realloc of a foreign block gave bsalloc memory");
      check_kept(p, old, q, n);
      model.forget(a);
      model.add(q, n, 1, fill(), 1);
      return;
    }
    const int kind = in.ConsumeIntegralInRange<int>(0, 9);
    if (kind == 0 && !array && p != nullptr) {  // realloc(p, 0) frees p, returns NULL
      model.remove(a);
      FUZZ_CHECK(bsalloc_realloc(p, 0) == nullptr, "realloc(p, 0) returned a block");
      return;
    }
    if (kind == 1) {  // too big: NULL, ENOMEM, the old block untouched and still live
      errno = 0;
      void* q = array ? bsalloc_reallocarray(p, 2, huge()) : bsalloc_realloc(p, huge());
      expect_fail(q, ENOMEM, array ? "reallocarray(huge)" : "realloc(huge)");
      if (p != nullptr) model.verify(a, old);
      return;
    }
    std::size_t n = 1, bytes = size();
    if (array) {
      n = in.ConsumeIntegralInRange<std::size_t>(1, 16);
      bytes /= n;
    } else if (kind == 2 && p != nullptr) {
      bytes = old.size;  // same size
    }
    void* q = array ? bsalloc_reallocarray(p, n, bytes) : bsalloc_realloc(p, bytes);
    const std::size_t total = n * bytes;
    if (total == 0 && p != nullptr) {  // realloc(p, 0) frees p (glibc's choice)
      FUZZ_CHECK(q == nullptr, "realloc(p, 0) returned " + hex(q));
      model.forget(a);
      return;
    }
    FUZZ_CHECK(q != nullptr, "realloc to " + num(total) + " returned NULL");
    if (p == nullptr) {
      add(q, total, total >= 16 ? 16 : 1, "realloc(NULL)");
      return;
    }
    check_kept(p, old, q, total);
    model.forget(a);
    add(q, total, total >= 16 ? 16 : 1, "realloc");
  }

  // The old contents, up to the smaller size, moved with the block.
  static void check_kept(const void* p, const live_block& old, const void* q, std::size_t total) {
    const std::size_t keep = std::min(old.size, total);
    const auto* b = static_cast<const std::uint8_t*>(q);
    for_checked_bytes(old.size, [&](std::size_t i) {  // the bytes the old block's fill wrote
      if (i < keep && b[i] != pattern_at(old.fill, i))
        fail("realloc " + hex(p) + "+" + num(old.size) + " -> " + hex(q) + "+" + num(total) +
             ": byte " + num(i) + " not kept");
    });
  }

  void op() {
    switch (in.ConsumeIntegralInRange<int>(0, 15)) {
      case 0:
      case 1:
      case 2: {
        const std::size_t n = size();
        add(bsalloc_malloc(n), n, n >= 16 ? 16 : 1, "malloc");
        break;
      }
      case 3: {  // calloc: zeroed, overflow refused
        if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {
          errno = 0;
          expect_fail(bsalloc_calloc(huge() | 2, 3), ENOMEM, "calloc(overflow)");
          break;
        }
        const std::size_t n = in.ConsumeIntegralInRange<std::size_t>(0, 64);
        const std::size_t each = n == 0 ? size() : size() / n;
        void* p = bsalloc_calloc(n, each);
        FUZZ_CHECK(p != nullptr, "calloc returned NULL");
        const auto* b = static_cast<const std::uint8_t*>(p);
        for_checked_bytes(n * each, [&](std::size_t i) {
          if (b[i] != 0) fail("calloc " + hex(p) + ": byte " + num(i) + " not zero");
        });
        add(p, n * each, n * each >= 16 ? 16 : 1, "calloc");
        break;
      }
      case 4:
        realloc_one(false);
        break;
      case 5:
        realloc_one(true);
        break;
      case 6: {  // aligned_alloc: powers of two; anything else EINVAL
        if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {
          const std::size_t bad = in.ConsumeBool() ? 0 : (alignment() | 1) * 3;
          errno = 0;
          expect_fail(bsalloc_aligned_alloc(bad, 64), EINVAL, "aligned_alloc(" + num(bad) + ")");
          break;
        }
        const std::size_t al = alignment(), n = size();
        add(bsalloc_aligned_alloc(al, n), n, al, "aligned_alloc");
        break;
      }
      case 7: {  // posix_memalign: EINVAL and ENOMEM leave *out untouched
        void* out = &next_fill;
        const int pick = in.ConsumeIntegralInRange<int>(0, 7);
        if (pick == 0) {
          const std::size_t bad = in.ConsumeBool() ? 4 : alignment() * 3;
          FUZZ_CHECK(bsalloc_posix_memalign(&out, bad, 64) == EINVAL,
                     "posix_memalign(" + num(bad) + ") not EINVAL");
          FUZZ_CHECK(out == &next_fill, "posix_memalign EINVAL wrote *out");
          break;
        }
        if (pick == 1) {
          FUZZ_CHECK(bsalloc_posix_memalign(&out, 64, huge()) == ENOMEM,
                     "posix_memalign(huge) not ENOMEM");
          FUZZ_CHECK(out == &next_fill, "posix_memalign ENOMEM wrote *out");
          break;
        }
        const std::size_t al = std::max(alignment(), sizeof(void*)), n = size();
        FUZZ_CHECK(bsalloc_posix_memalign(&out, al, n) == 0, "posix_memalign failed");
        add(out, n, al, "posix_memalign");
        break;
      }
      case 8: {  // memalign rounds a non-power-of-two alignment up
        std::size_t al = alignment();
        if (al > 2 && in.ConsumeBool()) al = al - 1;  // rounds up to al
        std::size_t up = 1;
        while (up < al) up <<= 1;
        const std::size_t n = size();
        add(bsalloc_memalign(al, n), n, up, "memalign");
        break;
      }
      case 9: {
        const std::size_t n = size();
        if (in.ConsumeBool())
          add(bsalloc_valloc(n), n, 4096, "valloc");
        else
          add(bsalloc_pvalloc(n), (n + 4095) & ~std::size_t{4095}, 4096, "pvalloc");
        break;
      }
      case 10: {  // sizes nobody holds
        errno = 0;
        if (in.ConsumeBool())
          expect_fail(bsalloc_malloc(huge()), ENOMEM, "malloc(huge)");
        else
          expect_fail(bsalloc_aligned_alloc(alignment(), huge()), ENOMEM, "aligned_alloc(huge)");
        break;
      }
      case 11: {  // a foreign block: bsalloc hands it on to the process's malloc
        const std::size_t n = in.ConsumeIntegralInRange<std::size_t>(1, 4096);
        void* p = std::malloc(n);
        FUZZ_CHECK(p != nullptr, "the process's malloc returned NULL");
        FUZZ_CHECK(bsalloc_malloc_owns(p) == 0, "bsalloc_malloc_owns claims " + hex(p));
        model.add(p, n, 1, fill(), 1);
        break;
      }
      default:
        free_one();
        break;
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  static const std::size_t base_objects = bsalloc_malloc_objects_in_use();
  static const std::size_t base_large = bsalloc_malloc_large_in_use();
  {
    harness h{in, {}, 1};
    std::size_t ops = 0;
    while (in.remaining_bytes() > 0 && ops < 2000) {
      h.op();
      if (++ops % 128 == 0) bsalloc_malloc_check_invariants();
    }
    while (!h.model.empty()) {
      const auto a = h.model.blocks().begin()->first;
      h.model.remove(a);
      bsalloc_free(reinterpret_cast<void*>(a));
    }
  }
  // The invariant walk covers both page resources' whole regions: every 8th input (and every
  // 128 operations of a long one) keeps the target fast enough to explore.
  static std::size_t inputs = 0;
  if (++inputs % 8 == 0) bsalloc_malloc_check_invariants();
  // Every byte accounted for: what this input took, it gave back. (Objects parked in the
  // calling thread's cache count as free.)
  const std::size_t objects = bsalloc_malloc_objects_in_use();
  const std::size_t large = bsalloc_malloc_large_in_use();
  FUZZ_CHECK(objects == base_objects, "objects in use " + num(objects) + " after the input, " +
                                          num(base_objects) + " before");
  FUZZ_CHECK(large == base_large, "large bytes in use " + num(large) + " after the input, " +
                                      num(base_large) + " before");
  return 0;
}
