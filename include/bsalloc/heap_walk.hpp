// SPDX-License-Identifier: Apache-2.0
#pragma once
// Heap walks: every live allocation of a bsalloc resource, and a leak report built on them.
//
//   bsalloc::for_each_allocation(pool, [](const bsalloc::heap_block& b) { ... });
//   fmt::print(stderr, "{}", bsalloc::leak_report());       // at shutdown
//
// What each walk reports, and what it guarantees while other threads allocate:
//   slab_resource    every object out of a slab and every large block (slab_resource::
//                    live_blocks() states the guarantee: what was live throughout the walk is in
//                    it exactly once; other threads' cached objects count as live outside
//                    checked mode).
//   page_resource    every live run of pages (runs in the run cache, given back by their users,
//                    are left out). Each block is looked up under the resource's lock, one at a
//                    time: a run live throughout the walk is reported exactly once; runs
//                    allocated or freed meanwhile may or may not be.
//   frame_arena      one block per chunk's used range (a bump arena keeps no per-object
//                    records); the arena is one thread's, so no concurrency question arises.
//   budget_resource  its allocations when tracking is on (budget_resource::set_tracking(): a
//                    snapshot under the tracker's lock), else nothing: a budget without tracking
//                    keeps counts only — walk the resource over it (a slab_resource over the
//                    budget is the subsystem's heap).
// The callback runs outside every lock (it may allocate); the walk returns how many it reported.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <cstddef>
#include <string>
#include <vector>

#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

namespace bsalloc {

/// The live runs of a page_resource, sorted by address (ptr, bytes = pages x page_size,
/// large = true).
std::vector<heap_block> live_blocks(const page_resource& r);

template <class F>
std::size_t for_each_allocation(const slab_resource& r, F&& f) {
  const auto all = r.live_blocks();
  for (const heap_block& b : all) f(b);
  return all.size();
}

template <class F>
std::size_t for_each_allocation(const page_resource& r, F&& f) {
  const auto all = live_blocks(r);
  for (const heap_block& b : all) f(b);
  return all.size();
}

template <class F>
std::size_t for_each_allocation(const frame_arena& a, F&& f) {
  std::size_t n = 0;
  a.for_each_used([&](const std::byte* p, std::size_t bytes) {
    f(heap_block{p, bytes, false});
    ++n;
  });
  return n;
}

template <class F>
std::size_t for_each_allocation(const budget_resource& b, F&& f) {
  return b.for_each_allocation([&](const void* p, std::size_t bytes) { f(heap_block{p, bytes}); });
}

/// The leak report: one paragraph per live budget that still has memory in use (its bytes and
/// allocations; with tracking on, its first `max_blocks` blocks by address, from the walk).
/// Empty when nothing leaked. Call it at shutdown, once everything should have been freed.
std::string leak_report(std::size_t max_blocks = 10);
/// The same for one resource's heap walk: its live blocks, grouped by size, the first
/// `max_blocks` listed; empty when there are none.
std::string leak_report(const slab_resource& r, std::string_view name, std::size_t max_blocks = 10);

}  // namespace bsalloc
