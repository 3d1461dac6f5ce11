// SPDX-License-Identifier: Apache-2.0
#pragma once
// The page layer under memcheck (Valgrind). Built when <valgrind/memcheck.h> exists (memcheck.cpp),
// active only when the program runs under memcheck (decided once per process); otherwise every
// hook is one test of a cached flag, and each sits on a slow path (a locked allocation or free,
// a region added or removed). Under memcheck:
//   M1  a page_resource has no run cache (no run waits in a bin: the constructor asks
//       pages_memcheck()), so every run goes through the buddy lists, where the hooks are;
//   M2  a run handed out is a malloc-like block of its pages (a chunk of the resource's memcheck
//       memory pool, a meta pool: see memcheck.cpp): a run leaked is reported as lost, a read or
//       write of a freed run is an invalid access, both with the stacks of the allocation and
//       the free;
//   M3  free pages are no-access from the moment a region joins the resource; the per-page
//       metadata lies outside [base, base + pages * page_size) and stays accessible;
//   M4  a region that leaves (destructor, release(), trim()) first frees the blocks of runs still
//       live in it (no false leak, no stale block), then its pages are defined again if they are
//       the caller's memory (add_region), or left to the unmap.
// Objects carved from a run (slab_resource's and object_pool's memory pools) nest inside its
// block: memcheck describes and leak-checks the inner chunks, not the run. The first run of a
// region is pointed at by the region's record (its base): leaked, it is "still reachable".
#include <cstddef>
#include <cstdint>

#include "internal.hpp"

namespace bsalloc::detail {

/// Running under memcheck (the first call decides, for the process).
bool pages_memcheck() noexcept;
/// M2: run p of `pages` pages is handed out by page_resource `pool`; returns p.
void* memcheck_run_out(const void* pool, void* p, std::size_t pages) noexcept;
/// M2: run p goes back to the buddy lists.
void memcheck_run_in(const void* pool, const void* p) noexcept;
/// M2: run p, still live, resized in place.
void memcheck_run_resized(const void* pool, const void* p, std::size_t old_pages,
                          std::size_t new_pages) noexcept;
/// M3: pages [base, base + pages * page_size) are free (no-access) / the caller's again.
void memcheck_pages_free(std::uintptr_t base, std::size_t pages) noexcept;
void memcheck_pages_returned(std::uintptr_t base, std::size_t pages) noexcept;

/// M4: region r leaves the resource (or is reset by release(), `kept`): the blocks of its live
/// runs are freed; its pages become no-access (kept), the caller's (a caller's region), or are
/// left to the unmap (an OS region).
template <class Region>
void memcheck_region_gone(const void* pool, const Region& r, bool kept) noexcept {
  if (!pages_memcheck() || r.meta == nullptr) return;
  // A wholly free region has no run to free (and trim() unmaps it, metadata included, first).
  for (std::uint32_t q = 0; r.free_pages != r.pages && q < r.pages; ++q)
    if (r.meta[q].state == meta_allocated && (r.meta[q].flags & flag_run_head))
      memcheck_run_in(pool,
                      reinterpret_cast<const void*>(r.base + (std::uintptr_t{q} << page_shift)));
  if (kept)
    memcheck_pages_free(r.base, r.pages);
  else if (!r.os_backed)
    memcheck_pages_returned(r.base, r.pages);
}

}  // namespace bsalloc::detail
