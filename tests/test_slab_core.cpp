// SPDX-License-Identifier: Apache-2.0
// The slab core (detail/slab_core.hpp) on its own, as both fronts use it: geometry, take / put
// back, the empty-slab policy, the checked bitmap, and an invariant walk that catches each kind
// of broken slab it claims to.
#include <bsalloc/detail/slab_core.hpp>
#include <bsalloc/detail/slab_walk.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

namespace {

using namespace bsalloc::detail;

struct owner {};  // stands for slab_state / a pool's control block
using slab = slab_header<owner>;
constexpr std::uint32_t magic = 0x7e57ab1eu;
constexpr std::size_t slab_bytes = 4096;
constexpr std::size_t size = 48;
constexpr std::size_t align = 16;

void* link_of(const void* p) {
  void* next;
  std::memcpy(&next, p, sizeof next);
  return next;
}
void set_link(void* p, const void* next) {
  std::memcpy(p, &next, sizeof next);
}

// Slabs from aligned_alloc, lists, and the walk with the test's header check.
struct fixture {
  owner res;
  slab_lists<owner> lists;
  std::size_t max_empty = 1;
  bool checked = true;
  std::uint16_t colour = 0;  // the first object a new slab hands out
  std::size_t capacity = slab_capacity(slab_bytes, size, align, true);
  std::size_t first = slab_first_object(capacity, align, true);
  std::vector<void*> memory;

  ~fixture() {
    for (void* m : memory) std::free(m);
  }
  slab* carve() {
    void* mem = std::aligned_alloc(slab_bytes, slab_bytes);
    REQUIRE(mem != nullptr);
    memory.push_back(mem);
    slab* s = slab_carve(mem, magic, 0, 0, static_cast<std::uint32_t>(capacity), first, &res,
                         colour, size);
    slab_bitmap_init(s, (capacity + 63) / 64);
    slab_adopt(lists, s);
    return s;
  }
  void* take() {
    slab* s = slab_to_take(lists);
    if (!s) s = carve();
    void* p = slab_take(
        s, size, [](void* q) { return link_of(q); }, [](void*) {});
    if (slab_exhausted(s)) slab_move(lists, s, list_full);
    if (checked) CHECK_FALSE(slab_bit_set(s, slab_index(s, p, first, size)));
    return p;
  }
  // Returns a slab the policy gave up (the caller would give it back upstream).
  slab* put(void* p) {
    slab* s = slab_at<slab>(p, slab_bytes);
    if (checked) slab_bit_clear(s, slab_index(s, p, first, size));
    slab_put(s, p, [](void* at, const void* next) { set_link(at, next); });
    return slab_settle(lists, s, max_empty);
  }
  std::size_t check() const {
    const slab_walk_geom g{.size = size,
                           .first_object = first,
                           .slab_bytes = slab_bytes,
                           .capacity = static_cast<std::uint32_t>(capacity),
                           .max_empty = max_empty,
                           .checked = checked,
                           .exact_bits = true};
    return slab_check_lists(
        lists, g, [&](const slab* s) { return s->magic == magic && s->res == &res; },
        [](void* p, const slab*) { return link_of(p); },
        [](const char* what, const slab*) { throw std::logic_error(what); });
  }
};

std::string walk_error(const fixture& f) {
  try {
    f.check();
  } catch (const std::logic_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("slab core: geometry") {
  const std::size_t n = slab_capacity(slab_bytes, size, align, true);
  CHECK(slab_first_object(n, align, true) + n * size <= slab_bytes);
  CHECK(slab_first_object(n + 1, align, true) + (n + 1) * size > slab_bytes);  // the most
  CHECK(slab_first_object(n, align, true) % align == 0);
  CHECK(slab_first_object(n, align, false) == 64);
  CHECK(slab_capacity(64, 8, 8, false) == 0);
  // A 4-byte record per object (slab_resource's checked mode) costs room.
  CHECK(slab_capacity(slab_bytes, 16, 16, true, 4) < slab_capacity(slab_bytes, 16, 16, true));
  // object_pool's documented counts: 64 KiB slabs hold 4060 objects of 16 bytes, 15 of 4096.
  CHECK(slab_capacity(std::size_t{64} << 10, 16, 16, true) == 4060);
  CHECK(slab_capacity(std::size_t{64} << 10, 4096, 4096, true) == 15);
}

TEST_CASE("slab core: take, put back and the empty-slab policy, walked after every step") {
  fixture f;
  std::mt19937_64 rng(bsalloc_test::test_seed("slab core random use"));
  std::vector<void*> live;
  std::size_t given_up = 0;
  for (int i = 0; i < 20000; ++i) {
    if (live.empty() || rng() % 100 < 55) {
      live.push_back(f.take());
    } else {
      const std::size_t k = rng() % live.size();
      std::swap(live[k], live.back());
      if (slab* gone = f.put(live.back())) {
        CHECK(gone->used == 0);
        ++given_up;  // stays allocated in the fixture: only off the lists
      }
      live.pop_back();
    }
    if (i % 97 == 0) REQUIRE(f.check() == live.size());
  }
  CHECK(f.check() == live.size());
  while (!live.empty()) {
    if (f.put(live.back())) ++given_up;
    live.pop_back();
  }
  CHECK(f.check() == 0);
  CHECK(f.lists.empty_count == 1);  // max_empty kept, the others given up
  CHECK(f.lists.slabs == 1);
  CHECK(given_up + 1 == f.memory.size());
}

TEST_CASE("slab core: partly used slabs fill before the kept empty one") {
  fixture f;
  std::vector<void*> a, b;
  for (std::size_t i = 0; i < f.capacity; ++i) a.push_back(f.take());
  for (std::size_t i = 0; i < 3; ++i) b.push_back(f.take());
  for (void* p : a) CHECK(f.put(p) == nullptr);  // the first slab empties: kept
  CHECK(f.lists.empty_count == 1);
  void* next = f.take();
  CHECK(slab_at<slab>(next, slab_bytes) == slab_at<slab>(b[0], slab_bytes));
  CHECK(f.lists.empty_count == 1);
  f.check();
}

// The empty-slab policy keeps the newest: when the empty list is full, the slab that has been
// empty longest goes (its pages are the coldest), the one just emptied stays.
TEST_CASE("slab core: a full empty list gives back the slab empty longest") {
  for (const std::size_t max_empty : {std::size_t{0}, std::size_t{1}, std::size_t{2}}) {
    CAPTURE(max_empty);
    fixture f;
    f.max_empty = max_empty;
    std::vector<std::vector<void*>> by_slab(4);
    for (auto& v : by_slab)
      for (std::size_t i = 0; i < f.capacity; ++i) v.push_back(f.take());
    std::vector<slab*> order;  // the slabs in the order they empty
    std::vector<slab*> gone;
    for (auto& v : by_slab) {
      order.push_back(slab_at<slab>(v.front(), slab_bytes));
      for (void* p : v)
        if (slab* g = f.put(p)) gone.push_back(g);
      CHECK(f.lists.empty_count == std::min(order.size(), max_empty));
      f.check();
    }
    // Given back: the first 4 - max_empty to empty, in the order they emptied.
    REQUIRE(gone.size() == 4 - max_empty);
    for (std::size_t i = 0; i < gone.size(); ++i) CHECK(gone[i] == order[i]);
    // Kept: the last max_empty to empty, the newest at the head.
    slab* e = f.lists.empty;
    for (std::size_t i = 0; i < max_empty; ++i, e = e->next) CHECK(e == order[3 - i]);
    CHECK(e == nullptr);
  }
}

TEST_CASE("slab core: the walk catches what it claims to") {
  fixture f;
  std::vector<void*> live;
  for (int i = 0; i < 10; ++i) live.push_back(f.take());
  f.put(live[3]);
  f.put(live[5]);
  slab* s = slab_at<slab>(live[0], slab_bytes);
  REQUIRE(walk_error(f).empty());

  SUBCASE("an object twice on the free list") {
    set_link(live[3], live[5]);
    set_link(live[5], live[3]);
    CHECK(walk_error(f).find("S1") != std::string::npos);
  }
  SUBCASE("a free-list link outside the slab's objects") {
    set_link(live[3], static_cast<char*>(live[0]) + 8);
    CHECK(walk_error(f).find("S1: free list holds") != std::string::npos);
  }
  SUBCASE("used miscounted") {
    ++s->used;
    CHECK(walk_error(f).find("S1: used + free + untouched") != std::string::npos);
  }
  SUBCASE("a foreign header") {
    s->magic = 0;
    CHECK(walk_error(f).find("S2: foreign slab") != std::string::npos);
  }
  SUBCASE("a wrong list tag") {
    s->list = list_full;
    CHECK(walk_error(f).find("S2: slab tagged") != std::string::npos);
  }
  SUBCASE("the slab count") {
    ++f.lists.slabs;
    CHECK(walk_error(f).find("S2: slab count") != std::string::npos);
  }
  SUBCASE("a free object marked allocated") {
    slab_bit_set(s, slab_index(s, live[3], f.first, size));
    CHECK(walk_error(f).find("S5") != std::string::npos);
  }
  SUBCASE("an allocated object not marked") {
    slab_bit_clear(s, slab_index(s, live[0], f.first, size));
    CHECK(walk_error(f).find("S5: allocation bits") != std::string::npos);
  }
}

TEST_CASE("slab core: the walk catches too many empty slabs and a stray empty one") {
  fixture f;
  f.max_empty = 2;
  std::vector<void*> live;
  for (std::size_t i = 0; i <= f.capacity; ++i) live.push_back(f.take());  // two slabs
  for (void* p : live) CHECK(f.put(p) == nullptr);                         // both kept
  CHECK(f.lists.empty_count == 2);
  CHECK(walk_error(f).empty());
  f.max_empty = 1;
  CHECK(walk_error(f).find("S4") != std::string::npos);
  f.max_empty = 2;
  f.carve();  // a new slab is partial with nothing used until it hands out an object
  CHECK(walk_error(f).find("S2: empty list iff nothing used") != std::string::npos);
}

// A refill through fresh runs (slab_take_fresh) and a flush of whole runs (slab_put_chain), as
// slab_state::take and flush use them, against a model of the live objects: S1 and S2 walked after
// every step, every object handed out once, a fresh run in address order up to the slab's end.
TEST_CASE("slab core: fresh runs and whole-run put backs, coloured or not") {
  const std::size_t capacity = fixture{}.capacity;
  for (const std::size_t colour : {std::size_t{0}, std::size_t{1}, std::size_t{7}, capacity - 1}) {
    CAPTURE(colour);
    fixture f;
    f.checked = false;
    f.colour = static_cast<std::uint16_t>(colour);
    auto object = [&](const slab* s, std::size_t i) {
      return reinterpret_cast<char*>(const_cast<slab*>(s)) + f.first + i * size;
    };

    // One slab on its own: to the end from the colour, then the objects before it.
    {
      slab* s = f.carve();
      void* chain = nullptr;
      const std::uint32_t a = slab_take_fresh(s, size, 1000, chain, set_link);
      CHECK(a == capacity - colour);
      void* p = chain;
      for (std::size_t i = colour; i < capacity; ++i, p = link_of(p)) CHECK(p == object(s, i));
      CHECK(p == nullptr);
      void* rest = chain;
      chain = nullptr;
      const std::uint32_t b = slab_take_fresh(s, size, 1000, chain, set_link);
      CHECK(b == colour);
      CHECK(slab_exhausted(s));
      CHECK(slab_take_fresh(s, size, 1000, chain, set_link) == 0);
      slab_move(f.lists, s, list_full);
      // Everything back in two runs, the second emptying the slab.
      std::uint32_t n = 0;
      void* tail = rest;
      for (; link_of(tail); tail = link_of(tail)) ++n;
      slab_put_chain(s, rest, tail, n + 1, set_link);
      CHECK(slab_settle(f.lists, s, f.max_empty) == nullptr);
      CHECK(f.check() == b);
      if (b != 0) {
        tail = chain;
        while (link_of(tail)) tail = link_of(tail);
        slab_put_chain(s, chain, tail, b, set_link);
        CHECK(slab_settle(f.lists, s, f.max_empty) == nullptr);  // kept empty
      }
      CHECK(f.check() == 0);
      CHECK(s->used == 0);
    }

    std::mt19937_64 rng(bsalloc_test::test_seed("slab core fresh runs"));
    std::vector<void*> live;
    std::set<void*> out;
    for (int step = 0; step < 3000; ++step) {
      if (live.empty() || rng() % 100 < 52) {
        // A refill of up to k: fresh runs while a slab's free list is empty.
        const std::uint32_t k = 1 + static_cast<std::uint32_t>(rng() % 40);
        void* chain = nullptr;
        std::uint32_t got = 0;
        while (got < k) {
          slab* s = slab_to_take(f.lists);
          if (!s) s = f.carve();
          while (got < k && !slab_exhausted(s)) {
            if (!s->free) {
              void* before = chain;
              // To the slab's end from the tail object, or (past the wrap) up to the colour.
              const std::size_t at =
                  static_cast<std::size_t>(s->tail - (reinterpret_cast<char*>(s) + f.first)) / size;
              const std::size_t to_end = at >= colour ? capacity - at : s->untouched;
              const std::uint32_t m = slab_take_fresh(s, size, k - got, chain, set_link);
              CHECK(m == std::min<std::size_t>(k - got, to_end));
              REQUIRE(m >= 1);
              char* p = static_cast<char*>(chain);
              for (std::uint32_t i = 1; i < m; ++i, p += size) CHECK(link_of(p) == p + size);
              CHECK(link_of(p) == before);
              got += m;
            } else {
              void* p = slab_take(
                  s, size, [](void* q) { return link_of(q); }, [](void*) {});
              set_link(p, chain);
              chain = p;
              ++got;
            }
          }
          if (slab_exhausted(s)) slab_move(f.lists, s, list_full);
        }
        for (void* p = chain; p; p = link_of(p)) {
          CHECK(out.insert(p).second);
          live.push_back(p);
        }
        CHECK(out.size() == live.size());
      } else {
        // A flush of one run: up to r live objects of one slab, chained, back whole.
        const std::size_t pick = rng() % live.size();
        slab* s = slab_at<slab>(live[pick], slab_bytes);
        const std::size_t r = 1 + rng() % 16;
        void* head = nullptr;
        void* tail = nullptr;
        std::uint32_t count = 0;
        for (std::size_t i = 0; i < live.size() && count < r;) {
          if (slab_at<slab>(live[i], slab_bytes) != s || (i != pick && rng() % 3 == 0)) {
            ++i;
            continue;
          }
          void* p = live[i];
          set_link(p, head);
          head = p;
          if (!tail) tail = p;
          ++count;
          out.erase(p);
          live[i] = live.back();
          live.pop_back();
          if (i == live.size()) break;
        }
        REQUIRE(count >= 1);
        slab_put_chain(s, head, tail, count, set_link);
        if (slab* gone = slab_settle(f.lists, s, f.max_empty)) CHECK(gone->used == 0);
      }
      REQUIRE(f.check() == live.size());
    }
  }
}
