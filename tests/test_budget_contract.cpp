// SPDX-License-Identifier: Apache-2.0
// budget_resource's contract at its edges: a limit lowered below the bytes in use (B2), bad
// deallocations (refused, nothing changed), an upstream that refuses a deallocate, and handlers
// that read budgets — also from an allocation made under the budget registry's lock.
//
// This executable replaces the global operator new (malloc underneath): armed, it reports an
// out-of-memory to bsalloc's handler first, as bsalloc's malloc replacement does when its heap is
// exhausted, so that the handler runs inside whatever made the allocation.
#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/heap_walk.hpp>
#include <bsalloc/out_of_memory.hpp>
#include <bsalloc/page_resource.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <memory_resource>
#include <new>
#include <span>
#include <stdexcept>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

namespace {
thread_local bool t_report_on_new = false;  // the next operator new reports out-of-memory first
}  // namespace

void* operator new(std::size_t n) {
  if (t_report_on_new) {
    t_report_on_new = false;
    (void)bsalloc::detail::report_out_of_memory("slab_resource", "malloc (simulated)", nullptr, n,
                                                16, [] { return std::string("simulated\n"); });
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}

namespace {

std::string text_of(const std::invalid_argument& e) {
  return e.what();
}

/// new_delete_resource, but deallocate throws (as a page_resource does for a wrong size) while
/// `refuse` is set.
struct refusing_resource final : std::pmr::memory_resource {
  bool refuse = false;
  bool refuse_allocate = false;
  void* do_allocate(std::size_t n, std::size_t a) override {
    if (refuse_allocate) throw std::bad_alloc();
    return std::pmr::new_delete_resource()->allocate(n, a);
  }
  void do_deallocate(void* p, std::size_t n, std::size_t a) override {
    if (refuse) throw std::invalid_argument("refusing_resource: refused");
    std::pmr::new_delete_resource()->deallocate(p, n, a);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
};

}  // namespace

TEST_CASE(
    "budget_resource: a limit lowered below the bytes in use is legal; nothing new is served") {
  for (const std::size_t lease : {bsalloc::budget_resource::default_max_lease, std::size_t{0}}) {
    CAPTURE(lease);
    bsalloc::budget_resource b{"contract.low", 1000, std::pmr::new_delete_resource()};
    b.set_max_lease(lease);
    void* p1 = b.allocate(300, 8);
    void* p2 = b.allocate(300, 8);
    b.set_limit(400);  // 600 in use
    CHECK(b.in_use() == 600);
    CHECK_NOTHROW(b.check_invariants());
    CHECK_THROWS_AS((void)b.allocate(1, 8), std::bad_alloc);
    CHECK(b.in_use() == 600);
    b.deallocate(p1, 300, 8);  // 300 in use: under the limit again
    void* p3 = b.allocate(100, 8);
    CHECK_THROWS_AS((void)b.allocate(1, 8), std::bad_alloc);  // 400: at the limit
    CHECK_NOTHROW(b.check_invariants());
    // Lowered again, below; then a handler that allows the excess.
    b.set_limit(100);
    CHECK_NOTHROW(b.check_invariants());
    b.set_over_budget_handler([](const bsalloc::over_budget_info&) { return true; });
    void* p4 = b.allocate(50, 8);
    CHECK(b.in_use() == 450);
    CHECK_NOTHROW(b.check_invariants());
    CHECK(b.stats().refused == 2);
    CHECK(b.stats().over_limit == 1);
    b.deallocate(p4, 50, 8);
    b.deallocate(p3, 100, 8);
    b.deallocate(p2, 300, 8);
    CHECK(b.in_use() == 0);
    CHECK_NOTHROW(b.check_invariants());
  }
}

TEST_CASE("budget_resource: a deallocate of more than is in use is refused, nothing changed") {
  for (const std::size_t lease : {std::size_t{0}, bsalloc::budget_resource::default_max_lease}) {
    CAPTURE(lease);
    bsalloc::budget_resource a{"contract.a", 1 << 20, std::pmr::new_delete_resource()};
    bsalloc::budget_resource other{"contract.other", 1 << 20, std::pmr::new_delete_resource()};
    a.set_max_lease(lease);
    void* mine = a.allocate(100, 8);
    // Another budget's block over the same upstream, larger than a lease's cap (with leases the
    // check is made on the slow path only: docs/engine.md).
    const std::size_t n = std::size_t{64} << 10;
    void* foreign = other.allocate(n, 8);
    try {
      a.deallocate(foreign, n, 8);
      FAIL("a foreign deallocate was accepted");
    } catch (const std::invalid_argument& e) {
      const std::string m = text_of(e);
      CHECK(m.find("'contract.a'") != std::string::npos);
      CHECK(m.find(fmt::format("{}", static_cast<const void*>(foreign))) != std::string::npos);
      CHECK(m.find(std::to_string(n) + " bytes") != std::string::npos);
      CHECK(m.find("nothing changed") != std::string::npos);
    }
    CHECK(a.in_use() == 100);
    CHECK(a.count() == 1);
    CHECK_NOTHROW(a.check_invariants());
    other.deallocate(foreign, n, 8);  // still live: its owner frees it
    a.deallocate(mine, 100, 8);
    CHECK(a.in_use() == 0);
    CHECK(other.in_use() == 0);
    if (lease == 0) {  // exact counters: a second free of the same block is refused too
      void* q = a.allocate(16, 8);
      a.deallocate(q, 16, 8);
      CHECK_THROWS_AS(a.deallocate(q, 16, 8), std::invalid_argument);
      CHECK(a.count() == 0);
    }
  }
}

TEST_CASE("budget_resource: tracking checks the record and keeps it until the upstream accepts") {
  refusing_resource up;
  bsalloc::budget_resource b{"contract.tracked", 1 << 20, &up};
  b.set_tracking();
  void* p = b.allocate(200, 8);
  void* q = b.allocate(64, 8);
  // A size other than the recorded one: refused by the budget, before the upstream.
  try {
    b.deallocate(p, 100, 8);
    FAIL("a wrong size was accepted");
  } catch (const std::invalid_argument& e) {
    CHECK(text_of(e).find("does not match the allocation (200 bytes)") != std::string::npos);
    CHECK(text_of(e).find("'contract.tracked'") != std::string::npos);
  }
  // A pointer with no record (here: inside a block).
  void* inside = static_cast<char*>(p) + 8;
  CHECK_THROWS_WITH_AS(b.deallocate(inside, 8, 8),
                       doctest::Contains("not a live allocation of this budget"),
                       std::invalid_argument);
  // The upstream refuses: the record, the bytes and the count stay.
  up.refuse = true;
  CHECK_THROWS_WITH_AS(b.deallocate(p, 200, 8), "refusing_resource: refused",
                       std::invalid_argument);
  up.refuse = false;
  CHECK(b.allocations().size() == 2);
  CHECK(b.in_use() == 264);
  CHECK(b.count() == 2);
  CHECK_NOTHROW(b.check_invariants());
  b.deallocate(p, 200, 8);
  b.deallocate(q, 64, 8);
  CHECK(b.allocations().empty());
  CHECK(b.in_use() == 0);
  CHECK_THROWS_AS(b.deallocate(q, 64, 8), std::invalid_argument);  // a double free
}

TEST_CASE("budget_resource: an upstream that refuses a deallocate leaves the counts as they were") {
  for (const std::size_t lease : {bsalloc::budget_resource::default_max_lease, std::size_t{0}}) {
    CAPTURE(lease);
    refusing_resource up;
    bsalloc::budget_resource b{"contract.refused_free", 1 << 20, &up};
    b.set_max_lease(lease);
    void* small = b.allocate(100, 8);                   // a lease's fast path
    void* big = b.allocate(std::size_t{256} << 10, 8);  // past the lease cap: slow path
    up.refuse = true;
    CHECK_THROWS_AS(b.deallocate(small, 100, 8), std::invalid_argument);
    CHECK_THROWS_AS(b.deallocate(big, std::size_t{256} << 10, 8), std::invalid_argument);
    up.refuse = false;
    CHECK(b.in_use() == 100 + (std::size_t{256} << 10));
    CHECK(b.count() == 2);
    b.deallocate(big, std::size_t{256} << 10, 8);
    b.deallocate(small, 100, 8);
    CHECK(b.in_use() == 0);
    CHECK(b.count() == 0);
  }
}

namespace {
bsalloc::budget_resource* g_read_me = nullptr;
std::size_t g_seen_in_use = 0;
bool g_seen_in_report = false;
bool reading_handler(const bsalloc::out_of_memory_info&) {
  const auto snap = bsalloc::budget_report();
  g_seen_in_report = snap.find(g_read_me->name()) != nullptr;
  g_seen_in_use = g_read_me->in_use() + g_read_me->stats().count;
  (void)bsalloc::leak_report();
  void* p = g_read_me->allocate(10, 8);  // a budget may be used too
  g_read_me->deallocate(p, 10, 8);
  return false;
}
bool creating_handler(const bsalloc::out_of_memory_info&) {
  bsalloc::budget_resource made{"contract.made_in_handler", 1, std::pmr::new_delete_resource()};
  return false;
}
}  // namespace

TEST_CASE(
    "handlers may read budgets: over-budget and out-of-memory handlers call budget_report()") {
  bsalloc::budget_resource b{"contract.handlers", 100, std::pmr::new_delete_resource()};
  void* p = b.allocate(80, 8);
  std::size_t told = 0;
  b.set_over_budget_handler([&](const bsalloc::over_budget_info& i) {
    const auto snap = bsalloc::budget_report();
    const auto* s = snap.find("contract.handlers");
    told = s != nullptr ? s->in_use + i.budget.in_use() + i.budget.stats().count : 0;
    return false;
  });
  g_read_me = &b;
  g_seen_in_use = 0;
  const auto old = bsalloc::set_out_of_memory_handler(reading_handler);
  CHECK_THROWS_AS((void)b.allocate(50, 8), std::bad_alloc);  // both handlers run, then refused
  CHECK(told == 80 + 80 + 1);
  CHECK(g_seen_in_report);
  CHECK(g_seen_in_use == 80 + 1);
  // A fixed frame arena that runs out reports too.
  alignas(64) std::array<std::byte, 256> buf{};
  bsalloc::frame_arena arena{std::span{buf}};
  g_seen_in_report = false;
  CHECK_THROWS_AS((void)arena.allocate(1024, 8), std::bad_alloc);
  CHECK(g_seen_in_report);
  bsalloc::set_out_of_memory_handler(old);
  b.deallocate(p, 80, 8);
}

TEST_CASE("handlers may read budgets when called from an allocation under the registry lock") {
  // budget_report() allocates its result under the registry lock: with the allocation reporting
  // out-of-memory (as bsalloc's malloc replacement does on an exhausted heap), the handler runs
  // with the lock held by its thread. It must not deadlock on it.
  bsalloc::budget_resource b{"contract.under_lock", 1 << 20, std::pmr::new_delete_resource()};
  void* p = b.allocate(64, 8);
  g_read_me = &b;
  g_seen_in_use = 0;
  g_seen_in_report = false;
  const auto r = bsalloc_test::run_in_child([] {
    ::alarm(60);  // a deadlock fails the test instead of hanging it
    bsalloc::set_out_of_memory_handler(reading_handler);
    t_report_on_new = true;
    const auto snap = bsalloc::budget_report();
    if (t_report_on_new || !g_seen_in_report || g_seen_in_use != 64 + 1) std::_Exit(3);
    if (snap.find("contract.under_lock") == nullptr) std::_Exit(4);
    std::_Exit(0);
  });
  CHECK(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
  // Creating a budget there would deadlock: it aborts with a message instead.
  const auto w = bsalloc_test::run_in_child([] {
    ::alarm(60);
    bsalloc::set_out_of_memory_handler(creating_handler);
    t_report_on_new = true;
    (void)bsalloc::budget_report();
  });
  CHECK(w.aborted);
  CHECK(w.err.find("budget registry's lock is held by this thread") != std::string::npos);
  b.deallocate(p, 64, 8);
}

TEST_CASE("budget_resource: a request its upstream refuses raises no peak") {
  // Found by fuzz_budget: the lease paths raised the thread's high mark before the upstream
  // call and kept it when the upstream threw.
  for (const std::size_t lease : {bsalloc::budget_resource::default_max_lease, std::size_t{0}}) {
    CAPTURE(lease);
    refusing_resource up;
    bsalloc::budget_resource b{"contract.upstream_refuses", 1 << 20, &up};
    b.set_max_lease(lease);
    up.refuse_allocate = true;
    CHECK_THROWS_AS((void)b.allocate(69632, 8), std::bad_alloc);  // the slow path
    CHECK(b.peak() == 0);
    up.refuse_allocate = false;
    void* p = b.allocate(16, 8);  // a lease now (with leases)
    b.deallocate(p, 16, 8);
    up.refuse_allocate = true;
    CHECK_THROWS_AS((void)b.allocate(64, 8), std::bad_alloc);  // the fast path
    CHECK(b.peak() == 16);
    CHECK(b.in_use() == 0);
    CHECK(b.count() == 0);
  }
}

TEST_CASE("budget_resource: over the limit a 0-byte request meets it too") {
  // Found by fuzz_budget: the lease's fast path served allocate(0) with an empty lease while
  // the budget was over its limit (after a handler had allowed an excess).
  bool allow = true;
  int asked = 0;
  bsalloc::budget_resource b{"contract.zero", 100, std::pmr::new_delete_resource(),
                             [&](const bsalloc::over_budget_info&) {
                               ++asked;
                               return allow;
                             }};
  void* big = b.allocate(200, 8);  // allowed over the limit
  CHECK(asked == 1);
  allow = false;
  CHECK_THROWS_AS((void)b.allocate(0, 8), std::bad_alloc);
  CHECK(asked == 2);
  allow = true;
  void* z = b.allocate(0, 8);
  CHECK(asked == 3);
  CHECK(b.stats().over_limit == 2);
  b.deallocate(z, 0, 8);
  b.deallocate(big, 200, 8);
  void* w = b.allocate(0, 8);  // under the limit: no handler
  CHECK(asked == 3);
  b.deallocate(w, 0, 8);
  CHECK(b.in_use() == 0);
  CHECK(b.count() == 0);
}
