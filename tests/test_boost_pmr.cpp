// SPDX-License-Identifier: Apache-2.0
// boost_pmr_adaptor: Boost.Container's pmr containers on every bsalloc resource.
#include <bsalloc/boost_pmr.hpp>
#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <memory_resource>
#include <string>

#include <doctest/doctest.h>
#include <boost/container/pmr/deque.hpp>
#include <boost/container/pmr/flat_map.hpp>
#include <boost/container/pmr/small_vector.hpp>
#include <boost/container/pmr/string.hpp>
#include <boost/container/pmr/vector.hpp>

namespace {

namespace bpmr = boost::container::pmr;

/// Counts what reaches the std resource, to prove the containers really use it.
class counting_resource : public std::pmr::memory_resource {
 public:
  explicit counting_resource(std::pmr::memory_resource* up) : up_(up) {}
  std::size_t allocations = 0, deallocations = 0;

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    ++allocations;
    return up_->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    ++deallocations;
    up_->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
  std::pmr::memory_resource* up_;
};

/// Runs every container over `mr` and checks their contents; returns the allocations seen.
std::size_t exercise(std::pmr::memory_resource* mr) {
  counting_resource counting{mr};
  bsalloc::boost_pmr_adaptor boost_mr{&counting};
  CHECK(boost_mr.upstream_resource() == &counting);
  {
    bpmr::vector<int> v{&boost_mr};
    for (int i = 0; i < 10000; ++i) v.push_back(i);
    long sum = 0;
    for (int x : v) sum += x;
    CHECK(sum == 10000L * 9999 / 2);

    bpmr::flat_map<int, bpmr::string> m{&boost_mr};
    for (int i = 0; i < 500; ++i) m.emplace(500 - i, bpmr::string("value number", &boost_mr));
    CHECK(m.size() == 500);
    CHECK(m.begin()->first == 1);
    CHECK(m.at(250) == "value number");
    CHECK(m.get_allocator().resource() == &boost_mr);

    // small_vector's allocator_type wraps the polymorphic_allocator (for its inline storage).
    using svec = bpmr::small_vector<int, 8>;
    svec sv{svec::allocator_type(bpmr::polymorphic_allocator<int>(&boost_mr))};
    for (int i = 0; i < 8; ++i) sv.push_back(i);
    const std::size_t before_spill = counting.allocations;
    for (int i = 8; i < 100; ++i) sv.push_back(i);  // past the inline capacity: allocates
    CHECK(counting.allocations > before_spill);
    CHECK(sv[99] == 99);

    bpmr::deque<std::string> d{&boost_mr};
    for (int i = 0; i < 1000; ++i) {
      d.push_back(std::to_string(i));
      d.push_front(std::to_string(-i));
    }
    CHECK(d.size() == 2000);
    CHECK(d.front() == "-999");
    CHECK(d.back() == "999");
  }
  CHECK(counting.allocations > 0);
  CHECK(counting.allocations == counting.deallocations);
  return counting.allocations;
}

}  // namespace

TEST_CASE("boost_pmr_adaptor: containers on a slab_resource") {
  bsalloc::slab_resource pool;
  CHECK(exercise(&pool) > 0);
  CHECK(pool.stats().objects_in_use == 0);
  pool.check_invariants();
}

TEST_CASE("boost_pmr_adaptor: containers on a page_resource") {
  bsalloc::page_resource pages;
  CHECK(exercise(&pages) > 0);
  CHECK(pages.stats().allocated_bytes == 0);
  pages.check_invariants();
}

TEST_CASE("boost_pmr_adaptor: containers on a frame_arena") {
  bsalloc::frame_arena arena;
  CHECK(exercise(&arena) > 0);
  CHECK(arena.stats().peak_bytes > 10000 * sizeof(int));
  arena.reset();
  CHECK(exercise(&arena) > 0);  // again, on the kept chunks
  arena.check_invariants();
}

TEST_CASE("boost_pmr_adaptor: containers on a budget_resource") {
  bsalloc::slab_resource pool;
  bsalloc::budget_resource budget{"boost.containers", 16 << 20, &pool};
  CHECK(exercise(&budget) > 0);
  CHECK(budget.in_use() == 0);
  CHECK(budget.count() == 0);
  CHECK(budget.peak() > 10000 * sizeof(int));
}

TEST_CASE("boost_pmr_adaptor: equality follows the adapted resources") {
  bsalloc::slab_resource a, b;
  bsalloc::boost_pmr_adaptor x{&a}, y{&a}, z{&b};
  CHECK(x.is_equal(x));
  CHECK(x.is_equal(y));
  CHECK_FALSE(x.is_equal(z));
  CHECK(x == y);
  CHECK(x != z);
}
