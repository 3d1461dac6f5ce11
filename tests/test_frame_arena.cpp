// SPDX-License-Identifier: Apache-2.0
// frame_arena and frame_ring: bump allocation, O(1) reset, markers, fixed arenas running out,
// debug fills, bulk-free events, ASan poisoning.
#include <bsalloc/detail/config.hpp>  // BSALLOC_ASAN
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/out_of_memory.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory_resource>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

namespace {

/// An upstream that counts calls and bytes (to prove reset() never calls it).
class counting_resource : public std::pmr::memory_resource {
 public:
  std::size_t allocations = 0, deallocations = 0, live_bytes = 0;

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    ++allocations;
    live_bytes += bytes;
    return std::pmr::new_delete_resource()->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    ++deallocations;
    live_bytes -= bytes;
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
};

bool aligned(const void* p, std::size_t a) {
  return reinterpret_cast<std::uintptr_t>(p) % a == 0;
}

}  // namespace

TEST_CASE("frame_arena: bump allocation, alignment, stats, reset keeps chunks") {
  counting_resource up;
  bsalloc::frame_arena_options o;
  o.chunk_bytes = 4096;
  bsalloc::frame_arena a{&up, o};
  CHECK(a.stats().chunks == 0);
  CHECK(a.upstream_resource() == &up);

  void* p1 = a.allocate(10, 1);
  void* p2 = a.allocate(8, 8);
  CHECK(static_cast<std::byte*>(p2) >= static_cast<std::byte*>(p1) + 10);
  CHECK(aligned(p2, 8));
  for (std::size_t al : {16u, 64u, 256u, 4096u, 8192u}) {
    void* p = a.allocate(3, al);
    CHECK(aligned(p, al));
    std::memset(p, 0xab, 3);
  }
  a.check_invariants();
  const auto s = a.stats();
  CHECK(s.used_bytes >= 10 + 8 + 5 * 3);
  CHECK(s.capacity_bytes >= s.used_bytes);
  CHECK(s.chunks >= 2);  // the 8 KiB alignment needed a chunk of its own
  CHECK_FALSE(s.fixed);
  const std::size_t calls = up.allocations;

  // Fill more than one chunk, reset, fill the same again: no upstream call the second time.
  for (int i = 0; i < 1000; ++i) std::memset(a.allocate(48, 16), i & 0xff, 48);
  const std::size_t used = a.used_bytes();
  const auto before = a.stats();
  CHECK(up.allocations > calls);
  a.reset();
  CHECK(a.used_bytes() == 0);
  CHECK(a.stats().peak_bytes == used);
  CHECK(a.stats().chunks == before.chunks);
  CHECK(a.stats().capacity_bytes == before.capacity_bytes);
  const std::size_t calls2 = up.allocations;
  for (int i = 0; i < 1000; ++i) std::memset(a.allocate(48, 16), i & 0xff, 48);
  CHECK(up.allocations == calls2);
  CHECK(up.deallocations == 0);
  a.check_invariants();

  a.release();
  CHECK(up.live_bytes == 0);
  CHECK(up.deallocations == up.allocations);
  CHECK(a.stats().chunks == 0);
  CHECK(a.stats().capacity_bytes == 0);
  a.check_invariants();
  // Usable after release.
  CHECK(a.allocate(100, 8) != nullptr);
  a.check_invariants();
}

TEST_CASE("frame_arena: a request larger than a chunk gets a chunk of its own") {
  counting_resource up;
  bsalloc::frame_arena_options o;
  o.chunk_bytes = 1024;
  o.max_chunk_bytes = 1024;
  bsalloc::frame_arena a{&up, o};
  void* big = a.allocate(1 << 20, 16);
  std::memset(big, 1, 1 << 20);
  CHECK(a.stats().capacity_bytes >= (1u << 20));
  void* small = a.allocate(16, 16);
  CHECK(small != nullptr);
  a.check_invariants();
}

TEST_CASE("frame_arena: sizes and alignments no chunk can hold throw bad_alloc, nothing changes") {
  counting_resource up;
  bsalloc::frame_arena a{&up};
  void* p = a.allocate(64, 16);
  const auto before = a.stats();
  constexpr std::size_t top = std::size_t{1} << 63;
  const std::pair<std::size_t, std::size_t> cases[] = {
      {top, top}, {8, top}, {SIZE_MAX, 16}, {SIZE_MAX / 2, 4096}};
  for (const auto& c : cases) {
    const std::size_t bytes = c.first, align = c.second;
    CAPTURE(bytes);
    CAPTURE(align);
    CHECK_THROWS_AS((void)a.allocate(bytes, align), std::bad_alloc);
    a.check_invariants();
  }
  CHECK(a.stats().used_bytes == before.used_bytes);
  CHECK(a.stats().chunks == before.chunks);
  a.deallocate(p, 64, 16);
}

TEST_CASE("frame_arena: deallocate gives back only the most recent allocation") {
  std::array<std::byte, 1024> buf{};
  bsalloc::frame_arena a{std::span{buf}};
  void* p1 = a.allocate(100, 8);
  void* p2 = a.allocate(100, 8);
  const std::size_t used = a.used_bytes();
  a.deallocate(p1, 100, 8);  // not the last: no-op
  CHECK(a.used_bytes() == used);
  a.deallocate(p2, 100, 8);  // the last: given back
  CHECK(a.used_bytes() == used - 100);
  CHECK(a.allocate(100, 8) == p2);  // reused
  CHECK(a.stats().peak_bytes == used);
  a.check_invariants();
}

TEST_CASE("frame_arena: mark and rewind, and the markers it refuses") {
  counting_resource up;
  bsalloc::frame_arena_options o;
  o.chunk_bytes = 512;
  bsalloc::frame_arena a{&up, o};
  (void)a.allocate(64, 8);
  const auto m = a.mark();
  const std::size_t at_mark = a.used_bytes();
  std::vector<void*> after;
  for (int i = 0; i < 100; ++i) after.push_back(a.allocate(40, 8));  // spills into new chunks
  CHECK(a.stats().chunks > 1);
  a.rewind(m);
  CHECK(a.used_bytes() == at_mark);
  a.check_invariants();
  // The same allocations land in the same places again (chunks kept, in order).
  const std::size_t calls = up.allocations;
  for (int i = 0; i < 100; ++i) CHECK(a.allocate(40, 8) == after[static_cast<std::size_t>(i)]);
  CHECK(up.allocations == calls);

  SUBCASE("a marker of another arena") {
    bsalloc::frame_arena other{&up, o};
    CHECK_THROWS_AS(a.rewind(other.mark()), std::invalid_argument);
  }
  SUBCASE("a stale marker (taken before a reset)") {
    const auto m2 = a.mark();
    a.reset();
    CHECK_THROWS_AS(a.rewind(m2), std::invalid_argument);
    CHECK_THROWS_AS(a.rewind(m), std::invalid_argument);
  }
  SUBCASE("a marker past the current position") {
    const auto late = a.mark();
    a.rewind(m);
    const std::size_t now = a.used_bytes();
    CHECK_THROWS_AS(a.rewind(late), std::invalid_argument);
    CHECK(a.used_bytes() == now);  // nothing changed
  }
  SUBCASE("a marker before any chunk existed rewinds to the start") {
    bsalloc::frame_arena fresh{&up, o};
    const auto m0 = fresh.mark();
    (void)fresh.allocate(1000, 8);
    fresh.rewind(m0);
    CHECK(fresh.used_bytes() == 0);
    fresh.check_invariants();
  }
  a.check_invariants();
}

TEST_CASE("frame_arena: bad alignment throws std::invalid_argument and changes nothing") {
  std::array<std::byte, 256> buf{};
  bsalloc::frame_arena a{std::span{buf}};
  (void)a.allocate(8, 8);
  const std::size_t used = a.used_bytes();
  for (std::size_t al : {0u, 3u, 24u, 100u})
    CHECK_THROWS_AS((void)a.allocate(8, al), std::invalid_argument);
  CHECK(a.used_bytes() == used);
  bsalloc::frame_arena b{std::pmr::new_delete_resource()};
  volatile std::size_t not_a_power = 48;  // clang rejects a constant one at compile time
  CHECK_THROWS_AS((void)b.allocate(8, not_a_power), std::invalid_argument);
  CHECK_THROWS_AS(bsalloc::frame_arena(nullptr), std::invalid_argument);
}

namespace {
std::vector<bsalloc::out_of_memory_info> oom_calls;
bool oom_answer = false;
bsalloc::frame_arena* oom_arena_to_reset = nullptr;
bool record_oom(const bsalloc::out_of_memory_info& i) {
  oom_calls.push_back(i);
  oom_calls.back().stats = std::string(i.stats);
  if (oom_arena_to_reset != nullptr) oom_arena_to_reset->reset();
  return oom_answer;
}
struct handler_scope {
  bsalloc::out_of_memory_handler old;
  explicit handler_scope(bsalloc::out_of_memory_handler h)
      : old(bsalloc::set_out_of_memory_handler(h)) {
    oom_calls.clear();
    oom_answer = false;
    oom_arena_to_reset = nullptr;
  }
  ~handler_scope() { bsalloc::set_out_of_memory_handler(old); }
};
}  // namespace

TEST_CASE("frame_arena: a fixed arena that runs out reports, throws, and stays usable") {
  handler_scope scope{record_oom};
  alignas(64) std::array<std::byte, 4096> buf{};
  bsalloc::frame_arena_options o;
  o.name = "scratch";
  bsalloc::frame_arena a{std::span{buf}, o};
  CHECK(a.stats().fixed);
  CHECK(a.stats().capacity_bytes == 4096);
  CHECK(a.upstream_resource() == nullptr);
  for (int i = 0; i < 60; ++i) (void)a.allocate(64, 64);
  const std::size_t used = a.used_bytes();
  CHECK_THROWS_AS((void)a.allocate(1000, 32), std::bad_alloc);
  REQUIRE(oom_calls.size() == 1);
  CHECK(oom_calls[0].bytes == 1000);
  CHECK(oom_calls[0].alignment == 32);
  CHECK(oom_calls[0].resource_type == "frame_arena");
  CHECK(oom_calls[0].name == "scratch");
  CHECK(oom_calls[0].resource == &a);
  CHECK(oom_calls[0].stats.find("frame_arena (fixed)") != std::string::npos);
  CHECK(a.used_bytes() == used);  // unchanged
  a.check_invariants();
  (void)a.allocate(64, 64);  // what still fits still works
  a.reset();
  for (int i = 0; i < 64; ++i) (void)a.allocate(64, 64);  // the whole buffer again
  CHECK(a.used_bytes() == 4096);
  a.check_invariants();

  SUBCASE("a handler that frees something: the request is retried once and succeeds") {
    oom_calls.clear();
    oom_answer = true;
    oom_arena_to_reset = &a;
    void* p = a.allocate(1000, 8);
    CHECK(p == buf.data());
    CHECK(oom_calls.size() == 1);
  }
  SUBCASE("a handler that says yes but frees nothing: one retry, then std::bad_alloc") {
    oom_calls.clear();
    oom_answer = true;
    CHECK_THROWS_AS((void)a.allocate(1000, 8), std::bad_alloc);
    CHECK(oom_calls.size() == 1);
  }
  SUBCASE("no handler: std::bad_alloc") {
    bsalloc::set_out_of_memory_handler(nullptr);
    CHECK_THROWS_AS((void)a.allocate(1, 1), std::bad_alloc);
  }
}

TEST_CASE("frame_arena: pmr containers on it") {
  bsalloc::frame_arena a;
  {
    std::pmr::vector<std::pmr::string> v{&a};
    for (int i = 0; i < 1000; ++i)
      v.emplace_back(fmt::format("a string long enough to allocate {}", i));
    CHECK(v[999] == "a string long enough to allocate 999");
  }
  CHECK(a.stats().peak_bytes > 1000 * 32);
  a.reset();
  CHECK(a.used_bytes() == 0);
}

TEST_CASE("frame_arena: debug fills on allocate and on reset/rewind") {
  alignas(64) std::array<std::byte, 1024> buf{};
  bsalloc::frame_arena_options o;
  o.fill.on_allocate = 0xCD;
  o.fill.on_free = 0xDD;
  bsalloc::frame_arena a{std::span{buf}, o};
  auto* p = static_cast<unsigned char*>(a.allocate(32, 8));
  for (int i = 0; i < 32; ++i) CHECK(p[i] == 0xCD);
  std::memset(p, 0, 32);
  const auto m = a.mark();
  auto* q = static_cast<unsigned char*>(a.allocate(32, 8));
  std::memset(q, 0, 32);
  a.rewind(m);
  // Read the freed bytes through the buffer as the owner of the memory (not under ASan, where
  // they are poisoned: the ASan test below covers that).
  if (!bsalloc::asan_enabled) {
    for (int i = 0; i < 32; ++i)
      CHECK(std::to_integer<int>(buf[32 + static_cast<std::size_t>(i)]) == 0xDD);
    for (int i = 0; i < 32; ++i) CHECK(p[i] == 0);  // before the marker: untouched
    a.reset();
    for (int i = 0; i < 32; ++i)
      CHECK(std::to_integer<int>(buf[static_cast<std::size_t>(i)]) == 0xDD);
  }
}

namespace {
std::vector<bsalloc::bulk_free_event> events;
std::vector<std::string> event_names;  // the event's views last only for the call
void record_event(const bsalloc::bulk_free_event& e) noexcept {
  events.push_back(e);
  event_names.emplace_back(e.name);
}
}  // namespace

TEST_CASE("frame_arena: the bulk-free hook hears about reset, rewind and release") {
  events.clear();
  event_names.clear();
  const auto old = bsalloc::set_bulk_free_hook(record_event);
  {
    bsalloc::frame_arena_options o;
    o.name = "level";
    bsalloc::frame_arena a{std::pmr::new_delete_resource(), o};
    (void)a.allocate(100, 4);
    const auto m = a.mark();
    (void)a.allocate(50, 1);
    a.rewind(m);
    a.reset();
    (void)a.allocate(10, 1);
    a.release();
  }
  bsalloc::set_bulk_free_hook(old);
  REQUIRE(events.size() >= 3);
  CHECK(events[0].kind == bsalloc::bulk_free_kind::rewind);
  CHECK(events[0].bytes == 50);
  CHECK(event_names[0] == "level");
  CHECK(event_names.size() == events.size());
  CHECK(events[1].kind == bsalloc::bulk_free_kind::reset);
  CHECK(events[1].bytes == 100);
  CHECK(events[2].kind == bsalloc::bulk_free_kind::release);
  CHECK(events[2].bytes == 10);
}

TEST_CASE("frame_arena: for_each_used covers every live allocation") {
  bsalloc::frame_arena_options o;
  o.chunk_bytes = 256;
  bsalloc::frame_arena a{std::pmr::new_delete_resource(), o};
  std::vector<std::byte*> ps;
  for (int i = 0; i < 50; ++i) ps.push_back(static_cast<std::byte*>(a.allocate(24, 8)));
  std::size_t total = 0;
  std::vector<std::pair<const std::byte*, std::size_t>> ranges;
  a.for_each_used([&](const std::byte* b, std::size_t n) {
    ranges.emplace_back(b, n);
    total += n;
  });
  CHECK(total == a.used_bytes());
  for (auto* p : ps) {
    bool inside = false;
    for (auto [b, n] : ranges) inside = inside || (p >= b && p + 24 <= b + n);
    CHECK(inside);
  }
}

TEST_CASE("frame_ring: next_frame resets the oldest of N arenas over one buffer") {
  std::vector<std::byte> buf(3 * 4096 + 100);
  bsalloc::frame_ring<3> ring{std::span{buf}};
  CHECK(ring.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(ring[i].stats().fixed);
    CHECK(ring[i].stats().capacity_bytes == 4096);
    CHECK(ring[i].name() == fmt::format("frame[{}]", i));
  }
  std::vector<void*> first_of_frame;
  for (int f = 0; f < 7; ++f) {
    auto& arena = ring.next_frame();
    CHECK(&arena == &ring.current());
    CHECK(&arena == &ring[static_cast<std::size_t>(f) % 3]);
    CHECK(arena.used_bytes() == 0);
    first_of_frame.push_back(arena.allocate(1000, 8));
    (void)arena.allocate(1000, 8);
    // The two frames before this one are still intact.
    if (f >= 2) {
      CHECK(ring[static_cast<std::size_t>(f - 1) % 3].used_bytes() == 2000);
      CHECK(ring[static_cast<std::size_t>(f - 2) % 3].used_bytes() == 2000);
    }
  }
  CHECK(ring.frames() == 7);
  CHECK(first_of_frame[0] == first_of_frame[3]);  // the same arena, reset
  bsalloc::frame_ring<2> upstream_ring;           // chunks from global_page_resource()
  (void)upstream_ring.next_frame().allocate(100, 8);
  CHECK(upstream_ring.current().used_bytes() == 100);
}

TEST_CASE("frame_arena: stats print as text and JSON") {
  alignas(64) std::array<std::byte, 2048> buf{};
  bsalloc::frame_arena a{std::span{buf}};
  (void)a.allocate(512, 8);
  CHECK(fmt::format("{}", a.stats()) ==
        "frame_arena (fixed): 512 B used (peak 512 B), 2.0 KiB capacity in 1 chunk\n");
  CHECK(fmt::format("{:j}", a.stats()) ==
        "{\"used_bytes\":512,\"peak_bytes\":512,\"capacity_bytes\":2048,\"chunks\":1,"
        "\"fixed\":true}");
}

// Compiled into the ASan build only (the asan CI build runs it); nothing to run elsewhere.
#if defined(BSALLOC_ASAN)
TEST_CASE("frame_arena: under ASan a use after reset is reported") {
  REQUIRE(bsalloc::asan_enabled);
  const auto r = bsalloc_test::run_in_child([] {
    alignas(64) static std::array<std::byte, 1024> buf{};
    bsalloc::frame_arena a{std::span{buf}};
    auto* p = static_cast<volatile char*>(a.allocate(64, 16));
    p[0] = 1;
    a.reset();
    p[1] = 2;  // use after reset: ASan aborts here
  });
  const bool clean_exit = WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0;
  CHECK_FALSE(clean_exit);
  CHECK(r.err.find("use-after-poison") != std::string::npos);
  // The same after rewind(): what lies after the marker is poisoned, what lies before is not.
  const auto rw = bsalloc_test::run_in_child([] {
    alignas(64) static std::array<std::byte, 1024> buf{};
    bsalloc::frame_arena a{std::span{buf}};
    auto* keep = static_cast<volatile char*>(a.allocate(64, 16));
    const auto m = a.mark();
    auto* temp = static_cast<volatile char*>(a.allocate(64, 16));
    temp[0] = 1;
    a.rewind(m);
    keep[0] = 1;  // still live: fine
    std::fputs("kept allocation written\n", stderr);
    temp[0] = 2;  // freed by the rewind: ASan aborts here
  });
  const bool rw_clean = WIFEXITED(rw.status) && WEXITSTATUS(rw.status) == 0;
  CHECK_FALSE(rw_clean);
  CHECK(rw.err.find("use-after-poison") != std::string::npos);
  CHECK(rw.err.find("kept allocation written\n") == 0);  // before the report
  // And the same without the bad write runs clean.
  const auto ok = bsalloc_test::run_in_child([] {
    alignas(64) static std::array<std::byte, 1024> buf{};
    bsalloc::frame_arena a{std::span{buf}};
    auto* p = static_cast<volatile char*>(a.allocate(64, 16));
    p[0] = 1;
    a.reset();
    p = static_cast<volatile char*>(a.allocate(64, 16));
    p[1] = 2;
  });
  CHECK(WIFEXITED(ok.status));
  CHECK(WEXITSTATUS(ok.status) == 0);
}
#endif  // BSALLOC_ASAN

TEST_CASE("fill_resource: fills on allocate and on deallocate, over any resource") {
  alignas(64) std::array<std::byte, 1024> buf{};
  bsalloc::frame_arena arena{std::span{buf}};  // as the upstream: memory stays readable
  bsalloc::fill_resource filled{&arena, bsalloc::debug_fill{0xAB, 0xEF}};
  CHECK(filled.upstream_resource() == &arena);
  CHECK(filled.fill().on_allocate == 0xAB);
  auto* p = static_cast<unsigned char*>(filled.allocate(64, 8));
  for (int i = 0; i < 64; ++i) CHECK(p[i] == 0xAB);
  auto* q = static_cast<unsigned char*>(filled.allocate(16, 8));
  filled.deallocate(p, 64, 8);  // not the arena's last: stays mapped, now 0xEF
  if (!bsalloc::asan_enabled)
    for (int i = 0; i < 64; ++i) CHECK(p[i] == 0xEF);
  filled.deallocate(q, 16, 8);
  bsalloc::fill_resource plain{&arena, {}};  // no fill: untouched
  auto* r = static_cast<unsigned char*>(plain.allocate(8, 8));
  std::memset(r, 7, 8);
  plain.deallocate(r, 8, 8);
  CHECK(filled.is_equal(filled));
  CHECK_FALSE(filled.is_equal(plain));
}

TEST_CASE("frame_arena: a repeating frame stops taking chunks, whatever order its sizes come in") {
  counting_resource up;
  bsalloc::frame_arena_options o;
  o.chunk_bytes = 1024;
  o.max_chunk_bytes = 1024;
  bsalloc::frame_arena a{&up, o};
  const std::size_t sizes[] = {2000, 5000, 3000, 700, 9000, 1500};
  std::size_t calls_after_warmup = 0;
  for (int f = 0; f < 240; ++f) {
    // The same requests every frame, rotated: the big ones land in different places.
    for (int i = 0; i < 6; ++i) {
      for (int k = 0; k < 20; ++k) (void)a.allocate(24, 8);
      (void)a.allocate(sizes[(static_cast<std::size_t>(f) + static_cast<std::size_t>(i)) % 6], 16);
    }
    a.check_invariants();
    a.reset();
    if (f == 59) calls_after_warmup = up.allocations;  // 10 rotations to settle
  }
  CHECK(up.allocations == calls_after_warmup);
  CHECK(a.stats().capacity_bytes < 4 * (2000 + 5000 + 3000 + 700 + 9000 + 1500 + 6 * 20 * 24));
}

TEST_CASE("frame_arena: rewinding to a marker whose chunk was rewound past is refused") {
  bsalloc::frame_arena_options o;
  o.chunk_bytes = 512;
  bsalloc::frame_arena a{std::pmr::new_delete_resource(), o};
  (void)a.allocate(100, 8);
  const auto m1 = a.mark();
  for (int i = 0; i < 40; ++i) (void)a.allocate(64, 8);  // into later chunks
  const auto m2 = a.mark();
  a.rewind(m1);
  for (int i = 0; i < 2; ++i) (void)a.allocate(64, 8);  // still in the first chunk
  const std::size_t used = a.used_bytes();
  CHECK(used < m2.used);
  CHECK_THROWS_AS(a.rewind(m2), std::invalid_argument);  // its chunk lies after the current one
  CHECK(a.used_bytes() == used);
  // Allocate past m2's position again: rewinding to m2 is then accepted, and exact.
  for (int i = 0; i < 80; ++i) (void)a.allocate(64, 8);
  a.rewind(m2);
  a.check_invariants();
  std::size_t total = 0;
  a.for_each_used([&](const std::byte*, std::size_t n) { total += n; });
  CHECK(total == a.used_bytes());
}
