// SPDX-License-Identifier: Apache-2.0
// A game loop over one fixed buffer, on bsalloc's engine kit:
//   - a frame_ring<2> for per-frame scratch (two frames in flight: the renderer reads the
//     previous frame's draw list while the game builds the next one), reset in O(1);
//   - a level arena (a fixed frame_arena) holding the level's geometry, reset on level change;
//   - four subsystems — render, physics, audio, AI — each a slab_resource over its own
//     budget_resource, the budgets over one page_resource that manages the rest of the buffer;
//   - frame 90 spawns an explosion far beyond physics' budget: the budget refuses, the
//     out-of-memory handler reports it, the frame drops the debris it cannot hold and the game
//     goes on; audio may go over its budget (its handler logs and allows it);
//   - every frame is sampled (bsalloc::memory_sampler) into a JSON-lines file; with
//     BSALLOC_MEMCHART=path/to/scripts/memchart.sh set, the chart is drawn at the end.
// Usage: game_frame [samples.jsonl] (default: game_frame_memory.jsonl in the temporary
// directory). Checks its own claims and exits non-zero if one fails.
#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/heap_walk.hpp>
#include <bsalloc/out_of_memory.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/sampler.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/version.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <list>
#include <memory>
#include <memory_resource>
#include <new>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace {

constexpr std::size_t MiB = std::size_t{1} << 20;
constexpr std::size_t buffer_bytes = 64 * MiB;  // everything the game may use
constexpr std::size_t scratch_bytes = 8 * MiB;  // frame ring: 2 x 4 MiB
constexpr std::size_t level_bytes = 8 * MiB;    // level arena; the rest: pages for the budgets
constexpr int frames = 150;
constexpr int level_change = 75;
constexpr int explosion = 90;
constexpr int stinger = 40;  // a music stinger pushes audio over its budget

int failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    fmt::print(stderr, "game_frame: FAILED: {}\n", what);
    ++failures;
  }
}

struct body {  // physics
  float pos[3], vel[3], mass, radius;
  std::uint32_t flags, life;
};
struct agent {  // AI: a path of waypoints each
  explicit agent(std::pmr::memory_resource* mr) : path(mr) {}
  std::pmr::vector<std::uint32_t> path;
};
struct voice {  // audio: a decoded buffer each
  explicit voice(std::size_t samples, std::pmr::memory_resource* mr) : pcm(samples, 0, mr) {}
  std::pmr::vector<std::int16_t> pcm;
};
struct instance {  // render: per-instance constants
  explicit instance(std::pmr::memory_resource* mr) : constants(48, 1.0f, mr) {}
  std::pmr::vector<float> constants;
};

/// One subsystem: a slab_resource over a named budget over the shared pages.
struct subsystem {
  subsystem(const char* name, std::size_t limit, std::pmr::memory_resource* pages,
            bsalloc::over_budget_handler handler = {})
      : budget(name, limit, pages, std::move(handler)),
        pool(std::pmr::pool_options{}, knobs(), &budget) {}
  static bsalloc::slab_resource_options knobs() {
    bsalloc::slab_resource_options k;
    k.caches = 1;                 // one game thread
    k.min_slab_bytes = 16 << 10;  // small slabs: memory follows the load closely
    return k;
  }
  bsalloc::budget_resource budget;
  bsalloc::slab_resource pool;
};

std::size_t wave(int frame, double base, double amp, double period) {
  return static_cast<std::size_t>(base + amp * std::sin(frame * 6.2831853 / period));
}

// Out-of-memory reports: the game logs them and counts them per resource name.
int oom_reports = 0;
std::string last_oom;
bool log_out_of_memory(const bsalloc::out_of_memory_info& i) {
  ++oom_reports;
  last_oom = std::string(i.name);
  fmt::print("  [oom] {} '{}' refused {} bytes: {}", i.resource_type, i.name, i.bytes, i.stats);
  return false;  // nothing freed: let the caller see std::bad_alloc
}

}  // namespace

int main(int argc, char** argv) {
  const std::string samples =
      argc > 1 ? std::string(argv[1])
               : (std::filesystem::temp_directory_path() / "game_frame_memory.jsonl").string();
  fmt::print("bsalloc {}: a game loop over one {} MiB buffer\n\n", BSALLOC_VERSION_STRING,
             buffer_bytes / MiB);
  constexpr std::align_val_t huge{2 * MiB};
  const std::unique_ptr<std::byte, void (*)(std::byte*)> buffer{
      static_cast<std::byte*>(::operator new(buffer_bytes, huge)),
      [](std::byte* p) { ::operator delete(p, huge); }};
  const std::span<std::byte> all{buffer.get(), buffer_bytes};

  auto named = [](const char* name) {
    bsalloc::frame_arena_options o;
    o.name = name;
    return o;
  };
  bsalloc::frame_ring<2> scratch{all.subspan(0, scratch_bytes), named("scratch")};
  bsalloc::frame_arena level{all.subspan(scratch_bytes, level_bytes), named("level")};
  bsalloc::page_resource pages{all.subspan(scratch_bytes + level_bytes)};
  bsalloc::set_out_of_memory_handler(log_out_of_memory);

  int audio_overs = 0;
  subsystem render{"render", 12 * MiB, &pages};
  subsystem physics{"physics", 4 * MiB, &pages};
  subsystem audio{"audio", 3 * MiB, &pages, [&](const bsalloc::over_budget_info& i) {
                    ++audio_overs;
                    if (audio_overs == 1)
                      fmt::print("  [budget] audio over its {} MiB by {} KiB: allowed (music)\n",
                                 i.limit / MiB, (i.in_use + i.bytes - i.limit) >> 10);
                    return true;
                  }};
  subsystem ai{"ai", 10 * MiB, &pages};

  bsalloc::memory_sampler sampler{samples};
  sampler.add_series("pages in use", [&] { return pages.stats().allocated_bytes; });
  sampler.add_series("level arena", [&] { return level.used_bytes(); });
  sampler.add_series("frame scratch", [&] { return scratch.current().used_bytes(); });

  std::pmr::list<body> bodies{&physics.pool};
  std::pmr::list<agent> agents{&ai.pool};
  std::pmr::list<voice> voices{&audio.pool};
  std::pmr::list<instance> instances{&render.pool};

  auto load_level = [&](int n) {
    level.reset();
    // Geometry and a navigation grid, alive until the next level change.
    auto* geometry = std::pmr::polymorphic_allocator<>(&level).allocate_object<float>(
        static_cast<std::size_t>(600'000 + 300'000 * n));
    geometry[0] = 1.0f;
    std::pmr::vector<std::uint8_t> nav(static_cast<std::size_t>(1 << 20), 0, &level);
    (void)nav;  // destroyed at once; deallocate of the last allocation gives it back
    fmt::print("level {} loaded: {}", n, level.stats());
  };
  load_level(1);
  const std::size_t level_chunks = level.stats().chunks;

  std::size_t debris_dropped = 0;
  std::size_t scratch_peak = 0;
  for (int f = 0; f < frames; ++f) {
    bsalloc::frame_arena& frame = scratch.next_frame();  // the frame before last: reset
    check(frame.used_bytes() == 0, fmt::format("frame {}: scratch starts empty", f));
    if (f == level_change) {
      load_level(2);
      check(level.stats().chunks == level_chunks, "the level arena keeps its one buffer");
    }
    // Subsystems follow their load; each list node and buffer comes from its own pool.
    const std::size_t want_instances = wave(f, 20000, 8000, 60);
    while (instances.size() < want_instances) instances.emplace_back(&render.pool);
    while (instances.size() > want_instances) instances.pop_back();
    const std::size_t want_agents = wave(f, 1200, 900, 45);
    while (agents.size() < want_agents) {
      agents.emplace_back(&ai.pool);
      agents.back().path.resize(256 + agents.size() % 1024);
    }
    while (agents.size() > want_agents) agents.pop_front();
    std::size_t want_voices = wave(f, 30, 12, 25);
    if (f >= stinger && f < stinger + 12) want_voices += 40;  // a stinger: music layered on top
    while (voices.size() < want_voices) voices.emplace_back(24000, &audio.pool);
    while (voices.size() > want_voices) voices.pop_front();
    std::size_t want_bodies = wave(f, 12000, 3000, 50);
    if (f == explosion) want_bodies += 200'000;  // far beyond physics' 4 MiB
    try {
      while (bodies.size() < want_bodies) bodies.push_back(body{{0, 0, 0}, {1, 2, 3}, 1, 1, 0, 60});
    } catch (const std::bad_alloc&) {
      debris_dropped = want_bodies - bodies.size();
      fmt::print("frame {}: physics over budget, {} debris dropped, {} bodies live\n", f,
                 debris_dropped, bodies.size());
    }
    // Bodies come to rest and go; the explosion's debris decays over a few frames.
    const std::size_t excess = bodies.size() > want_bodies ? bodies.size() - want_bodies : 0;
    for (std::size_t i = 0; i < std::min<std::size_t>(excess, 20000); ++i) bodies.pop_back();

    // Per-frame scratch: the draw list, sorted, and debug labels; never freed one by one.
    std::pmr::vector<std::uint64_t> draws{&frame};
    draws.reserve(instances.size());
    std::uint64_t key = 0x9E3779B97F4A7C15ull;
    for (std::size_t i = 0; i < instances.size(); ++i) draws.push_back(key ^= key << 7);
    std::sort(draws.begin(), draws.end());
    std::pmr::vector<std::pmr::string> labels{&frame};
    for (std::size_t i = 0; i < agents.size(); i += 8) {
      std::pmr::string label{&frame};
      fmt::format_to(std::back_inserter(label), "agent {} at frame {} (debug label)", i, f);
      labels.push_back(std::move(label));
    }
    check(std::is_sorted(draws.begin(), draws.end()), "draw list sorted");
    scratch_peak = std::max(scratch_peak, frame.used_bytes());

    sampler.sample(static_cast<std::uint64_t>(f));
    if (f == 0 || f == explosion || f == frames - 1)
      fmt::print("frame {}:\n{}\n", f, bsalloc::budget_report());
  }

  // The claims.
  const auto report = bsalloc::budget_report();
  const auto* ph = report.find("physics");
  const auto* au = report.find("audio");
  check(ph != nullptr && au != nullptr, "the budgets are in the report");
  if (ph != nullptr && au != nullptr) {
    check(ph->refused >= 1, "physics refused the explosion");
    check(ph->peak <= ph->limit, "physics never went over its limit");
    check(au->over_limit >= 1 && au->peak > au->limit, "audio went over its limit, allowed");
  }
  check(debris_dropped > 0, "the explosion's excess debris was dropped");
  check(oom_reports >= 1 && last_oom == "physics", "the out-of-memory handler heard of physics");
  check(bodies.size() < 100'000, "the debris decayed");
  for (std::size_t i = 0; i < scratch.size(); ++i) {
    const auto s = scratch[i].stats();
    check(s.fixed && s.chunks == 1 && s.capacity_bytes == scratch_bytes / 2,
          "frame arenas stay on their slice of the buffer");
  }
  check(scratch_peak > 0, "the frames used their scratch");
  check(sampler.lines() == static_cast<std::size_t>(frames), "one sample per frame");

  // Shut down: everything back, every budget at zero.
  bodies.clear();
  agents.clear();
  voices.clear();
  instances.clear();
  for (subsystem* s : {&render, &physics, &audio, &ai}) {
    // The heap walk: every object the subsystem still holds (none, if nothing leaked).
    const std::string leaks = bsalloc::leak_report(s->pool, s->budget.name());
    if (!leaks.empty()) fmt::print("{}", leaks);
    check(leaks.empty(), fmt::format("{}: the heap walk finds nothing live", s->budget.name()));
    s->pool.release();
    check(s->budget.in_use() == 0, fmt::format("{}: nothing left in use", s->budget.name()));
  }
  check(pages.stats().allocated_bytes == 0, "every page back");
  check(bsalloc::leak_report().empty(), "no budget leaks (the leak report is empty)");
  bsalloc::set_out_of_memory_handler(nullptr);

  fmt::print("budgets as JSON: {:j}\n", bsalloc::budget_report());
  fmt::print("samples: {} ({} lines)\n", samples, sampler.lines());
  if (const char* chart = std::getenv("BSALLOC_MEMCHART")) {
    const std::string png = std::filesystem::path(samples).replace_extension(".png").string();
    const std::string cmd =
        fmt::format("'{}' '{}' '{}' 'game_frame: budgets per subsystem'", chart, samples, png);
    check(std::system(cmd.c_str()) == 0 && std::filesystem::exists(png), "the chart was drawn");
  } else {
    fmt::print("chart: scripts/memchart.sh {} game_frame_memory.png\n", samples);
  }
  if (failures != 0) return 1;
  fmt::print("game_frame: ok\n");
  return 0;
}
