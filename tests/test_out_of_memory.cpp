// SPDX-License-Identifier: Apache-2.0
// The out-of-memory handler: installing, the report entry point, retry protocol, recursion.
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/out_of_memory.hpp>

#include <array>
#include <new>
#include <string>

#include <doctest/doctest.h>

namespace {

int calls = 0;
int stats_built = 0;
std::string last_type, last_name, last_stats;
std::size_t last_bytes = 0, last_alignment = 0;

bool record(const bsalloc::out_of_memory_info& i) {
  ++calls;
  last_type = std::string(i.resource_type);
  last_name = std::string(i.name);
  last_stats = i.stats;
  last_bytes = i.bytes;
  last_alignment = i.alignment;
  return calls % 2 == 0;
}

// Allocates from a full fixed arena inside the handler: the nested failure is not reported
// again (it throws std::bad_alloc inside the handler), and the handler declines.
bsalloc::frame_arena* nested_arena = nullptr;
int nested_calls = 0;
bool allocate_inside(const bsalloc::out_of_memory_info&) {
  ++nested_calls;
  try {
    (void)nested_arena->allocate(1 << 20, 8);
  } catch (const std::bad_alloc&) {
  }
  return false;
}

}  // namespace

TEST_CASE("out_of_memory: default handler, set and get") {
  CHECK(static_cast<bool>(bsalloc::get_out_of_memory_handler() == nullptr));
  bsalloc::out_of_memory_info info;
  CHECK_FALSE(bsalloc::detail::report_out_of_memory(info));  // default: does nothing
  CHECK_FALSE(bsalloc::detail::out_of_memory_reportable());
  // The snapshot is not built when nobody listens.
  stats_built = 0;
  CHECK_FALSE(bsalloc::detail::report_out_of_memory("t", "n", nullptr, 1, 1, [] {
    ++stats_built;
    return std::string("s");
  }));
  CHECK(stats_built == 0);

  CHECK(static_cast<bool>(bsalloc::set_out_of_memory_handler(record) == nullptr));
  CHECK(static_cast<bool>(bsalloc::get_out_of_memory_handler() == &record));
  CHECK(bsalloc::detail::out_of_memory_reportable());
  calls = 0;
  CHECK_FALSE(bsalloc::detail::report_out_of_memory("page_resource", "", nullptr, 4096, 4096, [] {
    ++stats_built;
    return std::string("stats here");
  }));
  CHECK(calls == 1);
  CHECK(stats_built == 1);
  CHECK(last_type == "page_resource");
  CHECK(last_name.empty());
  CHECK(last_stats == "stats here");
  CHECK(last_bytes == 4096);
  CHECK(last_alignment == 4096);
  CHECK(bsalloc::detail::report_out_of_memory(info));  // the second call says true
  CHECK(static_cast<bool>(bsalloc::set_out_of_memory_handler(nullptr) == &record));
  CHECK(static_cast<bool>(bsalloc::get_out_of_memory_handler() == nullptr));
}

TEST_CASE("out_of_memory: a handler that allocates and fails again is not re-entered") {
  alignas(64) static std::array<std::byte, 256> buf{};
  bsalloc::frame_arena_options o;
  o.name = "tiny";
  bsalloc::frame_arena a{std::span{buf}, o};
  nested_arena = &a;
  nested_calls = 0;
  const auto old = bsalloc::set_out_of_memory_handler(allocate_inside);
  CHECK_THROWS_AS((void)a.allocate(1000, 8), std::bad_alloc);
  CHECK(nested_calls == 1);
  bsalloc::set_out_of_memory_handler(old);
}

TEST_CASE("out_of_memory: a frame arena's report names it") {
  alignas(64) static std::array<std::byte, 128> buf{};
  bsalloc::frame_arena_options o;
  o.name = "ui";
  bsalloc::frame_arena a{std::span{buf}, o};
  calls = 1;  // record() returns true on even counts: this call returns true -> one retry
  const auto old = bsalloc::set_out_of_memory_handler(record);
  CHECK_THROWS_AS((void)a.allocate(129, 1), std::bad_alloc);
  CHECK(calls == 2);  // called once, not again after the failed retry
  CHECK(last_type == "frame_arena");
  CHECK(last_name == "ui");
  CHECK(last_bytes == 129);
  CHECK(last_alignment == 1);
  CHECK(last_stats == "frame_arena (fixed): 0 B used (peak 0 B), 128 B capacity in 1 chunk\n");
  bsalloc::set_out_of_memory_handler(old);
}

// ---------------------------------------------------------------------------------------------
// The handler wired into page_resource and slab_resource: one report per request, however many
// bsalloc layers it crosses; a handler that frees something gets the request retried.
// ---------------------------------------------------------------------------------------------

#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <cstddef>
#include <memory_resource>
#include <vector>

namespace {

int wired_calls = 0;
std::string wired_type;
std::size_t wired_bytes = 0;
bool count_and_decline(const bsalloc::out_of_memory_info& i) {
  ++wired_calls;
  wired_type = std::string(i.resource_type);
  wired_bytes = i.bytes;
  CHECK(!i.stats.empty());
  return false;
}

// Frees the page it was given, then says so: the retry succeeds.
bsalloc::page_resource* spare_owner = nullptr;
void* spare = nullptr;
bool free_spare(const bsalloc::out_of_memory_info&) {
  ++wired_calls;
  if (spare == nullptr) return false;
  spare_owner->deallocate_pages(spare, 1);
  spare = nullptr;
  return true;
}

// A user upstream that always refuses.
struct refusing : std::pmr::memory_resource {
  void* do_allocate(std::size_t, std::size_t) override { throw std::bad_alloc(); }
  void do_deallocate(void*, std::size_t, std::size_t) override {}
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
};

struct handler_scope {
  explicit handler_scope(bsalloc::out_of_memory_handler h) {
    bsalloc::set_out_of_memory_handler(h);
  }
  ~handler_scope() { bsalloc::set_out_of_memory_handler(nullptr); }
  handler_scope(const handler_scope&) = delete;
  handler_scope& operator=(const handler_scope&) = delete;
};

}  // namespace

TEST_CASE("out_of_memory: a full page_resource reports once, then throws bad_alloc") {
  alignas(4096) static std::array<std::byte, 64 * 4096> buf;
  bsalloc::page_resource pages{std::span<std::byte>(buf)};
  handler_scope h(count_and_decline);
  wired_calls = 0;
  CHECK_THROWS_AS((void)pages.allocate_pages(1024), std::bad_alloc);
  CHECK(wired_calls == 1);
  CHECK(wired_type == "page_resource");
  CHECK(wired_bytes == 1024 * bsalloc::page_size);
  pages.check_invariants();
  void* p = pages.allocate_pages(1);  // still usable
  pages.deallocate_pages(p, 1);
}

TEST_CASE("out_of_memory: a slab_resource over a full page_resource: reported once, by the page") {
  alignas(4096) static std::array<std::byte, 64 * 4096> buf;
  bsalloc::page_resource pages{std::span<std::byte>(buf)};
  bsalloc::slab_resource_options knobs;
  knobs.min_slab_bytes = 4096;
  bsalloc::slab_resource slabs(std::pmr::pool_options{}, knobs, &pages);
  handler_scope h(count_and_decline);
  wired_calls = 0;
  CHECK_THROWS_AS((void)slabs.allocate(1 << 20, 16), std::bad_alloc);  // large: upstream fails
  CHECK(wired_calls == 1);
  CHECK(wired_type == "page_resource");
  std::vector<void*> held;
  wired_calls = 0;
  try {
    for (;;) held.push_back(slabs.allocate(2000, 8));  // slabs until the buffer is gone
  } catch (const std::bad_alloc&) {
  }
  CHECK(wired_calls == 1);
  CHECK(!held.empty());
  for (void* q : held) slabs.deallocate(q, 2000, 8);
  slabs.check_invariants();
}

TEST_CASE("out_of_memory: a slab_resource over a user upstream reports its own failure") {
  refusing up;
  bsalloc::slab_resource slabs(&up);
  handler_scope h(count_and_decline);
  wired_calls = 0;
  CHECK_THROWS_AS((void)slabs.allocate(100000, 16), std::bad_alloc);
  CHECK(wired_calls == 1);
  CHECK(wired_type == "slab_resource");
  CHECK(wired_bytes == 100000);
  wired_calls = 0;
  CHECK_THROWS_AS((void)slabs.allocate(64, 16), std::bad_alloc);  // no slab to be had
  CHECK(wired_calls == 1);
}

TEST_CASE("out_of_memory: a handler that frees memory gets the request retried") {
  alignas(4096) static std::array<std::byte, 16 * 4096> buf;
  bsalloc::page_resource pages{std::span<std::byte>(buf)};
  std::vector<void*> held;
  try {
    for (;;) held.push_back(pages.allocate_pages(1));
  } catch (const std::bad_alloc&) {
  }
  REQUIRE(!held.empty());
  spare_owner = &pages;
  spare = held.back();
  held.pop_back();
  handler_scope h(free_spare);
  wired_calls = 0;
  void* p = pages.allocate_pages(1);  // fails, the handler frees a page, the retry gets it
  CHECK(wired_calls == 1);
  CHECK(p != nullptr);
  pages.deallocate_pages(p, 1);
  for (void* q : held) pages.deallocate_pages(q, 1);
  pages.check_invariants();
}
