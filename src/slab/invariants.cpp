// SPDX-License-Identifier: Apache-2.0
// slab_resource::check_invariants(): S1-S4 (slab_resource.hpp; S1, S2, S4 and checked mode's
// S5 by the slab core's walk, detail/slab_core.hpp), T1 and the large records' L1.
#include <stdexcept>

#include <fmt/format.h>

#include "header_window.hpp"
#include "state.hpp"

namespace bsalloc {

using detail::class_count;
using detail::slab_state;

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
  std::array<std::int64_t, class_count> used{};
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    detail::core_cache* core = st.core_if(ci);
    if (!core) continue;
    std::lock_guard lock(core->lock);
    for (int c = 0; c < class_count; ++c) {
      const auto& g = st.geom[static_cast<std::size_t>(c)];
      if (c >= st.classes) {
        const auto& l = core->cls[static_cast<std::size_t>(c)];
        if (l.slabs || l.partial || l.full || l.empty)
          fail(ci, c, "S2: slabs of a class not in use");
        continue;
      }
      // S1, S2, S4 and S5 (the slab core's walk); thread caches hold objects in checked mode
      // too, so set bits may be fewer than used.
      const detail::slab_walk_geom walk{.size = g.size,
                                        .first_object = g.offset,
                                        .slab_bytes = g.slab_bytes,
                                        .capacity = g.capacity,
                                        .max_empty = st.knobs.max_empty_slabs_per_class,
                                        .checked = st.knobs.checked,
                                        .exact_bits = false};
      used[static_cast<std::size_t>(c)] += static_cast<std::int64_t>(detail::slab_check_lists(
          core->cls[static_cast<std::size_t>(c)], walk,
          [&](const detail::slab* s) {
            return s->magic == detail::slab_magic && s->cls == c && s->owner == ci && s->res == &st;
          },
          [&](void* p, const detail::slab* s) { return st.next_of(p, c, s); },
          [&](const char* what, const detail::slab* s) {
            throw std::logic_error(fmt::format(
                "bsalloc::slab_resource invariant broken (core {}, class {}, slab {}): {}", ci, c,
                static_cast<const void*>(s), what));
          }));
    }
  }
  for (int c = 0; c < class_count; ++c)
    if (used[static_cast<std::size_t>(c)] != st.out[static_cast<std::size_t>(c)].load())
      fail(st.ncores, c, "S3: objects used in slabs != objects out of slabs");
  {
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
    }
  }
  std::lock_guard lock(st.large_lock);
  if (const char* broken = st.large.check()) fail(st.ncores, -1, broken);
}

}  // namespace bsalloc
