// SPDX-License-Identifier: Apache-2.0
// slab_resource::check_invariants(): S1-S4 (slab_resource.hpp) and the large records' L1.
#include <stdexcept>

#include <fmt/format.h>

#include "state.hpp"

namespace bsalloc {

using detail::class_count;
using detail::slab_state;

void slab_resource::check_invariants() const {
  slab_state& st = *state_;
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
      auto& l = core->cls[static_cast<std::size_t>(c)];
      std::uint32_t count = 0, empties = 0;
      for (std::uint8_t which : {detail::list_partial, detail::list_full, detail::list_empty}) {
        detail::slab* prev = nullptr;
        for (detail::slab* s = slab_state::list_head(l, which); s; prev = s, s = s->next) {
          ++count;
          if (s->magic != detail::slab_magic || s->cls != c || s->owner != ci || s->res != &st)
            fail(ci, c, "S2: foreign slab on a list");
          if (s->prev != prev) fail(ci, c, "S2: list back link broken");
          if (s->list != which) fail(ci, c, "S2: slab tagged with another list");
          std::uint32_t free_len = 0;
          for (void* p = s->free; p; p = st.next_of(p, c, s))
            if (++free_len > s->capacity) fail(ci, c, "S1: free list longer than the slab");
          if (s->used + free_len + s->untouched != s->capacity)
            fail(ci, c, "S1: used + free + untouched != capacity");
          const bool full = free_len == 0 && s->untouched == 0;
          if ((which == detail::list_full) != full) fail(ci, c, "S2: full list iff no free object");
          if ((which == detail::list_empty) != (s->used == 0))
            fail(ci, c, "S2: empty list iff nothing used");
          used[static_cast<std::size_t>(c)] += s->used;
          if (which == detail::list_empty) ++empties;
        }
      }
      if (count != l.slabs) fail(ci, c, "S2: slab count wrong");
      if (empties != l.empty_count) fail(ci, c, "S2: empty count wrong");
      if (empties > st.knobs.max_empty_slabs_per_class) fail(ci, c, "S4: too many empty slabs");
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
