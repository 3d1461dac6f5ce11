// SPDX-License-Identifier: Apache-2.0
// slab_resource's hardened mode: a use-after-free write into a free object and a double free are
// detected (an abort naming the pointer, in a child), never a wild pointer handed out; a
// randomised model test (contents kept, no overlap, accounting, invariants) with every option;
// cross-thread frees (run under TSan too); fork.
#include <bsalloc/slab_resource.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory_resource>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

#ifdef BSALLOC_ASAN
#include <sanitizer/asan_interface.h>
#endif

using bsalloc::slab_resource;
using bsalloc::slab_resource_options;
using bsalloc_test::run_in_child;

namespace {

slab_resource_options hardened(bool thread_cache = true, bool zero = false) {
  slab_resource_options o;
  o.hardened = true;
  o.hardened_zero_on_free = zero;
  o.thread_cache = thread_cache;
  o.checked = false;  // hardened on its own (Debug builds turn checked on by default)
  return o;
}

std::string ptr(const void* p) {
  return fmt::format("{}", p);
}

// What a careless program does after a free: writes into the object (under ASan the free object
// is poisoned; the write is made as if ASan were not looking, so that hardened mode is tested).
void scribble(void* p, std::size_t offset, std::uint64_t value) {
#ifdef BSALLOC_ASAN
  ASAN_UNPOISON_MEMORY_REGION(static_cast<char*>(p) + offset, sizeof value);
#endif
  std::memcpy(static_cast<char*>(p) + offset, &value, sizeof value);
}

bool filled(const unsigned char* p, std::size_t n, unsigned char v) {
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != v) return false;
  return true;
}

unsigned seed() {
  const char* env = std::getenv("BSALLOC_SEED");
  const unsigned s = env ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : 13u;
  std::printf("test_hardened: seed %u (BSALLOC_SEED overrides)\n", s);
  return s;
}

}  // namespace

TEST_CASE("hardened: a use-after-free write into a free object's link aborts when it is taken") {
  for (bool cache : {true, false}) {
    CAPTURE(cache);
    const auto r = run_in_child([cache] {
      slab_resource pool({}, hardened(cache));
      void* keep = pool.allocate(64);  // the slab stays in use
      void* p = pool.allocate(64);
      void* q = pool.allocate(64);
      pool.deallocate(q, 64);
      pool.deallocate(p, 64);               // p: the next object taken
      scribble(p, 0, 0x4141414141414141u);  // a use after free overwrites its first word
      void* got = pool.allocate(64);        // must abort: p's link is corrupted
      std::fprintf(stderr, "handed out %p\n", got);
      (void)keep;
    });
    CHECK(r.aborted);
    CHECK(r.err.find("corrupted (use after free?)") != std::string::npos);
    CHECK(r.err.find("free-list link of 0x") != std::string::npos);
    CHECK(r.err.find("handed out") == std::string::npos);
  }
}

TEST_CASE("hardened: the message names the object whose link was overwritten") {
  // Pointers are the child's, and a forked child has the parent's addresses: allocate in the
  // parent's image the same way and read p from a pipe-free channel — the child prints it.
  const auto r = run_in_child([] {
    slab_resource pool({}, hardened(false));
    void* p = pool.allocate(48);
    void* q = pool.allocate(48);
    pool.deallocate(p, 48);
    pool.deallocate(q, 48);  // slab free list: q -> p
    std::fprintf(stderr, "victim %s\n", ptr(q).c_str());
    scribble(q, 0, 0);  // q's link now decodes to garbage (0 is not a valid encoding of null)
    (void)pool.allocate(48);
    (void)pool.allocate(48);
  });
  REQUIRE(r.aborted);
  const auto at = r.err.find("victim ");
  REQUIRE(at != std::string::npos);
  const std::string victim = r.err.substr(at + 7, r.err.find('\n', at) - at - 7);
  CHECK(r.err.find("free-list link of " + victim + " corrupted") != std::string::npos);
}

TEST_CASE("hardened: a link nudged to a non-boundary address in its own slab aborts") {
  // A partial overwrite (a low byte) leaves the decoded link inside the same slab: the thread
  // cache's hit path must still see that it is no object boundary, and abort naming the object.
  for (bool cache : {true, false}) {
    CAPTURE(cache);
    const auto r = run_in_child([cache] {
      slab_resource pool({}, hardened(cache));
      void* keep = pool.allocate(48);
      void* p = pool.allocate(48);
      void* q = pool.allocate(48);
      pool.deallocate(q, 48);
      pool.deallocate(p, 48);  // p's link leads to q, in the same slab
      std::fprintf(stderr, "victim %s\n", ptr(p).c_str());
      std::uint64_t stored = 0;
      std::memcpy(&stored, p, sizeof stored);  // the link word is never poisoned
      scribble(p, 0, stored ^ 0x10);           // decodes to q + 16: inside the slab, mid-object
      void* got = pool.allocate(48);
      std::fprintf(stderr, "handed out %p\n", got);
      (void)keep;
    });
    REQUIRE(r.aborted);
    const auto at = r.err.find("victim ");
    REQUIRE(at != std::string::npos);
    const std::string victim = r.err.substr(at + 7, r.err.find('\n', at) - at - 7);
    CHECK(r.err.find("free-list link of " + victim + " corrupted") != std::string::npos);
    CHECK(r.err.find("not an object boundary of its class") != std::string::npos);
    CHECK(r.err.find("handed out") == std::string::npos);
  }
}

TEST_CASE("hardened: objects freed into a bin from several slabs come back intact") {
  // The hit path checks a link against the popped object's slab and a freed pointer against the
  // head's slab; links and frees that cross slabs take the full check. Interleave two slabs.
  slab_resource pool({}, hardened());
  std::vector<unsigned char*> a, b;
  for (int i = 0; i < 4000; ++i) a.push_back(static_cast<unsigned char*>(pool.allocate(64)));
  for (std::size_t i = 0; i < a.size(); ++i) std::memset(a[i], static_cast<int>(i & 0xff), 64);
  // Free every 97th object first (objects spread over many slabs), then the rest.
  for (std::size_t i = 0; i < a.size(); i += 97) pool.deallocate(a[i], 64);
  for (std::size_t i = 0; i < a.size(); ++i)
    if (i % 97 != 0) {
      CHECK(filled(a[i], 64, static_cast<unsigned char>(i & 0xff)));
      pool.deallocate(a[i], 64);
    }
  for (int i = 0; i < 4000; ++i) b.push_back(static_cast<unsigned char*>(pool.allocate(64)));
  std::sort(b.begin(), b.end());
  CHECK(std::adjacent_find(b.begin(), b.end()) == b.end());
  for (auto* p : b) {
    CHECK(filled(p, 16, 0));  // link and tag cleared when handed out
    pool.deallocate(p, 64);
  }
  pool.check_invariants();
}

// 64-byte objects of 4 KiB slabs (16 objects each), grouped by slab: slabs that hold at least
// `least` of them, in address order.
std::vector<std::vector<void*>> by_slab(const std::vector<void*>& v, std::size_t least) {
  std::map<std::uintptr_t, std::vector<void*>> m;
  for (void* p : v) m[reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{4095}].push_back(p);
  std::vector<std::vector<void*>> out;
  for (auto& [s, objs] : m)
    if (objs.size() >= least) out.push_back(objs);
  return out;
}

// A link or a free that crosses into another slab is checked fully once (page map, header) and
// the slab remembered by the thread; later crossings into it skip those loads. What they still
// check: the boundary, the tail, the free-state tag.
TEST_CASE(
    "hardened: into a slab the thread validated before, a nudged link or a double free "
    "aborts") {
  for (int what : {0, 1}) {
    CAPTURE(what);
    const auto r = run_in_child([what] {
      slab_resource pool(std::pmr::pool_options{16, 0}, hardened());
      std::vector<void*> v;
      for (int i = 0; i < 64; ++i) v.push_back(pool.allocate(64));
      const auto slabs = by_slab(v, 3);
      REQUIRE(slabs.size() >= 2);
      void *a0 = slabs[0][0], *a1 = slabs[0][1], *b1 = slabs[1][0];
      pool.deallocate(a0, 64);
      pool.deallocate(b1, 64);  // crosses into b1's slab: validated, remembered
      pool.deallocate(a1, 64);  // and back: the bin is a1 -> b1 -> a0
      if (what == 0) {
        std::fprintf(stderr, "victim %s\n", ptr(a1).c_str());
        std::uint64_t stored = 0;
        std::memcpy(&stored, a1, sizeof stored);
        scribble(a1, 0, stored ^ 0x10);  // decodes to b1 + 16: the known slab, mid-object
        void* got = pool.allocate(64);
        std::fprintf(stderr, "handed out %p\n", got);
      } else {
        std::fprintf(stderr, "victim %s\n", ptr(b1).c_str());
        pool.deallocate(b1, 64);  // the head is in the other slab
        std::fprintf(stderr, "second free returned\n");
      }
    });
    REQUIRE(r.aborted);
    const auto at = r.err.find("victim ");
    REQUIRE(at != std::string::npos);
    const std::string victim = r.err.substr(at + 7, r.err.find('\n', at) - at - 7);
    if (what == 0) {
      CHECK(r.err.find("free-list link of " + victim + " corrupted") != std::string::npos);
      CHECK(r.err.find("not an object boundary of its class") != std::string::npos);
      CHECK(r.err.find("handed out") == std::string::npos);
    } else {
      CHECK(r.err.find("deallocate(" + victim + ", 64") != std::string::npos);
      CHECK(r.err.find("double free") != std::string::npos);
      CHECK(r.err.find("second free returned") == std::string::npos);
    }
  }
}

// A remembered slab that goes back upstream is forgotten: a link that still decodes to one of
// its object boundaries is refused (the slab's memory is not this resource's any more).
TEST_CASE("hardened: a link into a slab that went back upstream aborts, however well-formed") {
  const auto r = run_in_child([] {
    slab_resource pool(std::pmr::pool_options{16, 0}, hardened());
    std::vector<void*> v;
    for (int i = 0; i < 64; ++i) v.push_back(pool.allocate(64));
    const auto slabs = by_slab(v, 4);
    REQUIRE(slabs.size() >= 2);
    void *keep = slabs[0][0], *p = slabs[0][1], *q = slabs[0][2], *a = slabs[0][3];
    void* b = slabs[1][0];
    pool.deallocate(a, 64);
    pool.deallocate(b, 64);  // b's slab validated and remembered
    for (void* x : v)
      if (x != keep && x != p && x != q && x != a && x != b) pool.deallocate(x, 64);
    (void)pool.trim();  // b's slab, empty, goes back upstream; p's stays (keep, p, q live)
    pool.deallocate(q, 64);
    pool.deallocate(p, 64);  // the bin is p -> q
    std::fprintf(stderr, "victim %s\n", ptr(p).c_str());
    std::uint64_t stored = 0;
    std::memcpy(&stored, p, sizeof stored);
    scribble(p, 0,
             stored ^ reinterpret_cast<std::uintptr_t>(q) ^ reinterpret_cast<std::uintptr_t>(b));
    void* got = pool.allocate(64);  // p, whose link now decodes to b exactly
    std::fprintf(stderr, "handed out %p\n", got);
    (void)pool.allocate(64);
  });
  REQUIRE(r.aborted);
  const auto at = r.err.find("victim ");
  REQUIRE(at != std::string::npos);
  const std::string victim = r.err.substr(at + 7, r.err.find('\n', at) - at - 7);
  CHECK(r.err.find("free-list link of " + victim + " corrupted") != std::string::npos);
  CHECK(r.err.find("handed out") == std::string::npos);
}

TEST_CASE("hardened: a write over the free-state tag aborts when the object is handed out") {
  const auto r = run_in_child([] {
    slab_resource pool({}, hardened());
    void* p = pool.allocate(32);
    pool.deallocate(p, 32);
    std::fprintf(stderr, "victim %s\n", ptr(p).c_str());
    scribble(p, 8, 0x1234);
    (void)pool.allocate(32);
  });
  REQUIRE(r.aborted);
  const auto at = r.err.find("victim ");
  REQUIRE(at != std::string::npos);
  const std::string victim = r.err.substr(at + 7, r.err.find('\n', at) - at - 7);
  CHECK(r.err.find("free-state tag of " + victim + " corrupted (use after free?)") !=
        std::string::npos);
}

TEST_CASE("hardened + zero_on_free: a write anywhere in a free object is detected") {
  const auto r = run_in_child([] {
    slab_resource pool({}, hardened(true, true));
    auto* p = static_cast<char*>(pool.allocate(200));
    pool.deallocate(p, 200);
    scribble(p, 120, 1);
    (void)pool.allocate(200);
  });
  CHECK(r.aborted);
  CHECK(r.err.find("written after it was freed, at offset 120") != std::string::npos);
  // And an allocation comes back zeroed.
  slab_resource pool({}, hardened(true, true));
  auto* p = static_cast<unsigned char*>(pool.allocate(200));
  std::memset(p, 0xee, 200);
  pool.deallocate(p, 200);
  auto* q = static_cast<unsigned char*>(pool.allocate(200));
  CHECK(filled(q, 200, 0));
  pool.deallocate(q, 200);
}

TEST_CASE("hardened: a double free aborts naming the pointer, on every path") {
  for (bool cache : {true, false})
    for (std::size_t bytes : {std::size_t{8}, std::size_t{64}, std::size_t{3000}}) {
      CAPTURE(cache);
      CAPTURE(bytes);
      const auto r = run_in_child([cache, bytes] {
        slab_resource pool({}, hardened(cache));
        void* keep = pool.allocate(bytes);
        void* p = pool.allocate(bytes);
        std::fprintf(stderr, "victim %s\n", ptr(p).c_str());
        pool.deallocate(p, bytes);
        void* other = pool.allocate(bytes * 2);  // some traffic in between
        pool.deallocate(other, bytes * 2);
        pool.deallocate(p, bytes);
        std::fprintf(stderr, "second free returned\n");
        (void)keep;
      });
      CHECK(r.aborted);
      const auto at = r.err.find("victim ");
      REQUIRE(at != std::string::npos);
      const std::string victim = r.err.substr(at + 7, r.err.find('\n', at) - at - 7);
      CHECK(r.err.find("deallocate(" + victim + ", " + std::to_string(bytes)) != std::string::npos);
      CHECK(r.err.find("double free") != std::string::npos);
      CHECK(r.err.find("second free returned") == std::string::npos);
    }
}

TEST_CASE("hardened: a pointer of another resource, or freed with the wrong size, aborts") {
  const auto r = run_in_child([] {
    slab_resource a({}, hardened()), b({}, hardened());
    void* p = a.allocate(64);
    b.deallocate(p, 64);
  });
  CHECK(r.aborted);
  CHECK(r.err.find("not in a slab of this resource") != std::string::npos);
  const auto r2 = run_in_child([] {
    slab_resource a({}, hardened());
    void* p = a.allocate(64);
    a.deallocate(p, 512);
  });
  CHECK(r2.aborted);
  CHECK(r2.err.find("hardened") != std::string::npos);
  const auto r3 = run_in_child([] {
    slab_resource a({}, hardened());
    auto* p = static_cast<char*>(a.allocate(64));
    a.deallocate(p + 16, 48);  // interior pointer
  });
  CHECK(r3.aborted);
  CHECK(r3.err.find("hardened") != std::string::npos);
}

// A pointer at an object boundary of a live slab that the slab has never handed out (its
// untouched tail) is no live allocation: checked mode catches it with its bitmap, hardened mode
// by the slab's tail — on the thread-cache hit path (the bin's head in the same slab), with an
// empty bin, and with no thread cache.
TEST_CASE("hardened: a pointer into a slab's never-handed-out tail aborts naming it") {
  for (int path : {0, 1, 2}) {
    CAPTURE(path);
    const auto r = run_in_child([path] {
      slab_resource pool({}, hardened(path != 2));
      // 64 B: 64 KiB slabs of 1023 objects; the first refill takes the first 8 (slow start).
      auto* p = static_cast<char*>(pool.allocate(64));
      std::vector<void*> drained;
      if (path == 1)  // empty the bin: the free finds no head to compare with
        while (pool.stats().cached_objects > 0) drained.push_back(pool.allocate(64));
      char* q = p + 64 * 512;  // same slab, past the tail
      REQUIRE(((reinterpret_cast<std::uintptr_t>(p) ^ reinterpret_cast<std::uintptr_t>(q)) >> 16) ==
              0);
      std::fprintf(stderr, "untouched %s\n", ptr(q).c_str());
      pool.deallocate(q, 64);
      std::fprintf(stderr, "free returned\n");
    });
    CHECK(r.aborted);
    const auto at = r.err.find("untouched ");
    REQUIRE(at != std::string::npos);
    const std::string q = r.err.substr(at + 10, r.err.find('\n', at) - at - 10);
    CHECK(r.err.find("deallocate(" + q + ", 64") != std::string::npos);
    CHECK(r.err.find("never handed it out") != std::string::npos);
    CHECK(r.err.find("free returned") == std::string::npos);
  }
}

TEST_CASE("hardened: randomised model — contents kept, no overlap, accounting, invariants") {
  const unsigned s0 = seed();
  for (int variant = 0; variant < 4; ++variant) {
    const bool cache = variant % 2 == 0, zero = variant >= 2;
    CAPTURE(variant);
    std::mt19937_64 rng(s0 * 7919u + static_cast<unsigned>(variant));
    slab_resource pool(std::pmr::pool_options{0, 4096}, hardened(cache, zero));
    struct block {
      std::size_t bytes, alignment;
      unsigned char fill;
    };
    std::map<std::uintptr_t, block> live;
    std::size_t small = 0;
    for (int op = 0; op < 60000; ++op) {
      if (live.empty() || rng() % 100 < 55) {
        const std::size_t bytes = rng() % 8 == 0 ? 1 + rng() % 8000 : 1 + rng() % 300;
        const std::size_t alignment = std::size_t{1} << (rng() % 7);
        auto* p = static_cast<unsigned char*>(pool.allocate(bytes, alignment));
        const auto a = reinterpret_cast<std::uintptr_t>(p);
        REQUIRE(a % alignment == 0);
        if (zero && slab_resource::size_class(bytes, alignment) >= 0 &&
            bytes <= pool.options().largest_required_pool_block)
          REQUIRE(filled(p, bytes, 0));
        auto next = live.lower_bound(a);
        if (next != live.end()) REQUIRE(a + bytes <= next->first);
        if (next != live.begin()) {
          auto prev = std::prev(next);
          REQUIRE(prev->first + prev->second.bytes <= a);
        }
        const auto fill = static_cast<unsigned char>(rng());
        std::memset(p, fill, bytes);
        live[a] = {bytes, alignment, fill};
        const int c = slab_resource::size_class(bytes, alignment);
        if (c >= 0 && slab_resource::class_size(c) <= pool.options().largest_required_pool_block)
          ++small;
      } else {
        auto it = live.begin();
        std::advance(it, static_cast<long>(rng() % std::min<std::size_t>(live.size(), 64)));
        auto* p = reinterpret_cast<unsigned char*>(it->first);
        REQUIRE(filled(p, it->second.bytes, it->second.fill));
        const int c = slab_resource::size_class(it->second.bytes, it->second.alignment);
        if (c >= 0 && slab_resource::class_size(c) <= pool.options().largest_required_pool_block)
          --small;
        pool.deallocate(p, it->second.bytes, it->second.alignment);
        live.erase(it);
      }
      if (op % 5000 == 0) {
        pool.check_invariants();
        REQUIRE(pool.stats().objects_in_use == small);
      }
    }
    for (auto& [a, b] : live) pool.deallocate(reinterpret_cast<void*>(a), b.bytes, b.alignment);
    pool.check_invariants();
    CHECK(pool.stats().objects_in_use == 0);
    CHECK(pool.stats().large_objects == 0);
  }
}

TEST_CASE("hardened: 8-byte requests take 16-byte objects (room for the link and the tag)") {
  slab_resource pool({}, hardened());
  void* p = pool.allocate(8, 8);
  const auto s = pool.stats();
  REQUIRE(s.classes.size() == 1);
  CHECK(s.classes[0].object_size == 16);
  pool.deallocate(p, 8, 8);
}

TEST_CASE("hardened: cross-thread frees, threads hand objects over (remote frees, overflow)") {
  slab_resource_options o = hardened();
  o.remote_queue_capacity = 2;  // the overflow stacks take part
  o.caches = 4;
  slab_resource pool({}, o);
  constexpr int threads = 4, rounds = 3000;
  std::mutex m;
  std::vector<std::pair<void*, std::size_t>> handed;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t) + 1);
      for (int i = 0; i < rounds; ++i) {
        const std::size_t bytes = 8 + rng() % 500;
        auto* p = static_cast<unsigned char*>(pool.allocate(bytes));
        std::memset(p, t + 1, bytes);
        std::pair<void*, std::size_t> mine{p, bytes}, theirs{nullptr, 0};
        {
          std::lock_guard lock(m);
          handed.push_back(mine);
          if (handed.size() > 8) {
            theirs = handed[rng() % handed.size()];
            handed.erase(std::find(handed.begin(), handed.end(), theirs));
          }
        }
        if (theirs.first) {
          auto* q = static_cast<unsigned char*>(theirs.first);
          REQUIRE(filled(q, theirs.second, q[0]));
          pool.deallocate(theirs.first, theirs.second);
        }
      }
      (void)pool.trim();
    });
  for (auto& t : ts) t.join();
  for (auto& [p, n] : handed) pool.deallocate(p, n);
  pool.check_invariants();
  CHECK(pool.stats().objects_in_use == 0);
}

// Under the sanitizers too: their malloc (clang 14's ASan allocator has no fork handlers) is
// made safe in the children by a fork_gate (tests/support.hpp): the threads hold it but for their
// loops, whose bookkeeping is fixed arrays (checked: no system malloc there), every CPU's core
// cache exists before the first fork, and the pool sits on the global page resource (no system
// malloc under its calls). The child's checks are its exit code.
TEST_CASE("hardened: fork while other threads allocate; the child allocates and frees") {
  slab_resource pool({}, hardened());
  bsalloc_test::fork_gate gate;
  bsalloc_test::on_every_cpu([&] { pool.deallocate(pool.allocate(64), 64); });
  std::atomic<bool> stop{false};
  std::atomic<int> started{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; ++t)
    ts.emplace_back([&, t] {
      std::array<std::pair<void*, std::size_t>, 101> v;
      std::size_t n = 0;
      const bsalloc_test::fork_gate::scope held(gate);  // but for the loop below
      started.fetch_add(1);
      pool.deallocate(pool.allocate(64, 8), 64, 8);             // this thread's cache
      const bsalloc_test::fork_gate::ungated no_malloc(&gate);  // checked (support.hpp)
      for (unsigned i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        const std::size_t bytes = 16 + (i * 37 + static_cast<unsigned>(t)) % 700;
        v[n++] = {pool.allocate(bytes, 8), bytes};
        if (n == v.size()) {
          for (auto& [p, b] : v) pool.deallocate(p, b, 8);
          n = 0;
        }
      }
      for (std::size_t k = 0; k < n; ++k) pool.deallocate(v[k].first, v[k].second, 8);
    });
  while (started.load() < 2) std::this_thread::yield();  // no fork meets a thread's start
  int failed = 0;
  for (int f = 0; f < 10; ++f) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    const pid_t pid = gate.fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::alarm(10);
      bsalloc_test::child_body([&] {
        std::array<void*, 5000> v;
        for (void*& p : v) p = pool.allocate(64);
        for (void* p : v) pool.deallocate(p, 64);
        // Every invariant holds in the child, S3 (objects out of slabs == objects the slabs
        // lent) too: a fork that cut a parent thread's refill or flush in two left the count off,
        // and the child handler recounts it (slab_state::recount_after_fork).
        pool.check_invariants();  // throws if broken: the child's failure
      });
    }
    int status = 0;
    REQUIRE(bsalloc_test::wait_child(pid, status) == pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
  }
  stop = true;
  for (auto& t : ts) t.join();
  CHECK(failed == 0);
  CHECK(bsalloc_test::fork_gate::ungated_calls() == 0);  // the gate's premise (support.hpp)
  pool.check_invariants();
  CHECK(pool.stats().objects_in_use == 0);
}
