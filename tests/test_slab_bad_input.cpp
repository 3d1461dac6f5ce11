// SPDX-License-Identifier: Apache-2.0
// slab_resource: the bad-input contract on every path, the conformance findings (upstream calls
// serialised, requests no class serves forwarded, max_blocks_per_chunk an upper bound), the
// large path's out-of-band records and trim()'s count. Each case names the README row it backs.
#include <bsalloc/slab_resource.hpp>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory_resource>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

using bsalloc::page_resource;
using bsalloc::slab_resource;
using bsalloc::slab_resource_options;
using bsalloc_test::run_in_child;

namespace {

constexpr std::size_t size_max = std::numeric_limits<std::size_t>::max();

slab_resource_options knobs(bool checked, bool thread_cache = true) {
  slab_resource_options o;
  o.checked = checked;
  o.thread_cache = thread_cache;
  return o;
}

// An upstream that is not thread-safe and says so when two calls overlap; it records what it
// was asked for. Memory from new_delete_resource (which honours alignment).
class watching_upstream final : public std::pmr::memory_resource {
 public:
  std::atomic<int> in_flight{0};
  std::atomic<bool> overlapped{false};
  std::size_t last_bytes = 0, last_alignment = 0;  // written inside the (serialised) calls
  std::size_t calls = 0;
  bool fill = false;  // fill each block with 0xAB and check, when it comes back, it still is

 private:
  struct scope {
    watching_upstream& w;
    explicit scope(watching_upstream& u) : w(u) {
      if (w.in_flight.fetch_add(1) != 0) w.overlapped = true;
      for (int i = 0; i < 200; ++i) std::this_thread::yield();  // widen the window
    }
    ~scope() { w.in_flight.fetch_sub(1); }
  };
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    scope s(*this);
    ++calls;
    last_bytes = bytes;
    last_alignment = alignment;
    // More than any address space here: refused as an upstream does (the sanitizers' operator
    // new would abort instead of throwing).
    if (bytes > (std::size_t{1} << 40)) throw std::bad_alloc();
    void* p = std::pmr::new_delete_resource()->allocate(bytes, alignment);
    if (fill) std::memset(p, 0xAB, bytes);
    return p;
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    scope s(*this);
    ++calls;
    last_bytes = bytes;
    last_alignment = alignment;
    if (fill) {
      const auto* b = static_cast<const unsigned char*>(p);
      for (std::size_t i = 0; i < bytes; ++i)
        if (b[i] != 0xAB) {
          touched = true;
          break;
        }
    }
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }

 public:
  bool touched = false;  // a block came back with a byte changed
};

}  // namespace

// README row: size overflow.
TEST_CASE("sizes near SIZE_MAX throw bad_alloc for every alignment, checked or not") {
  for (bool checked : {false, true}) {
    watching_upstream watching;
    for (std::pmr::memory_resource* up :
         {static_cast<std::pmr::memory_resource*>(&bsalloc::global_page_resource()),
          static_cast<std::pmr::memory_resource*>(&watching)}) {
      slab_resource r(std::pmr::pool_options{}, knobs(checked), up);
      void* warm = r.allocate(64);  // a warm thread cache too
      for (std::size_t a = 1; a <= 8192; a *= 2)
        for (std::size_t bytes :
             {size_max, size_max - 1, size_max - 15, size_max - a + 1, size_max / 2 + 1}) {
          CAPTURE(bytes);
          CAPTURE(a);
          CHECK_THROWS_AS((void)r.allocate(bytes, a), std::bad_alloc);
        }
      CHECK_THROWS_AS((void)r.allocate(size_max), std::bad_alloc);
      r.deallocate(warm, 64);
      CHECK(r.stats().large_objects == 0);
      r.check_invariants();
    }
  }
  for (std::size_t a = 1; a <= 8192; a *= 2) {
    CHECK(slab_resource::size_class(size_max, a) == -1);
    CHECK(slab_resource::size_class(size_max - a + 1, a) == -1);
  }
}

// README row: alignment not a power of two (allocate and deallocate, every path).
TEST_CASE("an alignment that is not a power of two throws invalid_argument on every path") {
  for (bool checked : {false, true})
    for (bool cache : {true, false}) {
      CAPTURE(checked);
      CAPTURE(cache);
      slab_resource r(std::pmr::pool_options{}, knobs(checked, cache),
                      std::pmr::new_delete_resource());
      for (int warm = 0; warm < 2; ++warm) {  // cold, then with a warm cache for every size
        for (std::size_t bytes : {std::size_t{0}, std::size_t{24}, std::size_t{2000},
                                  std::size_t{40000}, std::size_t{100000}})
          for (std::size_t a : {0, 3, 5, 6, 12, 15, 24, 48, 100, 3000}) {
            CAPTURE(bytes);
            CAPTURE(a);
            volatile std::size_t va = a;  // not a constant the compiler could see
            CHECK_THROWS_AS((void)r.allocate(bytes, va), std::invalid_argument);
            void* p = r.allocate(bytes, 8);
            CHECK_THROWS_AS(r.deallocate(p, bytes, va), std::invalid_argument);
            r.deallocate(p, bytes, 8);
          }
      }
      r.check_invariants();
    }
}

TEST_CASE("a deallocate with a bad alignment names the resource, the pointer and the problem") {
  for (bool checked : {false, true}) {
    slab_resource r(std::pmr::pool_options{}, knobs(checked), std::pmr::new_delete_resource());
    void* p = r.allocate(24, 8);
    std::string what;
    try {
      r.deallocate(p, 24, 12);
    } catch (const std::invalid_argument& e) {
      what = e.what();
    }
    CHECK(what.find(fmt::format("slab_resource {}", static_cast<const void*>(&r))) !=
          std::string::npos);
    CHECK(what.find(fmt::format("deallocate({}, 24, 12)", p)) != std::string::npos);
    CHECK(what.find("alignment 12 is not a power of two") != std::string::npos);
    r.deallocate(p, 24, 8);  // nothing was lost
    r.check_invariants();
  }
}

// README row: size or alignment mismatch (checked mode), within one class too.
TEST_CASE("checked mode names what differs: size or alignment, large blocks included") {
  auto expect = [](void (*bad)(slab_resource&), const char* problem) {
    const auto result = run_in_child([&] {
      slab_resource res(std::pmr::pool_options{}, knobs(true), std::pmr::new_delete_resource());
      bad(res);
    });
    CHECK_MESSAGE(result.aborted, problem);
    CHECK_MESSAGE(result.err.find(problem) != std::string::npos, result.err);
  };
  expect(
      [](slab_resource& r) {
        void* p = r.allocate(100000, 8192);
        r.deallocate(p, 100000, 16);
      },
      "alignment does not match the allocation (alignment 8192");
  expect(
      [](slab_resource& r) {
        void* p = r.allocate(100, 8192);
        r.deallocate(p, 100, 16);
      },
      "alignment does not match the allocation (alignment 8192");
  expect(
      [](slab_resource& r) {
        void* p = r.allocate(57);
        r.deallocate(p, 64);  // the same class: seen all the same
      },
      "size does not match the allocation (57 bytes)");
  expect(
      [](slab_resource& r) {
        void* p = r.allocate(64, 8);
        r.deallocate(p, 64, 16);  // the same class
      },
      "alignment does not match the allocation (alignment 8)");
  expect(
      [](slab_resource& r) {
        void* p = r.allocate(100000, 16);
        r.deallocate(p, 100000, 4096);
      },
      "alignment does not match the allocation (alignment 16");
}

// Conformance: requests no class can serve go to the upstream, which decides.
TEST_CASE("requests no class serves are forwarded to the upstream as asked") {
  watching_upstream up;
  slab_resource r(std::pmr::pool_options{}, slab_resource_options{}, &up);
  CHECK_THROWS_AS((void)r.allocate(size_max / 2 + 1, 16), std::bad_alloc);
  CHECK(up.last_bytes == size_max / 2 + 1);  // the upstream was asked, and threw
  void* p = r.allocate(100000, 64);
  CHECK(up.last_bytes == 100000);
  CHECK(up.last_alignment == 64);
  r.deallocate(p, 100000, 64);
  CHECK(up.last_bytes == 100000);
  CHECK(up.last_alignment == 64);
}

// P4: the large path writes nothing into the block (no trailer): the upstream gets back exactly
// what it handed out, untouched, with the size and alignment asked for.
TEST_CASE("the large path writes nothing into the user's block") {
  watching_upstream up;
  up.fill = true;
  for (bool checked : {false, true}) {
    slab_resource r(std::pmr::pool_options{}, knobs(checked), &up);
    std::vector<void*> blocks;
    for (std::size_t bytes : {70000, 100000, 65537, 1 << 20}) blocks.push_back(r.allocate(bytes));
    blocks.push_back(r.allocate(64, 8192));
    CHECK(r.stats().large_objects == 5);
    r.check_invariants();
    r.deallocate(blocks[0], 70000);
    r.deallocate(blocks[4], 64, 8192);
    CHECK(r.stats().large_objects == 3);
    r.release();  // the others: release() still finds them
    CHECK(r.stats().large_objects == 0);
    CHECK(r.stats().bytes_reserved == 0);
  }
  CHECK_FALSE(up.touched);
}

TEST_CASE("many large blocks: records kept out of band, found again in any order") {
  slab_resource r(std::pmr::new_delete_resource());
  std::vector<std::pair<void*, std::size_t>> blocks;
  for (std::size_t i = 0; i < 3000; ++i) {
    const std::size_t bytes = 65537 + i * 13;
    blocks.emplace_back(r.allocate(bytes, std::size_t{16} << (i % 5)), bytes);
  }
  r.check_invariants();
  for (std::size_t i = 0; i < blocks.size(); i += 2)
    r.deallocate(blocks[i].first, blocks[i].second, std::size_t{16} << (i % 5));
  r.check_invariants();
  CHECK(r.stats().large_objects == 1500);
  for (std::size_t i = 1; i < blocks.size(); i += 2)
    r.deallocate(blocks[i].first, blocks[i].second, std::size_t{16} << (i % 5));
  CHECK(r.stats().large_objects == 0);
  r.check_invariants();
}

// Conformance: upstream calls are serialised unless the upstream is known to be thread-safe.
TEST_CASE("a non-thread-safe upstream is never called from two threads at once") {
  watching_upstream up;
  {
    slab_resource r(std::pmr::pool_options{}, slab_resource_options{}, &up);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&r, t] {
        std::vector<std::pair<void*, std::size_t>> live;
        for (int i = 0; i < 3000; ++i) {
          const std::size_t bytes = i % 7 == 0 ? 70000 + static_cast<std::size_t>(t) * 8
                                               : 16 + static_cast<std::size_t>(i * 97 % 16000);
          live.emplace_back(r.allocate(bytes), bytes);
          if (live.size() > 64) {
            for (auto& [p, n] : live) r.deallocate(p, n);
            live.clear();
            (void)r.trim();
          }
        }
        for (auto& [p, n] : live) r.deallocate(p, n);
      });
    for (auto& t : threads) t.join();
  }
  CHECK(up.calls > 100);
  CHECK_FALSE(up.overlapped.load());
  // The standard's own non-thread-safe resources as upstream (TSan sees any race here).
  std::pmr::monotonic_buffer_resource mono;
  std::pmr::unsynchronized_pool_resource unsync;
  for (std::pmr::memory_resource* raw : {static_cast<std::pmr::memory_resource*>(&mono),
                                         static_cast<std::pmr::memory_resource*>(&unsync)}) {
    slab_resource r(raw);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&r] {
        for (int i = 0; i < 2000; ++i) {
          const std::size_t bytes = 8 + static_cast<std::size_t>(i * 131 % 20000);
          void* p = r.allocate(bytes);
          std::memset(p, 1, bytes);
          r.deallocate(p, bytes);
          if (i % 100 == 0) (void)r.trim();
        }
      });
    for (auto& t : threads) t.join();
    r.check_invariants();
  }
}

// Conformance: max_blocks_per_chunk is an upper bound.
TEST_CASE("max_blocks_per_chunk is honoured as an upper bound and reported") {
  {
    slab_resource r(std::pmr::pool_options{1, 1}, std::pmr::new_delete_resource());
    CHECK(r.options().max_blocks_per_chunk == 1);
    std::vector<void*> v;
    for (int i = 0; i < 3; ++i) v.push_back(r.allocate(8, 8));
    const auto s = r.stats();
    REQUIRE(!s.classes.empty());
    CHECK(s.classes[0].slabs == 3);  // one object per slab
    CHECK(s.classes[0].slab_bytes == bsalloc::page_size);
    for (void* p : v) r.deallocate(p, 8, 8);
    r.check_invariants();
  }
  for (bool checked : {false, true})
    for (std::size_t asked : {1, 2, 5, 16, 100, 1000, 5000}) {
      slab_resource r(std::pmr::pool_options{asked, 0}, knobs(checked),
                      std::pmr::new_delete_resource());
      CAPTURE(asked);
      CHECK(r.options().max_blocks_per_chunk <= asked);
      CHECK(r.options().max_blocks_per_chunk >= 1);
      std::vector<void*> v;
      for (std::size_t i = 0; i < 3 * asked + 7; ++i) v.push_back(r.allocate(24));
      for (std::size_t bytes : {100, 3000, 30000}) r.deallocate(r.allocate(bytes), bytes);
      r.check_invariants();
      for (void* p : v) r.deallocate(p, 24);
    }
  slab_resource dflt;
  CHECK(dflt.options().max_blocks_per_chunk > 5000);
}

// Defect 7: trim() returns exactly what it gave back.
TEST_CASE("trim() counts the slabs freed while flushing the caller's cache") {
  page_resource pages;
  slab_resource r(&pages);
  std::vector<void*> v;
  for (int i = 0; i < 4000; ++i) v.push_back(r.allocate(64));
  for (void* p : v) r.deallocate(p, 64);
  const std::size_t before = r.stats().bytes_reserved;
  const std::size_t given = r.trim();
  const std::size_t after = r.stats().bytes_reserved;
  CHECK(given == before - after);
  CHECK(after == 0);
  // The page_resource upstream was trimmed too: nothing free stays resident.
  CHECK(pages.stats().dirty_free_bytes == 0);
}

// README row: bad construction arguments.
TEST_CASE("bad construction arguments throw invalid_argument") {
  CHECK_THROWS_AS(slab_resource(static_cast<std::pmr::memory_resource*>(nullptr)),
                  std::invalid_argument);
  slab_resource_options o;
  o.remote_queue_capacity = 0;
  CHECK_THROWS_AS(slab_resource(std::pmr::pool_options{}, o, std::pmr::new_delete_resource()),
                  std::invalid_argument);
  o = {};
  o.min_slab_bytes = 3000;
  CHECK_THROWS_AS(slab_resource(std::pmr::pool_options{}, o, std::pmr::new_delete_resource()),
                  std::invalid_argument);
}

// README row: a large block freed with the wrong size, unchecked: the recorded size goes upstream.
TEST_CASE("unchecked: a large block freed with a wrong size goes upstream as it was allocated") {
  watching_upstream up;
  slab_resource r(std::pmr::pool_options{}, knobs(false), &up);
  void* p = r.allocate(100000, 32);
  r.deallocate(p, 90000, 32);
  CHECK(up.last_bytes == 100000);
  CHECK(up.last_alignment == 32);
  CHECK(r.stats().large_objects == 0);
}

// Found by fuzz_checked_misuse (docs/fuzzing.md, F1): a large block freed twice after the
// upstream gave its memory to a new slab was blamed on the size.
TEST_CASE("checked: a double free of a large block whose memory became a slab is named as such") {
  const auto result = run_in_child([] {
    bsalloc::page_resource pages;  // a fresh upstream, so the reuse is deterministic
    slab_resource res(std::pmr::pool_options{}, knobs(true), &pages);
    void* big = res.allocate(66315, 1);  // above every class: a block from the upstream
    res.deallocate(big, 66315, 1);
    void* small = res.allocate(1100, 8);  // a new slab for its class, at big's address
    (void)small;
    res.deallocate(big, 66315, 1);
  });
  CHECK(result.aborted);
  CHECK_MESSAGE(result.err.find("not a live allocation") != std::string::npos, result.err);
}
