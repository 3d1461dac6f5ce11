// SPDX-License-Identifier: Apache-2.0
// bsalloc::slab_resource — the facade: construction, the inline fast path, dispatch to the
// layers under src/slab/, whole-resource operations and stats. See slab_resource.hpp for the
// glossary and invariants, src/slab/state.hpp for the layers and the lock order.
//
//   do_allocate / do_deallocate (inline): bin from the (alignment, size) tables — a slab class,
//     or up to 256 KiB a large bin of whole page runs (src/slab/large_bins.hpp), served by the
//     same pop / push. A hardened resource's cache leaves here with the bin for the validated hit
//     path (src/slab/hardened_hit.cpp). Anything else (a miss, a full bin, no
//     cache, checked mode, a bad alignment, a larger request) goes to allocate_slow /
//     deallocate_slow (src/slab/slow_path.cpp), which classify once with the overflow-safe
//     size_class() and dispatch to the thread cache, the core caches or the large path.
#include <bsalloc/budget.hpp>
#include <bsalloc/slab_resource.hpp>

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <stdexcept>

#include <fmt/format.h>

#include "slab/state.hpp"

namespace bsalloc {

using detail::class_count;
using detail::slab_state;

namespace {

std::atomic<std::uint64_t> next_resource_id{1};

bool known_thread_safe(std::pmr::memory_resource* up) {
  // A budget_resource counts with atomics and is as thread-safe as what it wraps.
  while (auto* b = dynamic_cast<budget_resource*>(up)) up = b->upstream_resource();
  return up == std::pmr::new_delete_resource() || dynamic_cast<page_resource*>(up) != nullptr ||
         dynamic_cast<slab_resource*>(up) != nullptr ||
         dynamic_cast<std::pmr::synchronized_pool_resource*>(up) != nullptr;
}

// The large bins (src/slab/large_bins.hpp): on with a page_resource upstream, thread caches, the
// inline path without the careful path, and a budget that holds one run of every bin in use;
// those the wide row maps some size to (above the largest slab class) are in use.
void init_large_bins(slab_state& st, bool inline_path) {
  using detail::large_runs;
  std::size_t in_use = 0;
  for (std::size_t b = 0; b < large_runs::bins; ++b) {
    st.large_bin_used[b] =
        large_runs::bin_pages(b) * page_size > st.pool.largest_required_pool_block;
    if (st.large_bin_used[b]) in_use += large_runs::bin_pages(b) * page_size;
  }
  st.large_start = detail::large_start_limit(st.knobs.large_cache_bytes, in_use);
  st.large_ceiling_bytes = st.knobs.large_cache_bytes;
  st.large_bins_on = st.upstream_pages && !st.knobs.checked && st.knobs.thread_cache &&
                     inline_path && !st.careful && st.large_start != 0;
  if (!st.large_bins_on) {
    st.large_bin_used.fill(false);
    st.large_start = 0;
  }
}

// Objects of `size` that fit in `slab_bytes` after the header (the slab core's geometry, with a
// 4-byte request record per object in checked mode).
std::size_t fit(std::size_t slab_bytes, std::size_t size, std::size_t obj_align, bool checked,
                std::size_t header_area) {
  return detail::slab_capacity(slab_bytes, size, obj_align, checked, 4, header_area);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------------------------

slab_resource::slab_resource() : slab_resource(std::pmr::pool_options{}) {}
slab_resource::slab_resource(std::pmr::memory_resource* upstream)
    : slab_resource(std::pmr::pool_options{}, slab_resource_options{}, upstream) {}
slab_resource::slab_resource(const std::pmr::pool_options& options,
                             std::pmr::memory_resource* upstream)
    : slab_resource(options, slab_resource_options{}, upstream) {}
slab_resource::slab_resource(const std::pmr::pool_options& options)
    : slab_resource(options, slab_resource_options{}, &global_page_resource()) {}

slab_resource::slab_resource(const std::pmr::pool_options& options,
                             const slab_resource_options& knobs,
                             std::pmr::memory_resource* upstream)
    : state_(nullptr),
      id_(next_resource_id.fetch_add(1)),
      slot_(detail::no_slot),
      hardened_id_(id_ | detail::hardened_id_bit),
      small_bound_(0),
      wide_bound_(0),
      wide_rows_{},
      checked_(knobs.checked),
      hardened_(knobs.hardened) {
  if (!upstream) throw std::invalid_argument("bsalloc::slab_resource: null upstream");
  if (knobs.min_slab_bytes < page_size || knobs.min_slab_bytes > (std::size_t{1} << 20) ||
      !detail::power_of_two(knobs.min_slab_bytes))
    throw std::invalid_argument(fmt::format(
        "bsalloc::slab_resource: min_slab_bytes {} is not a power of two from 4 KiB to 1 MiB",
        knobs.min_slab_bytes));
  if (knobs.remote_queue_capacity == 0 || knobs.remote_queue_capacity > 65534)
    throw std::invalid_argument(
        fmt::format("bsalloc::slab_resource: remote_queue_capacity {} is not in 1..65534",
                    knobs.remote_queue_capacity));
  auto st = std::make_unique<slab_state>();
  st->upstream = upstream;
  st->upstream_serial = !knobs.upstream_thread_safe && !known_thread_safe(upstream);
  st->upstream_pages = dynamic_cast<page_resource*>(upstream);
  st->knobs = knobs;
  st->self = this;
  st->id = id_;
  std::size_t largest = options.largest_required_pool_block;
  if (largest == 0) largest = std::size_t{32} << 10;
  // Hardened: every object has room for a link and a tag (8-byte requests take 16-byte objects).
  largest = std::clamp<std::size_t>(largest, knobs.hardened ? 16 : 8, max_pool_block);
  st->classes = detail::class_of(largest) + 1;
  // max_blocks_per_chunk is an upper bound (as for the standard pools): a smaller one gives
  // smaller slabs, down to a page.
  const std::size_t most_asked = options.max_blocks_per_chunk;
  std::size_t most_objects = 0;
  const bool colours = detail::header_colours(knobs.checked, knobs.hardened);
  for (int c = 0; c < st->classes; ++c) {
    auto& g = st->geom[static_cast<std::size_t>(c)];
    g.size = detail::class_size_of(c);
    const std::size_t obj_align = std::min(detail::lowest_bit(g.size), detail::max_slab_align);
    g.slab_bytes = std::max(knobs.min_slab_bytes, std::bit_ceil(g.size * 16));
    g.colour_mask = detail::slab_colour_mask(g.slab_bytes, colours);
    std::size_t n = fit(g.slab_bytes, g.size, obj_align, knobs.checked,
                        detail::slab_header_area(g.colour_mask));
    if (most_asked != 0 && n > most_asked) {
      n = most_asked;
      const auto bytes_for = [&](std::uintptr_t mask) {
        return std::max(page_size,
                        std::bit_ceil(detail::slab_header_bytes(n, obj_align, knobs.checked,
                                                                detail::slab_header_area(mask)) +
                                      n * g.size));
      };
      g.slab_bytes = bytes_for(0);
      g.colour_mask = detail::slab_colour_mask(g.slab_bytes, colours);
      if (g.colour_mask) g.slab_bytes = bytes_for(g.colour_mask);  // still >= 64 KiB: coloured
    }
    g.capacity = static_cast<std::uint32_t>(n);
    g.offset = detail::slab_header_bytes(n, obj_align, knobs.checked,
                                         detail::slab_header_area(g.colour_mask));
    g.bitmap_words = knobs.checked ? static_cast<std::uint32_t>((n + 63) / 64) : 0;
    g.cache_limit = static_cast<std::uint32_t>(
        std::clamp<std::size_t>((std::size_t{32} << 10) / g.size, 2, 256));
    // A bin grows up to 256 KiB of objects (at most 2048; eight of a 32 KiB class), so that a
    // thread churning 16-32 KiB objects (up to 64 KiB with a larger largest_required_pool_block)
    // takes a core cache's lock every few objects rather than every second one. Growth across
    // the classes stays within knobs.thread_cache_bytes.
    g.cache_max = std::max<std::uint32_t>(
        g.cache_limit,
        static_cast<std::uint32_t>(std::min<std::size_t>(2048, (std::size_t{256} << 10) / g.size)));
    most_objects = std::max<std::size_t>(most_objects, g.capacity);
    if (std::find(st->slab_sizes.begin(), st->slab_sizes.begin() + st->slab_size_count,
                  g.slab_bytes) == st->slab_sizes.begin() + st->slab_size_count)
      st->slab_sizes[st->slab_size_count++] = g.slab_bytes;
  }
  st->pool.largest_required_pool_block = detail::class_size_of(st->classes - 1);
  st->pool.max_blocks_per_chunk = most_objects;
  st->init_careful();
  BSALLOC_ASSERT(colours == (!knobs.checked && !st->careful), "header colours iff not careful");
  if (st->lean) st->id = hardened_id_;  // its caches: see small_bound_
  const bool inline_path = !knobs.checked && (!st->careful || st->lean);
  init_large_bins(*st, inline_path);
  const std::uint8_t* row = st->wide.data();
  if (st->pool.largest_required_pool_block == (std::size_t{32} << 10))
    row = st->large_bins_on ? detail::wide_row_default.data()
                            : detail::wide_row_default_no_bins.data();
  else
    st->wide = detail::make_wide_row(st->pool.largest_required_pool_block, st->large_bins_on);
  for (std::size_t a = 0; a <= detail::inline_max_align; ++a)
    wide_rows_[a] = detail::power_of_two(a) ? row : detail::wide_row_bad.data();
  if (inline_path) {
    small_bound_ = static_cast<std::uint32_t>(
        std::min(detail::small_max, st->pool.largest_required_pool_block) + 1);
    wide_bound_ = static_cast<std::uint32_t>(
        (st->large_bins_on ? detail::large_runs::max_bytes : st->pool.largest_required_pool_block) +
        1);
  }
  std::size_t n = knobs.caches;
  if (n == 0) n = static_cast<std::size_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_CONF)));
  n = std::min<std::size_t>(n, 4096);
  st->knobs.caches = n;
  st->ncores = n;
  st->cores = std::make_unique<std::atomic<detail::core_cache*>[]>(n);  // created on first use
  slot_ = detail::acquire_slot(st->id);
  st->slot = slot_;
  detail::register_live(*st);
  state_ = st.release();
}

slab_resource::~slab_resource() {
  slab_state& st = *state_;
  detail::unregister_live(st);
  detail::drop_caches(st, true);
  st.free_slabs();
  st.free_large();
  for (std::size_t i = 0; i < st.ncores; ++i) delete st.core_if(i);
  delete state_;
}

std::pmr::memory_resource* slab_resource::upstream_resource() const noexcept {
  return state_->upstream;
}
std::pmr::pool_options slab_resource::options() const noexcept {
  return state_->pool;
}
const slab_resource_options& slab_resource::knobs() const noexcept {
  return state_->knobs;
}

int slab_resource::size_class(std::size_t bytes, std::size_t alignment) noexcept {
  return detail::size_class(bytes, alignment);
}

std::size_t slab_resource::class_size(int cls) noexcept {
  return cls >= 0 && cls < class_count ? detail::class_size_of(cls) : 0;
}

bool slab_resource::large_bins() const noexcept {
  return state_->large_bins_on;
}

std::size_t slab_resource::large_run_size(std::size_t bytes) noexcept {
  using detail::large_runs;
  const std::size_t pages = page_resource::pages_for(bytes);
  if (bytes > large_runs::max_bytes || pages < 2) return 0;  // no bin of one page
  return large_runs::class_pages(pages) * page_size;
}

// ---------------------------------------------------------------------------------------------
// The fast path: thread cache hit. Everything else is in allocate_slow / deallocate_slow
// (src/slab/slow_path.cpp).
// ---------------------------------------------------------------------------------------------

// The bin the inline path serves: small sizes by the small table, the rest up to wide_bound_
// (every slab class, then the large bins up to 256 KiB) by the resource's wide row — one compare
// and one load for every size, whichever front serves it. An alignment that is not a power of
// two finds bad_class, whose bin is always empty and full; so does a size above every slab
// class that no large bin serves.
#define BSALLOC_INLINE_CLASS(bytes, alignment, cls, slow) \
  if ((bytes) < small_bound_) [[likely]]                  \
    cls = detail::small_class(bytes, alignment);          \
  else if ((bytes) < wide_bound_)                         \
    cls = wide_rows_[alignment][((bytes) + 127) >> 7];    \
  else                                                    \
    goto slow

void* slab_resource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (alignment <= detail::inline_max_align) [[likely]] {
    std::size_t cls;
    BSALLOC_INLINE_CLASS(bytes, alignment, cls, slow);
    const detail::tls_slot& s = detail::t_slots[slot_];
    if (s.id == id_) [[likely]] {
      detail::bin& b = s.cache->bins[cls];
      if (void* p = b.head) [[likely]] {
        b.head = detail::link_get(p, 0);
        b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
        BSALLOC_UNPOISON(p, detail::bin_bytes[cls]);
        return p;
      }
    } else if (s.id == hardened_id_) {  // a hardened resource's cache
      return allocate_hardened(bytes, alignment, &s.cache->bins[cls], cls);
    }
  }
slow:
  return allocate_slow(bytes, alignment);
}

void slab_resource::do_deallocate(void* p, std::size_t bytes, std::size_t alignment) {
  if (alignment <= detail::inline_max_align) [[likely]] {
    std::size_t cls;
    BSALLOC_INLINE_CLASS(bytes, alignment, cls, slow);
    const detail::tls_slot& s = detail::t_slots[slot_];
    if (s.id == id_) [[likely]] {
      detail::bin& b = s.cache->bins[cls];
      const std::uint32_t n = b.count.load(std::memory_order_relaxed);
      if (n < b.limit) [[likely]] {
        detail::link_set(p, b.head, 0);
        b.head = p;
        b.count.store(n + 1, std::memory_order_relaxed);
        BSALLOC_POISON_FREE(p, detail::bin_bytes[cls]);
        return;
      }
    } else if (s.id == hardened_id_) {
      return deallocate_hardened(p, bytes, alignment, &s.cache->bins[cls], cls);
    }
  }
slow:
  deallocate_slow(p, bytes, alignment);
}
#undef BSALLOC_INLINE_CLASS

// ---------------------------------------------------------------------------------------------
// Whole-resource operations
// ---------------------------------------------------------------------------------------------

void slab_resource::release() {
  slab_state& st = *state_;
  detail::drop_caches(st, false);
  st.free_slabs();
  st.free_large();  // free_slabs() reset the counts and the peaks
}

std::size_t slab_resource::trim() {
  slab_state& st = *state_;
  std::size_t bytes = 0;
  if (detail::thread_cache* tc = detail::find_cache(st)) bytes += st.flush_cache(*tc);
  bytes += st.drain_and_return_empty();
  if (st.upstream_pages) st.upstream_pages->trim();
  return bytes;
}

}  // namespace bsalloc
