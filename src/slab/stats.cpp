// SPDX-License-Identifier: Apache-2.0
// slab_resource::stats(): the thread caches' counts under the registry lock, then each core's
// under its lock, summed per class (objects out of slabs, less those cached, in flight as remote
// frees or stashed), and the large blocks.
#include <bsalloc/slab_resource.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <mutex>

#include "state.hpp"

namespace bsalloc {

using detail::slab_state;

slab_resource_stats slab_resource::stats() const {
  slab_state& st = *state_;
  slab_resource_stats s;
  std::array<std::int64_t, detail::class_count> cached{};
  std::size_t large_excess = 0;  // large runs' pages past their classes (large_bins.hpp)
  {
    std::lock_guard lock(detail::registry_mutex());
    for (auto* tc = st.caches; tc; tc = tc->next) {
      ++s.thread_caches;
      s.thread_cache_grown_bytes += tc->grown_bytes.load(std::memory_order_relaxed);
      for (int c = 0; c < st.classes; ++c)
        cached[static_cast<std::size_t>(c)] +=
            tc->bins[static_cast<std::size_t>(c)].count.load(std::memory_order_relaxed);
      if (st.large_bins_on) {
        // Modulo 2^64: a thread's counts may be "negative", the sums are not. A run counts at
        // its bin's class (one borrowed by a smaller class counts its extra pages as live).
        std::size_t runs = 0, pages = 0;
        for (std::size_t b = 0; b < detail::large_runs::bins; ++b) {
          const std::size_t n =
              tc->bins[static_cast<std::size_t>(detail::large_base) + b].count.load(
                  std::memory_order_relaxed);
          runs += n;
          pages += n * detail::large_runs::bin_pages(b);
        }
        const std::size_t excess = tc->large_excess.load(std::memory_order_relaxed);
        s.large_objects += tc->large_taken.load(std::memory_order_relaxed) - runs;
        s.large_bytes += (tc->large_taken_pages.load(std::memory_order_relaxed) - pages - excess)
                         << page_shift;
        s.large_cached_runs += runs;
        s.large_cached_bytes += pages << page_shift;
        large_excess += excess << page_shift;
      }
    }
  }
  s.thread_caches_created = st.caches_created.load(std::memory_order_relaxed);
  s.bin_shrinks = st.bin_shrinks.load(std::memory_order_relaxed);
  std::array<std::size_t, detail::class_count> slabs{};
  // Per class, summed over the cores: objects out of slabs, the cores' peaks, and what is out of
  // slabs but not in use: remote frees in flight (sent, not yet drained by their owner) and
  // drained chains in the cores' stashes.
  std::array<std::int64_t, detail::class_count> out{}, peak{}, in_flight{}, stashed{};
  s.cores.resize(st.ncores);
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    detail::core_cache* core = st.core_if(ci);
    if (!core) continue;
    ++s.core_caches;
    std::lock_guard lock(core->lock);
    s.cores[ci] = core->counters;
    s.cores[ci].remote_overflows = core->overflows.load(std::memory_order_relaxed);
    s.cores[ci].remote_frees_sent = 0;
    for (std::size_t i = 0; i < detail::class_count; ++i) {
      const std::size_t sent = core->remote_sent[i].load(std::memory_order_relaxed);
      s.cores[ci].remote_frees_sent += sent;
      in_flight[i] += static_cast<std::int64_t>(sent - core->remote_in[i]);
      slabs[i] += core->cls[i].slabs;
      out[i] += core->out[i];
      peak[i] += core->peak[i];
    }
    for (std::uint32_t bits = core->stash.used; bits; bits &= bits - 1) {
      const auto& m = core->stash.chain[static_cast<std::size_t>(std::countr_zero(bits))];
      stashed[m.cls] += m.count;
    }
  }
  for (int c = 0; c < st.classes; ++c) {
    const auto i = static_cast<std::size_t>(c);
    const std::int64_t in_use = std::max<std::int64_t>(
        0, out[i] - cached[i] - std::max<std::int64_t>(0, in_flight[i]) - stashed[i]);
    s.cached_objects += static_cast<std::size_t>(cached[i]);
    if (slabs[i] == 0 && peak[i] == 0) continue;
    slab_class_stats k;
    k.object_size = st.geom[i].size;
    k.slab_bytes = st.geom[i].slab_bytes;
    k.slabs = slabs[i];
    k.objects_in_use = static_cast<std::size_t>(in_use);
    k.bytes_in_use = k.objects_in_use * k.object_size;
    k.peak_objects = static_cast<std::size_t>(peak[i]);
    s.objects_in_use += k.objects_in_use;
    s.bytes_in_use += k.bytes_in_use;
    s.classes.push_back(k);
  }
  s.bytes_reserved = st.slab_bytes_reserved.load(std::memory_order_relaxed);
  s.large_objects += st.large_objects.load(std::memory_order_relaxed);
  const std::size_t exited_excess = st.large_excess.load(std::memory_order_relaxed);
  s.large_bytes += st.large_bytes.load(std::memory_order_relaxed) - exited_excess;
  large_excess += exited_excess;
  s.bytes_in_use += s.large_bytes;
  s.bytes_reserved += s.large_bytes + s.large_cached_bytes + large_excess;
  return s;
}

}  // namespace bsalloc
