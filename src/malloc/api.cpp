// SPDX-License-Identifier: Apache-2.0
// bsalloc_malloc & co.: the process allocator's entry points (include/bsalloc/malloc.h). The
// replacement (malloc/override.cpp) forwards malloc, free, ... and operator new/delete here.
//
//   bsalloc_malloc  up to 64 KiB: a thread-cache hit inline (fast.hpp); a miss takes the slab
//                   layer's path with the re-entrancy flag set around it; the rest allocate_cold.
//   bsalloc_free    the page map names the owner; a slab page: the class from the slab header,
//                   a push onto the thread cache's bin inline (fast.hpp), else the slab layer's
//                   path; everything else in release_cold.
#include <bsalloc/malloc.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <new>

#include "../page/internal.hpp"
#include "../slab/unsized.hpp"
#include "engine.hpp"
#include "fast.hpp"

using namespace bsalloc;
using namespace bsalloc::detail::mx;
using bsalloc::detail::page_map_find;

namespace {

void* allocate_aligned(std::size_t bytes, std::size_t alignment) noexcept {
  if (alignment <= min_align) return bsalloc_malloc(bytes);
  return allocate_cold(bytes, alignment);
}

// Usable bytes at p, which the page map says is in `owner` (one of e's page resources).
std::size_t usable_in(engine& e, const page_resource* owner, void* p, const char* call) {
  if (owner == &e.slab_pages) {
    if (e.checked && detail::unsized_checked_request(p, slab_bytes, &e.small).alignment == 0)
      bad_pointer(call, p, "not a live allocation of bsalloc (foreign pointer or double free)");
    return detail::unsized_class_bytes(p, slab_bytes, e.colours);
  }
  busy_scope busy;
  try {
    return e.large_pages.usable_size(p);
  } catch (const std::exception& x) {
    bad_pointer(call, p, x.what());
  }
}

// malloc when the inline path missed: the slab layer's own path (a refill, a first call of this
// thread), with the re-entrancy flag set around it; else allocate_cold.
[[gnu::noinline]] void* malloc_miss(std::size_t size) noexcept {
  if (size <= max_small && !t_busy) [[likely]] {
    if (engine* e = g_engine.load(std::memory_order_acquire)) [[likely]] {
      t_busy = true;
      try {
        void* p = e->small.take(size, min_align);
        t_busy = false;
        return p;
      } catch (...) {
        t_busy = false;
        errno = ENOMEM;
        return nullptr;
      }
    }
  }
  return allocate_cold(size, min_align);
}

// free when the inline path did not take p. On the engine's slab pages (a full bin, no cache
// yet, hardened mode, a re-entrant call): the slab layer's own path; else release_cold.
[[gnu::noinline]] void free_miss(void* p) noexcept {
  if (reinterpret_cast<std::uintptr_t>(page_map_find(p).owner) !=
          g_fast_owner.load(std::memory_order_acquire) ||
      t_busy)
    return release_cold(p);
  t_busy = true;
  engine* const e = g_engine.load(std::memory_order_relaxed);
  e->small.give(p, detail::unsized_class_bytes(p, slab_bytes, e->colours), min_align);
  t_busy = false;
}

}  // namespace

extern "C" {

void* bsalloc_malloc(std::size_t size) noexcept {
  if (size <= max_small) [[likely]]
    if (void* p = fast_malloc(size)) [[likely]]
      return p;
  return malloc_miss(size);
}

void bsalloc_free(void* p) noexcept {
  if (fast_owned(p) && fast_free(p)) [[likely]]
    return;
  free_miss(p);
}

void* bsalloc_calloc(std::size_t n, std::size_t size) noexcept {
  std::size_t bytes;
  if (__builtin_mul_overflow(n, size, &bytes)) {
    errno = ENOMEM;
    return nullptr;
  }
  void* p = bsalloc_malloc(bytes);
  if (p) std::memset(p, 0, bytes);
  return p;
}

void* bsalloc_realloc(void* p, std::size_t size) noexcept {
  if (!p) return bsalloc_malloc(size);
  if (size == 0) {  // glibc: frees, returns NULL
    bsalloc_free(p);
    return nullptr;
  }
  const page_resource* owner = page_map_find(p).owner;
  engine* e = g_engine.load(std::memory_order_acquire);
  if (!owner || !e || (owner != &e->slab_pages && owner != &e->large_pages)) {
    if (in_bootstrap_arena(p)) {  // never freed; its contents move
      void* q = bsalloc_malloc(size);
      if (q) std::memcpy(q, p, std::min(size, bootstrap_size(p)));
      return q;
    }
    if (!e && !t_busy) e = start();
    if (!owner && g_next.realloc) return g_next.realloc(p, size);  // a foreign pointer
    bad_pointer("realloc", p, "not bsalloc's, and no next allocator owns it");
  }
  const std::size_t old = usable_in(*e, owner, p, "realloc");
  if (size > (page_size << max_order)) {  // no run holds it: p untouched
    errno = ENOMEM;
    return nullptr;
  }
  if (owner == &e->slab_pages) {
    // In place within the same class (any request of alignment 16 that maps to it).
    if (size <= old &&
        slab_resource::size_class(size, min_align) == slab_resource::size_class(old, min_align))
      return p;
  } else if (size > max_small) {
    // A run: the same page count, a shrink (the tail goes back), or a grow into the free buddy
    // pages right after it.
    const std::size_t pages = page_resource::pages_for(size);
    if (pages == old / page_size) return p;
    busy_scope busy;
    try {
      if (e->large_pages.resize_pages(p, old / page_size, pages)) return p;
    } catch (const std::exception& x) {
      bad_pointer("realloc", p, x.what());
    }
  }
  void* q = bsalloc_malloc(size);
  if (!q) return nullptr;                  // p untouched; errno is ENOMEM
  std::memcpy(q, p, std::min(old, size));  // only what was there
  bsalloc_free(p);
  return q;
}

void* bsalloc_reallocarray(void* p, std::size_t n, std::size_t size) noexcept {
  std::size_t bytes;
  if (__builtin_mul_overflow(n, size, &bytes)) {
    errno = ENOMEM;
    return nullptr;
  }
  return bsalloc_realloc(p, bytes);
}

void* bsalloc_memalign(std::size_t alignment, std::size_t size) noexcept {
  // glibc: an alignment that is not a power of two is rounded up to one; tiny ones are 16.
  if (alignment > (std::size_t{1} << 62)) {
    errno = EINVAL;
    return nullptr;
  }
  if (!detail::power_of_two(alignment)) alignment = std::bit_ceil(alignment);
  return allocate_aligned(size, alignment);
}

void* bsalloc_aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  if (!detail::power_of_two(alignment)) {  // as glibc 2.38 does
    errno = EINVAL;
    return nullptr;
  }
  return allocate_aligned(size, alignment);
}

int bsalloc_posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  if (!detail::power_of_two(alignment) || alignment % sizeof(void*) != 0) return EINVAL;
  const int saved = errno;
  void* p = allocate_aligned(size, alignment);
  if (!p) {
    errno = saved;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

void* bsalloc_valloc(std::size_t size) noexcept {
  return allocate_aligned(size, page_size);
}

void* bsalloc_pvalloc(std::size_t size) noexcept {
  if (size > ~std::size_t{0} - page_size) {
    errno = ENOMEM;
    return nullptr;
  }
  return allocate_aligned(size == 0 ? page_size : detail::round_up(size, page_size), page_size);
}

std::size_t bsalloc_malloc_usable_size(void* p) noexcept {
  if (!p) return 0;
  const page_resource* owner = page_map_find(p).owner;
  engine* e = g_engine.load(std::memory_order_acquire);
  if (!e && !t_busy) e = start();  // a foreign pointer before the first malloc: find the next
  if (e && (owner == &e->slab_pages || owner == &e->large_pages))
    return usable_in(*e, owner, p, "malloc_usable_size");
  if (in_bootstrap_arena(p)) return bootstrap_size(p);
  if (!owner && g_next.usable_size) return g_next.usable_size(p);
  bad_pointer("malloc_usable_size", p, "not bsalloc's, and no next allocator owns it");
}

}  // extern "C"
