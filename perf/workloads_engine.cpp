// SPDX-License-Identifier: Apache-2.0
// The engine-kit workloads (issue 12): per-frame allocation with a bulk free at the end of each
// frame, and a budget's overhead. Each takes the peer's resource as the *upstream* (of the
// arena, the monotonic buffer, the slab_resource, the budget) or, for frame_free, uses it
// directly; an op is one allocation (the frame's bulk free is timed with it).
//   frame_arena       bsalloc::frame_arena over the peer: allocate a frame, reset() (O(1))
//   frame_monotonic   std::pmr::monotonic_buffer_resource over the peer: allocate, release()
//                     (gives every chunk back upstream: O(chunks), upstream calls each frame)
//   frame_slab        bsalloc::slab_resource over the peer: allocate, release() (O(slabs))
//   frame_free        the peer itself: allocate, then free every object (malloc/free style)
//   budget_lifo       `lifo` through a budget_resource over the peer: compare with `lifo` on the
//                     same peer for the budget's overhead per allocate + deallocate
//   budget_lifo_exact the same with the budget's leases off (set_max_lease(0): shared counters)
#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/slab_resource.hpp>

#include <chrono>
#include <cstring>
#include <memory_resource>
#include <vector>

#include "bench.hpp"

namespace bench {
namespace {

using clock_type = std::chrono::steady_clock;

double since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

constexpr std::size_t per_frame = 2000;  // allocations per frame, 16 … 256 bytes (~270 KB)

std::size_t small_size(rng& r) {
  return 16 + 8 * r.below(31);
}

/// Runs ops / per_frame frames on `mr`; `end_frame(ptrs, sizes)` frees the frame.
template <class EndFrame>
workload_result frames(std::pmr::memory_resource* mr, const params& pa, EndFrame end_frame) {
  workload_result res;
  const std::size_t frames = (pa.ops + per_frame - 1) / per_frame;
  std::vector<void*> ptrs(per_frame);
  std::vector<std::size_t> sizes(per_frame);
  rng r{pa.seed};
  auto run = [&](std::size_t n) {
    for (std::size_t f = 0; f < n; ++f) {
      for (std::size_t i = 0; i < per_frame; ++i) {
        sizes[i] = small_size(r);
        ptrs[i] = mr->allocate(sizes[i], pa.align);
        const std::uint64_t v = f + i;
        std::memcpy(ptrs[i], &v, sizeof v);
      }
      for (std::size_t i = 0; i < per_frame; i += 16) {
        std::uint64_t v;
        std::memcpy(&v, ptrs[i], sizeof v);
        res.checksum += v;
      }
      end_frame(ptrs, sizes);
    }
  };
  run(2);  // warm-up: chunks and slabs in place, as in a running game
  const auto t0 = clock_type::now();
  run(frames);
  res.seconds = since(t0);
  res.ops = frames * per_frame;
  return res;
}

}  // namespace

workload_result frame_arena_frames(peer& pe, const params& pa) {
  bsalloc::frame_arena arena{pe.resource()};
  return frames(&arena, pa, [&](auto&, auto&) { arena.reset(); });
}

workload_result frame_monotonic_frames(peer& pe, const params& pa) {
  std::pmr::monotonic_buffer_resource mono{std::size_t{64} << 10, pe.resource()};
  return frames(&mono, pa, [&](auto&, auto&) { mono.release(); });
}

workload_result frame_slab_frames(peer& pe, const params& pa) {
  bsalloc::slab_resource slab{pe.resource()};
  return frames(&slab, pa, [&](auto&, auto&) { slab.release(); });
}

workload_result frame_free_frames(peer& pe, const params& pa) {
  auto* mr = pe.resource();
  return frames(mr, pa, [&](const std::vector<void*>& ptrs, const std::vector<std::size_t>& sizes) {
    for (std::size_t i = 0; i < ptrs.size(); ++i) mr->deallocate(ptrs[i], sizes[i], pa.align);
  });
}

workload_result budget_lifo_with(peer& pe, const params& pa, std::size_t max_lease) {
  bsalloc::budget_resource budget{"bench", bsalloc::budget_resource::unlimited, pe.resource()};
  budget.set_max_lease(max_lease);
  const std::size_t batch = 100;
  rng r{pa.seed};
  std::vector<void*> live(batch);
  std::vector<std::size_t> sizes(batch);
  workload_result res;
  const auto t0 = clock_type::now();
  for (std::size_t done = 0; done < pa.ops; done += batch) {
    for (std::size_t i = 0; i < batch; ++i) {
      sizes[i] = small_size(r);
      live[i] = budget.allocate(sizes[i], pa.align);
      const std::uint64_t v = done + i;
      std::memcpy(live[i], &v, sizeof v);
    }
    for (std::size_t i = batch; i-- > 0;) {
      std::uint64_t v;
      std::memcpy(&v, live[i], sizeof v);
      res.checksum += v;
      budget.deallocate(live[i], sizes[i], pa.align);
    }
  }
  res.seconds = since(t0);
  res.ops = (pa.ops + batch - 1) / batch * batch;
  return res;
}

workload_result budget_lifo(peer& pe, const params& pa) {
  return budget_lifo_with(pe, pa, bsalloc::budget_resource::default_max_lease);
}

workload_result budget_lifo_exact(peer& pe, const params& pa) {
  return budget_lifo_with(pe, pa, 0);  // no leases: two atomic read-modify-writes per call
}

}  // namespace bench
