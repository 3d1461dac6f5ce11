// SPDX-License-Identifier: Apache-2.0
// object_pool's per-thread front: many pools per thread, frees on other threads, thread exit
// with cached slots, the last handle dropped while another thread caches slots.
#include <bsalloc/object_pool.hpp>

#include <unistd.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <memory_resource>
#include <random>
#include <thread>
#include <vector>

#include <sys/wait.h>

#include <doctest/doctest.h>

#include "support.hpp"

using bsalloc::object_pool;
using bsalloc::object_pool_options;

namespace {

// Thread-safe: counts what is outstanding upstream.
class counting_resource : public std::pmr::memory_resource {
 public:
  std::atomic<long> outstanding{0};

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    void* p = bsalloc::global_page_resource().allocate(bytes, alignment);
    ++outstanding;
    return p;
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    --outstanding;
    bsalloc::global_page_resource().deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
};

struct item {
  std::uint64_t a = 0, b = 0, c = 0;
  explicit item(std::uint64_t v = 0) : a(v), b(~v), c(v * 3) {}
  bool intact(std::uint64_t v) const { return a == v && b == ~v && c == v * 3; }
};
using pool_t = object_pool<item>;

// The thread cache is off in checked mode (the sanitizer builds' default): these tests use it.
object_pool_options unchecked(std::pmr::memory_resource* up) {
  return object_pool_options{.upstream = up, .checked = false};
}

std::uint64_t cached_here() {
  return bsalloc::detail::pool_cache_thread_slots();
}

std::uint64_t seed() {
  return bsalloc_test::test_seed("test_object_pool_cache");
}

}  // namespace

TEST_CASE("the thread cache serves make/destroy; stats and trim see the caller's cache as free") {
  counting_resource up;
  {
    pool_t pool(unchecked(&up));
    const std::uint64_t before = cached_here();
    std::vector<pool_t::pointer> v;
    for (std::uint64_t i = 0; i < 100; ++i) v.push_back(pool.make(i));
    v.resize(40);
    CHECK(cached_here() > before);  // frees went to this thread's cache
    const auto st = pool.stats();   // flushes it
    CHECK(st.objects_in_use == 40);
    CHECK(st.peak_objects == 100);
    CHECK(cached_here() == before);
    pool.check_invariants();
    for (std::uint64_t i = 0; i < 40; ++i) CHECK(v[i]->intact(i));
  }
  CHECK(up.outstanding == 0);
}

TEST_CASE("checked and null_lock pools have no thread cache") {
  const std::uint64_t before = cached_here();
  object_pool<item> checked(object_pool_options{.checked = true});
  object_pool<item, bsalloc::null_lock> single(unchecked(nullptr));
  for (int round = 0; round < 3; ++round) {
    std::vector<pool_t::pointer> a;
    std::vector<object_pool<item, bsalloc::null_lock>::pointer> b;
    for (int i = 0; i < 50; ++i) {
      a.push_back(checked.make());
      b.push_back(single.make());
    }
  }
  CHECK(cached_here() == before);
  CHECK(checked.stats().objects_in_use == 0);
  CHECK(single.stats().objects_in_use == 0);
}

TEST_CASE("many pools per thread: random access over 80 live pools; all memory comes back") {
  std::mt19937_64 rng(seed());
  counting_resource up;
  {
    std::vector<pool_t> pools;
    for (int i = 0; i < 80; ++i) pools.emplace_back(unchecked(&up));
    std::vector<std::vector<pool_t::pointer>> live(pools.size());
    for (int op = 0; op < 200000; ++op) {
      const std::size_t k = rng() % pools.size();
      if (live[k].size() < 8 && rng() % 2) {
        live[k].push_back(pools[k].make(static_cast<std::uint64_t>(op)));
      } else if (!live[k].empty()) {
        const auto& p = live[k].back();
        REQUIRE(pools[k].owns(p.get()));
        live[k].pop_back();
      }
    }
    for (std::size_t k = 0; k < pools.size(); ++k) {
      CHECK(pools[k].stats().objects_in_use == live[k].size());
      pools[k].check_invariants();
    }
    // The thread's cache is bounded per pool.
    CHECK(cached_here() <= pools.size() * 64);
  }
  CHECK(up.outstanding == 0);  // each pool's last handle flushed this thread's cache
}

TEST_CASE("pools created and dropped one after another: the thread keeps nothing of them") {
  counting_resource up;
  for (int round = 0; round < 2000; ++round) {
    {
      pool_t pool(unchecked(&up));
      std::vector<pool_t::pointer> v;
      for (int i = 0; i < 20; ++i) v.push_back(pool.make());
      v.resize(5);
      pool_t* other = new pool_t(unchecked(&up));  // two live at once: slots are not all the same
      auto o = other->make();
      o.reset();
      delete other;  // its last handle: this thread's cache for it is flushed, it dies
      v.clear();
    }
    REQUIRE(up.outstanding == 0);
  }
  CHECK(cached_here() == 0);
}

TEST_CASE("objects freed on another thread while both threads cache") {
  counting_resource up;
  {
    pool_t pool(unchecked(&up));
    constexpr int rounds = 200, batch = 300;
    std::vector<pool_t::pointer> to_b, to_a;
    std::barrier sync(2);
    std::atomic<long> bad{0};
    std::thread b([&, handle = pool]() mutable {
      for (int r = 0; r < rounds; ++r) {
        sync.arrive_and_wait();  // A filled to_b
        std::vector<pool_t::pointer> mine;
        for (int i = 0; i < batch; ++i) mine.push_back(handle.make(std::uint64_t(i) + 1000));
        for (int i = 0; i < batch; ++i)
          if (!to_b[static_cast<std::size_t>(i)]->intact(std::uint64_t(i))) ++bad;
        to_b.clear();  // A's objects freed into B's cache
        to_a = std::move(mine);
        sync.arrive_and_wait();
      }
    });
    for (int r = 0; r < rounds; ++r) {
      for (int i = 0; i < batch; ++i) to_b.push_back(pool.make(std::uint64_t(i)));
      sync.arrive_and_wait();
      sync.arrive_and_wait();  // B filled to_a
      for (int i = 0; i < batch; ++i)
        if (!to_a[static_cast<std::size_t>(i)]->intact(std::uint64_t(i) + 1000)) ++bad;
      to_a.clear();  // B's objects freed into A's cache
    }
    b.join();  // B's cache went back at its exit
    CHECK(bad == 0);
    const auto st = pool.stats();
    CHECK(st.objects_in_use == 0);
    pool.check_invariants();
  }
  CHECK(up.outstanding == 0);
}

TEST_CASE("thread exit gives its cached slots back; its live objects stay") {
  counting_resource up;
  pool_t pool(unchecked(&up));
  std::vector<pool_t::pointer> kept;
  std::thread t([&, handle = pool]() mutable {
    std::vector<pool_t::pointer> v;
    for (std::uint64_t i = 0; i < 500; ++i) v.push_back(handle.make(i));
    for (std::size_t i = 0; i < 500; i += 2) kept.push_back(std::move(v[i]));
    v.clear();  // 250 freed: some cached by this thread, the rest past the cache's limit
  });
  t.join();
  CHECK(pool.stats().objects_in_use == 250);
  for (std::size_t i = 0; i < kept.size(); ++i) CHECK(kept[i]->intact(2 * i));
  pool.check_invariants();
  kept.clear();
  CHECK(pool.stats().objects_in_use == 0);
}

TEST_CASE("the last handle dropped while another thread's cache holds slots: nothing leaks") {
  counting_resource up;
  for (int variant = 0; variant < 2; ++variant) {
    auto pool = std::make_unique<pool_t>(unchecked(&up));
    pool_t::pointer last = pool->make(7);
    std::barrier sync(2);
    std::thread t([&, handle = *pool]() mutable {
      {
        std::vector<pool_t::pointer> v;
        for (int i = 0; i < 100; ++i) v.push_back(handle.make());
      }                                     // freed into this thread's cache
      handle = pool_t(unchecked(nullptr));  // a handle to another pool: none left to the first
      sync.arrive_and_wait();               // 1: the main thread drops the last handle
      sync.arrive_and_wait();               // 2
      if (variant == 1) last.reset();       // freeing into the closed pool flushes the cache
      sync.arrive_and_wait();               // 3
    });
    sync.arrive_and_wait();  // 1
    pool.reset();            // the last handle; this thread's cache flushed, t's still holds
    CHECK(up.outstanding > 0);
    sync.arrive_and_wait();  // 2
    sync.arrive_and_wait();  // 3
    if (variant == 1) {
      CHECK(!last);
      CHECK(up.outstanding == 0);  // t gave its cache back when it freed into the closed pool
    }
    t.join();
    last.reset();
    CHECK(up.outstanding == 0);  // t's exit flushed its cache: the pool is gone
  }
}

#ifdef BSALLOC_ASAN
TEST_CASE("AddressSanitizer: a slot in the thread cache is poisoned but for its link word") {
  pool_t pool(unchecked(nullptr));
  std::vector<item*> raw;
  for (int i = 0; i < 10; ++i) raw.push_back(pool.allocate());
  for (item* p : raw) CHECK(!__asan_address_is_poisoned(&p->c));
  for (item* p : raw) pool.deallocate(p);  // into this thread's cache
  CHECK(cached_here() > 0);
  for (item* p : raw) CHECK(__asan_address_is_poisoned(&p->c));
  item* again = pool.allocate();  // from the cache: unpoisoned whole
  CHECK(!__asan_address_is_poisoned(&again->c));
  pool.deallocate(again);
}
#endif

// Under the sanitizers too. clang 14's ASan allocator has no fork handlers: a child that mallocs
// while the other thread held one of its locks would hang (tests/support.hpp, fork_gate). So
// everything of the churning thread that calls the system malloc — its vector of pools, the
// pool registry's and its own first uses — happens before the first fork (`warm`); from then on
// it creates and drops pools over page resources only, and the forks catch it mid-creation with
// the pool registry's lock held, as in the normal build. The child's checks are its exit code.
TEST_CASE("fork while another thread creates and drops pools: the child uses pools") {
  std::atomic<bool> stop{false}, warm{false};
  std::thread churn([&] {
    std::vector<pool_t> pools;  // most of this thread's time in pool creation and death
    for (int i = 0; i < 64; ++i) pools.emplace_back(unchecked(nullptr));
    for (std::size_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      pools[i % 64] = pool_t(unchecked(nullptr));
      if (i % 64 == 0) pools[i % 64].make(std::uint64_t(i)).reset();
      if (i == 256) warm.store(true);
    }
  });
  while (!warm.load()) std::this_thread::yield();
  int failures = 0;
  for (int round = 0; round < 100; ++round) {
    const auto r = bsalloc_test::run_in_child([] {
      ::alarm(30);  // a deadlocked child ends, and counts as a failure, instead of hanging
      bsalloc_test::child_body([] {
        pool_t pool(unchecked(nullptr));
        std::vector<pool_t::pointer> v;
        for (std::uint64_t i = 0; i < 100; ++i) v.push_back(pool.make(i));
        for (std::uint64_t i = 0; i < 100; ++i)
          if (!v[i]->intact(i)) return 3;
        v.clear();
        if (pool.stats().objects_in_use != 0) return 4;
        return 0;
      });
    });
    if (!WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) ++failures;
  }
  stop = true;
  churn.join();
  CHECK(failures == 0);
}
