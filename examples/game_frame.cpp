// An engine's frame arena: one buffer allocated up front (the memory budget), a page_resource
// over it, a slab_resource over that. Every frame allocates its particles, draw list and labels
// from the slab_resource and releases all of it at once at the end of the frame. One frame
// spawns far more than the budget holds: the allocation that does not fit throws
// std::bad_alloc, the frame reports it and ends early, and the next frames go on as before.
// Prints the stats of every frame; exits non-zero if a frame behaves otherwise.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/version.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <memory_resource>
#include <new>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

namespace {

constexpr std::size_t budget = std::size_t{32} << 20;  // the whole frame memory: 32 MiB

struct arena_deleter {
  void operator()(std::byte* p) const noexcept {
    ::operator delete (p, std::align_val_t{std::size_t{2} << 20});
  }
};

struct particle {  // frame-lifetime, trivially destructible: never freed one by one
  float x, y, z;
  float vx, vy, vz;
  float life;
  std::uint32_t color;
};

struct draw_command {
  std::uint32_t mesh;
  std::uint32_t material;
  std::array<float, 16> transform;
};

struct frame_plan {
  std::size_t entities;
  bool over_budget;  // expected to run out of memory
};

// A steady load, a spike far beyond the budget (an explosion spawning a million particles), then
// back to normal: the frames after the spike must work as before it.
constexpr std::array<frame_plan, 10> plan{{{5000, false},
                                           {10000, false},
                                           {20000, false},
                                           {40000, false},
                                           {1000000, true},
                                           {40000, false},
                                           {20000, false},
                                           {10000, false},
                                           {60000, false},
                                           {5000, false}}};

std::string kib(std::size_t bytes) {
  if (bytes >= (std::size_t{1} << 20))
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return fmt::format("{:.1f} KiB", static_cast<double>(bytes) / 1024.0);
}

struct frame_result {
  std::size_t spawned = 0;  // entities fully set up before the frame ended
  bool out_of_budget = false;
  std::size_t slab_objects = 0, slab_bytes = 0, slab_reserved = 0, large_bytes = 0;
  std::size_t pages_in_use = 0;
  double checksum = 0;
};

frame_result run_frame(std::size_t frame, std::size_t entities, bsalloc::slab_resource& mem,
                       const bsalloc::page_resource& pages) {
  frame_result result;
  std::pmr::polymorphic_allocator<> alloc(&mem);
  try {
    std::pmr::vector<particle*> live(&mem);
    std::pmr::vector<draw_command> draws(&mem);
    std::pmr::unordered_map<std::uint32_t, std::pmr::string> labels(&mem);
    for (std::size_t e = 0; e < entities; ++e) {
      const float f = static_cast<float>(e);
      // Allocated from the frame arena and never deleted: release() takes them back.
      auto* p = alloc.new_object<particle>(particle{f, 0, -f, 1, 2, 3, 1.0f, 0xffffffffu});
      live.push_back(p);
      draws.push_back(
          draw_command{static_cast<std::uint32_t>(e % 64), static_cast<std::uint32_t>(e % 8), {}});
      draws.back().transform[15] = 1.0f;
      if (e % 16 == 0)
        labels.emplace(static_cast<std::uint32_t>(e),
                       fmt::format("entity #{} spawned in frame {} (a label)", e, frame));
      result.spawned = e + 1;
    }
    // Simulate one step and "render".
    for (particle* p : live) {
      p->x += p->vx;
      p->y += p->vy;
      p->life -= 0.5f;
      result.checksum += static_cast<double>(p->x + p->y + p->life);
    }
    for (const auto& d : draws) result.checksum += static_cast<double>(d.transform[15]);
    result.checksum += static_cast<double>(labels.size());

    const auto s = mem.stats();  // at the frame's high point
    result.slab_objects = s.objects_in_use;
    result.slab_bytes = s.bytes_in_use;
    result.slab_reserved = s.bytes_reserved;
    result.large_bytes = s.large_bytes;
    result.pages_in_use = pages.stats().allocated_bytes;
    if (frame == 0) fmt::print("slab_resource stats at the end of frame 0:\n{}\n", s);
  } catch (const std::bad_alloc&) {
    // Out of budget: the containers are gone already (unwound), the particles stay until the
    // release() below. The resource stays usable.
    result.out_of_budget = true;
    const auto s = mem.stats();
    result.slab_objects = s.objects_in_use;
    result.slab_bytes = s.bytes_in_use;
    result.slab_reserved = s.bytes_reserved;
    result.large_bytes = s.large_bytes;
    result.pages_in_use = pages.stats().allocated_bytes;
  }
  return result;
}

}  // namespace

int main() {
  fmt::print("bsalloc {}: frame arena of {} (one buffer, page_resource, slab_resource)\n\n",
             BSALLOC_VERSION_STRING, kib(budget));
  // The whole budget, allocated once up front; nothing below calls the OS or malloc for frames.
  // 2 MiB-aligned (the huge-page size) so the buddy blocks it holds are the same every run.
  constexpr std::align_val_t buffer_alignment{std::size_t{2} << 20};
  const std::unique_ptr<std::byte, arena_deleter> buffer{
      static_cast<std::byte*>(::operator new(budget, buffer_alignment))};
  bsalloc::page_resource pages{std::span{buffer.get(), budget}};
  bsalloc::slab_resource_options options;
  options.caches = 1;  // one engine thread
  bsalloc::slab_resource frame_mem{std::pmr::pool_options{}, options, &pages};

  int failures = 0;
  auto check = [&failures](bool ok, std::string what) {
    if (!ok) {
      fmt::print(stderr, "game_frame: FAILED: {}\n", what);
      ++failures;
    }
  };

  const std::size_t managed = pages.stats().managed_bytes;
  fmt::print("page_resource manages {} of the {} buffer (the rest: its metadata, alignment)\n\n",
             kib(managed), kib(budget));
  for (std::size_t frame = 0; frame < plan.size(); ++frame) {
    const auto [entities, over_budget] = plan[frame];
    const frame_result r = run_frame(frame, entities, frame_mem, pages);
    frame_mem.release();  // the end of the frame: everything it allocated, at once

    const auto after = frame_mem.stats();
    const auto page_stats = pages.stats();
    fmt::print(
        "frame {}: {:6} of {:6} entities {:14} | slab {:6} objects, {} in use, {} reserved, "
        "{} large | pages {} of {} | after release: {} objects, pages {}\n",
        frame, r.spawned, entities, r.out_of_budget ? "OUT OF BUDGET" : "ok", r.slab_objects,
        kib(r.slab_bytes), kib(r.slab_reserved), kib(r.large_bytes), kib(r.pages_in_use),
        kib(managed), after.objects_in_use, kib(page_stats.allocated_bytes));

    check(r.out_of_budget == over_budget, fmt::format("frame {}: out of budget is {}, expected {}",
                                                      frame, r.out_of_budget, over_budget));
    if (!r.out_of_budget) {
      check(r.spawned == entities, fmt::format("frame {}: all entities spawned", frame));
      check(r.slab_objects >= entities, fmt::format("frame {}: particles on the slabs", frame));
      // Particle e ends at x = e + 1, y = 2, life = 0.5; each draw adds 1, each label 1.
      const auto n = static_cast<double>(entities);
      const double expected =
          n * (n - 1) / 2 + 3.5 * n + n + static_cast<double>((entities + 15) / 16);
      check(r.checksum == expected, fmt::format("frame {}: checksum", frame));
    } else {
      check(r.spawned < entities, fmt::format("frame {}: stopped early", frame));
    }
    check(r.pages_in_use <= managed, fmt::format("frame {}: within the buffer", frame));
    check(after.objects_in_use == 0 && after.bytes_in_use == 0,
          fmt::format("frame {}: nothing left on the slabs after release()", frame));
    check(page_stats.allocated_bytes == 0,
          fmt::format("frame {}: every page back after release()", frame));
  }
  fmt::print("\n{}\n", pages.stats());
  if (failures != 0) return 1;
  fmt::print("game_frame: ok\n");
  return 0;
}
