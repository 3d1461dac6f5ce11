// SPDX-License-Identifier: Apache-2.0
// slab_resource::check_invariants(): S1-S4 (slab_resource.hpp; S1, S2, S4 and checked mode's
// S5 by the slab core's walk, detail/slab_walk.hpp; S3 per core, with its stash of drained
// remote chains), T1, the large records' L1 and the thread caches' large runs (L2).
#include <bit>
#include <stdexcept>
#include <unordered_set>

#include <fmt/format.h>

#include <bsalloc/detail/slab_walk.hpp>

#include "../page/parking.hpp"
#include "header_window.hpp"
#include "state.hpp"

namespace bsalloc {

using detail::class_count;
using detail::slab_state;

namespace {

// The core's stash of drained remote chains (remote.hpp), within its bounds: each chain holds
// `count` distinct objects of its class, from `head` to `tail`, handed out of this core's slabs.
// Returns them: no slab's free list may hold one.
template <class Fail>
std::unordered_set<const void*> check_stash(const slab_state& st, std::size_t ci,
                                            const detail::core_cache& core, Fail fail) {
  const detail::remote_stash& stash = core.stash;
  std::unordered_set<const void*> seen;
  if (stash.used && (st.careful || st.knobs.checked || !st.knobs.thread_cache))
    fail(ci, -1, "S3: a stash in a mode that keeps none");
  std::array<std::size_t, class_count> per_class{};
  std::size_t bytes = 0;
  for (std::uint32_t bits = stash.used; bits; bits &= bits - 1) {
    const detail::remote_batch& m = stash.chain[static_cast<std::size_t>(std::countr_zero(bits))];
    const int c = static_cast<int>(m.cls);
    if (c >= st.classes) fail(ci, c, "S3: a stashed chain of a class not in use");
    const auto& g = st.geom[m.cls];
    if (m.count == 0 || m.count > g.cache_limit)
      fail(ci, c, "S3: a stashed chain longer than a refill takes whole");
    const void* last = nullptr;
    void* p = m.head;
    for (std::uint32_t k = 0; k < m.count; ++k) {
      if (!p) fail(ci, c, "S3: a stashed chain shorter than its count");
      const detail::slab* s = st.slab_of(p, c);
      if (s->magic != detail::slab_magic || s->cls != c || s->owner != ci || s->res != &st ||
          detail::slab_handed_index(s, p, g.offset, g.size) >= s->capacity)
        fail(ci, c, "S3: a stashed object that is not a handed-out object of this core");
      if (!seen.insert(p).second) fail(ci, c, "S3: an object twice in the stash");
      last = p;
      p = st.next_of(p, c);
    }
    if (last != m.tail) fail(ci, c, "S3: a stashed chain's tail is not its last object");
    per_class[m.cls] += m.count;
    if (per_class[m.cls] > g.cache_max) fail(ci, c, "S3: more stashed than cache_max");
    bytes += m.count * g.size;
  }
  if (bytes != stash.bytes || bytes > detail::stash_bytes_max)
    fail(ci, -1, "S3: stash bytes miscounted or over stash_bytes_max");
  return seen;
}

// L2: a thread cache's large bins (large_bins.hpp): each run a live run of the upstream, tagged
// by this resource, of a class count of pages that its bin's class may borrow (borrowed_ok), in
// no other bin; counts and limits right, every bin full within the ceiling. registry_mutex held.
template <class Fail>
void check_large_bins(const slab_state& st, const detail::thread_cache& tc,
                      std::unordered_set<const void*>& seen, Fail fail) {
  using detail::large_runs;
  std::size_t full = 0;  // every bin full
  for (std::size_t b = 0; b < large_runs::bins; ++b)
    full += tc.bins[static_cast<std::size_t>(detail::large_base) + b].limit *
            large_runs::bin_pages(b) * page_size;
  if (full != tc.large_limit_bytes || full > st.large_ceiling_bytes)
    fail(st.ncores, -1, "L2: the large bins' limits miscounted or past the ceiling");
  for (std::size_t b = 0; b < large_runs::bins; ++b) {
    const auto& bin = tc.bins[static_cast<std::size_t>(detail::large_base) + b];
    const int c = detail::large_base + static_cast<int>(b);
    const std::uint32_t n = bin.count.load(std::memory_order_relaxed);
    if (!st.large_bin_used[b]) {
      if (bin.limit != 0 || n != 0 || bin.head) fail(st.ncores, c, "L2: a large bin out of use");
      continue;
    }
    if (n > bin.limit || bin.limit > detail::large_limit_max)
      fail(st.ncores, c, "L2: a large bin over its limit, or a limit over large_limit_max");
    std::uint32_t k = 0;
    for (const void* p = bin.head; p; p = detail::link_get(p, 0), ++k) {
      if (k == n) fail(st.ncores, c, "L2: a large bin's list is longer than its count");
      const auto run = st.upstream_pages->find_run(p);
      const std::size_t tagged = detail::page_parking::bin_run_pages(
          *st.upstream_pages, p, st.large_tag.load(std::memory_order_relaxed));
      if (!run || run->start != p || run->cached || run->parked || tagged != run->pages ||
          detail::large_run_bin[std::min(run->pages, large_runs::max_pages)] == large_runs::bins ||
          !detail::borrowed_ok(large_runs::bin_pages(b), run->pages))
        fail(st.ncores, c, "L2: a large-bin entry that is not a live run of ours of its class");
      if (!seen.insert(p).second) fail(st.ncores, c, "L2: a run in two large-bin entries");
    }
    if (k != n) fail(st.ncores, c, "L2: a large bin's list is shorter than its count");
  }
}

}  // namespace

void slab_resource::check_invariants() const {
  slab_state& st = *state_;
  const detail::header_window headers(st);
  auto fail = [](std::size_t core, int c, const char* what) {
    throw std::logic_error(fmt::format(
        "bsalloc::slab_resource invariant broken (core {}, class {}): {}", core, c, what));
  };
  // Remote frees in flight are used objects until drained (S3): drain them first.
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    detail::core_cache* core = st.core_if(ci);
    if (!core) continue;
    detail::slab_list returns;
    {
      std::lock_guard lock(core->lock);
      st.drain(*core, returns);
    }
    st.return_slabs(returns);
  }
  std::array<std::size_t, class_count> sent{}, received{};
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    detail::core_cache* core = st.core_if(ci);
    if (!core) continue;
    std::lock_guard lock(core->lock);
    const auto stashed = check_stash(st, ci, *core, fail);
    for (int c = 0; c < class_count; ++c) {
      const auto i = static_cast<std::size_t>(c);
      const auto& g = st.geom[i];
      sent[i] += core->remote_sent[i].load(std::memory_order_relaxed);
      received[i] += core->remote_in[i];
      if (c >= st.classes) {
        const auto& l = core->cls[i];
        if (l.slabs || l.partial || l.full || l.empty || core->out[i] || core->peak[i])
          fail(ci, c, "S2: slabs of a class not in use");
        continue;
      }
      // S1, S2, S4 and S5 (the slab core's walk); thread caches hold objects in checked mode
      // too, so set bits may be fewer than used.
      const detail::slab_walk_geom walk{.size = g.size,
                                        .first_object = g.offset,
                                        .slab_bytes = g.slab_bytes,
                                        .colour_mask = g.colour_mask,
                                        .capacity = g.capacity,
                                        .max_empty = st.knobs.max_empty_slabs_per_class,
                                        .checked = st.knobs.checked,
                                        .exact_bits = false};
      const auto used = static_cast<std::int64_t>(detail::slab_check_lists(
          core->cls[static_cast<std::size_t>(c)], walk,
          [&](const detail::slab* s) {
            return s->magic == detail::slab_magic && s->cls == c && s->owner == ci && s->res == &st;
          },
          [&](void* p, const detail::slab* s) {
            if (stashed.contains(p)) fail(ci, c, "S3: a stashed object on a slab's free list");
            return st.next_of(p, c, s);
          },
          [&](const char* what, const detail::slab* s) {
            throw std::logic_error(fmt::format(
                "bsalloc::slab_resource invariant broken (core {}, class {}, slab {}): {}", ci, c,
                static_cast<const void*>(s), what));
          }));
      if (used != core->out[i]) fail(ci, c, "S3: objects used in slabs != objects out of them");
      if (core->peak[i] < core->out[i]) fail(ci, c, "S3: the peak is below the objects out");
    }
  }
  // Every inbox is drained: every remote free posted arrived.
  for (std::size_t c = 0; c < class_count; ++c)
    if (sent[c] != received[c])
      fail(st.ncores, static_cast<int>(c), "S3: remote frees sent != remote frees received");
  {
    std::unordered_set<const void*> seen;  // L2: no run in two entries, of any thread cache
    std::lock_guard lock(detail::registry_mutex());
    for (const detail::thread_cache* tc = st.caches; tc; tc = tc->next) {
      std::size_t grown = 0;
      for (int c = 0; c < st.classes; ++c) {
        const auto& b = tc->bins[static_cast<std::size_t>(c)];
        const auto& g = st.geom[static_cast<std::size_t>(c)];
        if (b.limit > g.cache_limit) grown += (b.limit - g.cache_limit) * g.size;
        if (b.count.load(std::memory_order_relaxed) > b.limit)
          fail(st.ncores, c, "T1: a thread-cache bin holds more than its limit");
      }
      if (grown != tc->grown_bytes.load(std::memory_order_relaxed) ||
          grown > st.knobs.thread_cache_bytes)
        fail(st.ncores, -1, "T1: thread-cache growth miscounted or over thread_cache_bytes");
      if (st.large_bins_on) check_large_bins(st, *tc, seen, fail);
    }
  }
  std::lock_guard lock(st.large_lock);
  if (const char* broken = st.large.check()) fail(st.ncores, -1, broken);
}

}  // namespace bsalloc
