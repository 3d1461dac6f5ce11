// SPDX-License-Identifier: Apache-2.0
// bsalloc::page_resource — see include/bsalloc/page_resource.hpp for the glossary and
// invariants, src/page/internal.hpp for how the page layer is split into files. This file:
// construction, regions, and the public allocate / deallocate / lookup entry points.
#include <bsalloc/out_of_memory.hpp>
#include <bsalloc/page_resource.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

#include "page/internal.hpp"
#include "page/memcheck.hpp"

namespace bsalloc {
using namespace detail;

page_resource::page_resource() : page_resource(page_resource_options{}) {}

page_resource::page_resource(const page_resource_options& options) : options_(options) {
  if (static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)) != page_size)
    throw std::runtime_error("bsalloc::page_resource: the OS page size is not 4 KiB");
  if (options_.cache_bytes_per_core > 0 && !detail::pages_memcheck()) {  // memcheck.hpp M1
    const long n = ::sysconf(_SC_NPROCESSORS_CONF);
    core_count_ = static_cast<std::size_t>(std::clamp<long>(n, 1, 1024));
    cores_ = std::make_unique<core_cache[]>(core_count_);
    cache_page_limit_ = options_.cache_bytes_per_core >> page_shift;
  }
  register_resource(this);
  if (options_.background_purge) {
    try {
      start_purger();
    } catch (...) {
      unregister_resource(this);
      throw;
    }
  }
}

page_resource::page_resource(std::span<std::byte> buffer)
    : page_resource(
          page_resource_options{.os_region_bytes = 0, .retain_bytes = 0, .grow_from_os = false}) {
  // The delegated-to constructor has finished: if add_region throws, the destructor runs and
  // unregisters this resource (once).
  add_region(buffer);
}

page_resource::~page_resource() {
  stop_purger();
  unregister_resource(this);
  std::unique_lock lock(mutex_);
  purge_done_.wait(lock, [&] { return !purge_running_; });
  for (std::size_t ri = 0; ri < max_regions; ++ri) {
    if (!regions_[ri].in_use) continue;
    region r = regions_[ri];
    remove_region(ri);
    if (r.os_backed) unmap_region(r);
  }
}

// ---------------------------------------------------------------------------------------------
// Allocation
// ---------------------------------------------------------------------------------------------

void* page_resource::allocate_pages(std::size_t count, std::size_t alignment,
                                    page_constraint where) {
  // Fast path: a cached run of exactly `count` pages, page alignment, no constraint. Alignment
  // 0 (alignment - 1 wraps) takes the slow path, which refuses it.
  if (cores_ && count - 1 < max_cached_run_pages && alignment - 1 < page_size &&
      (alignment & (alignment - 1)) == 0 && where.region == any_region &&
      where.below == std::numeric_limits<std::uintptr_t>::max())
    if (void* p = cache_take(count)) return p;
  return allocate_slow(count, alignment, where);
}

void* page_resource::allocate_slow(std::size_t count, std::size_t alignment,
                                   page_constraint where) {
  return detail::allocate_or_report(
      "page_resource", "", this, count > SIZE_MAX / page_size ? SIZE_MAX : count * page_size,
      alignment, [&] { return allocate_attempt(count, alignment, where); },
      [this] { return to_string(stats()); });
}

void* page_resource::allocate_attempt(std::size_t count, std::size_t alignment,
                                      page_constraint where) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    throw std::invalid_argument(
        fmt::format("bsalloc::page_resource: alignment {} is not a power of two", alignment));
  if (count == 0) count = 1;
  alignment = std::max(alignment, page_size);
  if (count > (std::size_t{1} << max_order) || alignment > (page_size << max_order))
    throw std::bad_alloc();
  const unsigned order = std::max<unsigned>(
      run_order(count), static_cast<unsigned>(std::countr_zero(alignment)) - page_shift);
  const bool unconstrained =
      where.region == any_region && where.below == std::numeric_limits<std::uintptr_t>::max();
  // A cached run of `count` pages is aligned to 2^run_order(count) pages (its buddy block).
  if (cores_ && unconstrained && count <= max_cached_run_pages && order == run_order(count) &&
      alignment > page_size)
    if (void* p = cache_take(count)) return p;
  if (where.region != any_region) {
    std::lock_guard lock(mutex_);
    if (where.region >= max_regions || !regions_[where.region].in_use)
      throw std::invalid_argument(
          fmt::format("bsalloc::page_resource: no region with index {}", where.region));
  }
  const bool may_grow = options_.grow_from_os && unconstrained;
  bool drained = !cores_;
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      void* span = nullptr;  // a big run from adjacent resident blocks first (buddy.cpp)
      if (unconstrained && alignment == page_size && take_span_locked(count, span)) return span;
      if (void* p = try_allocate_locked(count, order, where)) return p;
    }
    if (!drained) {  // cached runs first: cheaper than a new region, and all a buffer has
      drained = true;
      drain_caches(true);
      continue;
    }
    if (!may_grow) throw std::bad_alloc();
    // A new region, and the run from it in the same critical section: a trim() on another
    // thread cannot unmap it as wholly free in between.
    return grow(count, order);
  }
}

void page_resource::throw_bad_pointer(const char* what, const void* p, std::size_t count,
                                      const char* why) {
  if (count == 0)
    throw std::invalid_argument(fmt::format("bsalloc::page_resource: {}({}): {}", what, p, why));
  throw std::invalid_argument(
      fmt::format("bsalloc::page_resource: {}({}, {}): {}", what, p, count, why));
}

void page_resource::throw_bad_pointer(const void* p, std::size_t count, const char* why) const {
  throw_bad_pointer("deallocate_pages", p, count, why);
}

std::uint32_t page_resource::checked_run(std::uintptr_t addr, std::size_t count, std::size_t& ri,
                                         const char* what) const {
  const void* p = reinterpret_cast<const void*>(addr);
  ri = region_of(addr);
  if (ri == any_region)
    throw_bad_pointer(what, p, count, "pointer is not in any region of this resource");
  if (addr % page_size != 0) throw_bad_pointer(what, p, count, "pointer is not page aligned");
  const region& r = regions_[ri];
  const auto index = static_cast<std::uint32_t>((addr - r.base) >> page_shift);
  const page_meta& m = r.meta[index];
  if (m.state != meta_allocated) {
    const auto b = find_block_locked(p);
    if (b && b->state == block_state::allocated)
      throw_bad_pointer(what, p, count,
                        "pointer is inside an allocation, not its start (a tail pointer)");
    throw_bad_pointer(what, p, count, "not an allocated block (double free or foreign pointer)");
  }
  if (!(m.flags & flag_run_head))
    throw_bad_pointer(what, p, count,
                      "pointer is inside an allocation, not its start (a tail pointer)");
  if (run_mark(m.run) != run_live)  // cached, or being freed by another thread
    throw_bad_pointer(what, p, count, "the run was already freed (double free)");
  if (count != 0 && m.next != count)
    throw_bad_pointer(
        what, p, count,
        fmt::format("the page count does not match the allocation ({} pages)", m.next).c_str());
  return index;
}

void page_resource::deallocate_pages(void* p, std::size_t count) {
  if (count == 0) count = 1;
  // Fast path: p is the head of a live run (the page map says the page is ours, its run mark
  // says live), to the run cache, which claims the run (mark live -> cached) and checks the
  // count. Anything else, a lost claim included, goes to the slow path, which names it.
  if (cores_ && count <= max_cached_run_pages) {
    const page_map_hit hit = page_map_find(p);
    if (hit.owner == this) [[likely]] {
      const region& r = regions_[hit.region];
      const auto addr = reinterpret_cast<std::uintptr_t>(p);
      page_meta& m = r.meta[(addr - r.base) >> page_shift];
      // Only runs aligned to their buddy block are cached (C3: the aligned path of
      // allocate_attempt relies on it); a run resized in place may start lower, and goes back
      // to the buddy lists.
      if ((addr & ((page_size << detail::run_order(count)) - 1)) == 0 &&
          run_mark(m.run) == run_live && cache_put(p, count, &m))
        return;
    }
  }
  deallocate_slow(p, count);
}

void page_resource::deallocate_slow(void* p, std::size_t count) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  bool purge_now;
  {
    std::lock_guard lock(mutex_);
    std::size_t ri;
    const std::uint32_t index = checked_run(addr, count, ri, "deallocate_pages");
    claim_run(regions_[ri], index, p, count, "deallocate_pages");
    free_run_locked(regions_[ri], index, static_cast<std::uint32_t>(count));
    purge_now = should_purge_locked();
  }
  if (purge_now) purge(options_.retain_bytes / 2, policy_min_order());
}

std::size_t page_resource::live_run_pages(const void* p) const noexcept {
  // Without the lock: the head of a live run does not change until its owner frees it.
  const page_map_hit hit = page_map_find(p);
  if (hit.owner != this) return 0;
  const region& r = regions_[hit.region];
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const page_meta& m = r.meta[(addr - r.base) >> page_shift];
  // The mark first: live only on a live run head, whose count its user's calls keep stable.
  if (addr % page_size != 0 || run_mark(m.run) != run_live) return 0;
  return m.next;
}

void page_resource::deallocate_run(void* p) {
  std::size_t count = live_run_pages(p);
  if (count == 0) {  // not a live run head: the locked check names the problem
    std::lock_guard lock(mutex_);
    std::size_t ri;
    checked_run(reinterpret_cast<std::uintptr_t>(p), 0, ri, "deallocate_run");
    count = regions_[ri]
                .meta[(reinterpret_cast<std::uintptr_t>(p) - regions_[ri].base) >> page_shift]
                .next;
  }
  deallocate_pages(p, count);
}

void* page_resource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (bytes > (page_size << max_order)) throw std::bad_alloc();
  return allocate_pages(class_pages(pages_for(bytes)), alignment);
}

void page_resource::do_deallocate(void* p, std::size_t bytes, std::size_t) {
  if (bytes > (page_size << max_order)) throw_bad_pointer(p, bytes, "byte count is impossible");
  deallocate_pages(p, class_pages(pages_for(bytes)));
}

// ---------------------------------------------------------------------------------------------
// Lookup
// ---------------------------------------------------------------------------------------------

page_resource* page_resource::owner_of(const void* p) noexcept {
  return page_map_find(p).owner;
}

std::size_t page_resource::usable_size(const void* p) const {
  if (const std::size_t n = live_run_pages(p)) return n << page_shift;
  std::size_t ri;
  std::lock_guard lock(mutex_);
  const std::uint32_t index =
      checked_run(reinterpret_cast<std::uintptr_t>(p), 0, ri, "usable_size");
  return std::size_t{regions_[ri].meta[index].next} << page_shift;
}

std::optional<block_info> page_resource::find_block(const void* p) const {
  std::lock_guard lock(mutex_);
  return find_block_locked(p);
}

std::optional<run_info> page_resource::find_run(const void* p) const {
  std::lock_guard lock(mutex_);
  const auto b = find_block_locked(p);
  if (!b || b->state != block_state::allocated) return std::nullopt;
  const region& r = regions_[b->region];
  const auto index = static_cast<std::uint32_t>(
      (reinterpret_cast<std::uintptr_t>(b->head) - r.base) >> page_shift);
  const page_meta& head = r.meta[r.meta[index].prev];
  return run_info{reinterpret_cast<void*>(page_addr(r, r.meta[index].prev)), head.next, b->region,
                  run_mark(head.run) == run_cached, run_mark(head.run) == run_parked};
}

std::optional<block_info> page_resource::find_block_locked(const void* p) const {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const std::size_t ri = region_of(addr);
  if (ri == any_region) return std::nullopt;
  const region& r = regions_[ri];
  const std::uint64_t base_pfn = pfn(r.base);
  const std::uint64_t abs = pfn(addr);
  // The owning block's head is abs rounded down to 2^k for its order k; heads of smaller
  // candidates lie inside that block and carry no head state (I1), so the first head wins.
  for (unsigned k = 0; k <= max_order; ++k) {
    const std::uint64_t head_abs = abs & ~((std::uint64_t{1} << k) - 1);
    if (head_abs < base_pfn) break;
    const page_meta& m = r.meta[head_abs - base_pfn];
    if (m.state == meta_none) continue;
    const auto state = m.state == meta_free      ? block_state::free
                       : m.state == meta_purging ? block_state::purging
                                                 : block_state::allocated;
    const bool cached = m.state == meta_allocated && run_mark(r.meta[m.prev].run) == run_cached;
    return block_info{reinterpret_cast<void*>(head_abs << page_shift),
                      m.order,
                      state,
                      bool(m.flags & flag_continued),
                      ri,
                      cached};
  }
  return std::nullopt;
}

namespace detail {
std::mutex global_page_resource_mutex;
}  // namespace detail

namespace {
alignas(page_resource) std::byte global_storage[sizeof(page_resource)];
std::atomic<page_resource*> global_instance{nullptr};

[[gnu::noinline]] page_resource& build_global_page_resource() noexcept {
  detail::install_page_fork_handlers();
  std::lock_guard lock(detail::global_page_resource_mutex);
  page_resource* r = global_instance.load(std::memory_order_relaxed);
  if (r == nullptr) {
    r = ::new (global_storage)
        page_resource(page_resource_options{.cache_bytes_per_core = global_cache_bytes_per_core});
    global_instance.store(r, std::memory_order_release);
  }
  return *r;
}
}  // namespace

page_resource& global_page_resource() noexcept {
  page_resource* const r = global_instance.load(std::memory_order_acquire);
  return r ? *r : build_global_page_resource();
}

}  // namespace bsalloc
