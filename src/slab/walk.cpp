// SPDX-License-Identifier: Apache-2.0
// slab_resource::live_blocks(): the heap walk (slab_resource.hpp states what it guarantees).
// Slabs are read under their owner core's lock, after that core's remote frees are drained (its
// stash of drained chains holds free objects too); large blocks under large_lock, or in batches
// from the page_resource's run metadata. Free-list links are read only through
// slab_state::next_of(), which decodes and validates them in hardened mode and makes them
// readable under memcheck.
#include <algorithm>
#include <bit>
#include <unordered_set>
#include <vector>

#include "header_window.hpp"
#include "state.hpp"

namespace bsalloc {

std::vector<heap_block> slab_resource::live_blocks() const {
  detail::slab_state& st = *state_;
  const detail::header_window headers(st);
  const bool checked = st.knobs.checked;
  // The calling thread's own cache: free objects, read safely (this thread is its only user).
  std::unordered_set<const void*> mine;
  if (!checked)
    if (const detail::thread_cache* tc = detail::find_cache(st)) {
      for (int c = 0; c < st.classes; ++c)
        for (void* p = tc->bins[static_cast<std::size_t>(c)].head; p; p = st.next_of(p, c))
          mine.insert(p);
      // Its large bins' runs, live to the page layer but free here (large_bins.hpp).
      for (std::size_t c = detail::large_base; c < detail::bin_total; ++c)
        for (void* p = tc->bins[c].head; p; p = detail::link_get(p, 0)) mine.insert(p);
    }
  std::vector<heap_block> out;
  std::vector<bool> is_free;
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    detail::core_cache* core = st.core_if(ci);
    if (!core) continue;
    detail::slab_list returns;
    {
      const std::lock_guard lock(core->lock);
      st.drain(*core, returns);  // remote frees in flight become free objects of their slabs
      // The core's stash of drained chains (remote.hpp): free objects, though counted out.
      for (std::uint32_t bits = core->stash.used; bits; bits &= bits - 1) {
        const detail::remote_batch& m =
            core->stash.chain[static_cast<std::size_t>(std::countr_zero(bits))];
        void* p = m.head;
        for (std::uint32_t k = 0; k < m.count; ++k, p = st.next_of(p, static_cast<int>(m.cls)))
          mine.insert(p);
      }
      for (int c = 0; c < st.classes; ++c) {
        const auto& g = st.geom[static_cast<std::size_t>(c)];
        auto& l = core->cls[static_cast<std::size_t>(c)];
        for (std::uint8_t which : {detail::list_partial, detail::list_full}) {
          for (detail::slab* s = detail::slab_state::list_head(l, which); s; s = s->next) {
            char* const first = reinterpret_cast<char*>(slab_base(s)) + g.offset;
            // Objects handed out so far: from the colour `start` on, wrapping (slab_core.hpp).
            const std::uint32_t handed = s->capacity - s->untouched;
            if (checked) {
              for (std::uint32_t k = 0; k < handed; ++k) {
                const std::size_t i = detail::slab_nth_handed(s, k);
                if (!(st.bitmap(s)[i / 64].load(std::memory_order_relaxed) >> (i % 64) & 1))
                  continue;
                out.push_back({first + i * g.size, g.size, false});
              }
              continue;
            }
            is_free.assign(s->capacity, false);
            std::uint32_t n = 0;
            for (void* p = s->free; p && n <= handed; p = st.next_of(p, c, s), ++n)
              is_free[static_cast<std::size_t>(static_cast<char*>(p) - first) / g.size] = true;
            for (std::uint32_t k = 0; k < handed; ++k) {
              const std::size_t i = detail::slab_nth_handed(s, k);
              const char* p = first + i * g.size;
              if (!is_free[i] && !mine.contains(p)) out.push_back({p, g.size, false});
            }
          }
        }
      }
    }
    st.return_slabs(returns);
  }
  {
    const std::lock_guard lock(st.large_lock);
    st.large.for_each([&](const detail::large_record& r) {
      out.push_back({reinterpret_cast<const void*>(r.p), r.bytes, true});
    });
  }
  // Large blocks recorded in their page runs (large.cpp): a batch at a time, pushed with no
  // lock held (push_back may allocate, perhaps from the same page_resource).
  if (const std::uint32_t tag = st.large_tag.load(std::memory_order_relaxed);
      tag && st.upstream_pages) {
    std::array<page_resource::tagged_run, 64> batch;
    std::uint64_t cursor = 0;
    while (const std::size_t n = st.upstream_pages->tagged_runs(tag, batch, cursor))
      for (std::size_t i = 0; i < n; ++i)
        if (!mine.contains(batch[i].start)) out.push_back({batch[i].start, batch[i].bytes, true});
  }
  std::sort(out.begin(), out.end(),
            [](const heap_block& a, const heap_block& b) { return std::less<>{}(a.ptr, b.ptr); });
  return out;
}

}  // namespace bsalloc
