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
