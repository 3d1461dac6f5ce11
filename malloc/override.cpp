// SPDX-License-Identifier: Apache-2.0
// The replacement of the C allocation API, glibc's __libc_* entry points and every replaceable
// operator new / delete, forwarding to bsalloc_malloc & co. (include/bsalloc/malloc.h). Built
// into libbsalloc_malloc.so (LD_PRELOAD) and into the bsalloc_malloc_override library (linked
// into a program, it replaces malloc at link time). Never part of libbsalloc itself.
#include <bsalloc/malloc.h>

#include <cerrno>
#include <cstddef>
#include <new>

#define BSALLOC_EXPORT extern "C" __attribute__((visibility("default")))

// Its presence tells the engine that malloc is ours, so the next allocator is RTLD_NEXT.
BSALLOC_EXPORT const int bsalloc_malloc_override_linked = 1;

BSALLOC_EXPORT void* malloc(std::size_t size) noexcept {
  return bsalloc_malloc(size);
}
BSALLOC_EXPORT void free(void* p) noexcept {
  bsalloc_free(p);
}
BSALLOC_EXPORT void cfree(void* p) noexcept {
  bsalloc_free(p);
}
BSALLOC_EXPORT void* calloc(std::size_t n, std::size_t size) noexcept {
  return bsalloc_calloc(n, size);
}
BSALLOC_EXPORT void* realloc(void* p, std::size_t size) noexcept {
  return bsalloc_realloc(p, size);
}
BSALLOC_EXPORT void* reallocarray(void* p, std::size_t n, std::size_t size) noexcept {
  return bsalloc_reallocarray(p, n, size);
}
BSALLOC_EXPORT void* aligned_alloc(std::size_t alignment, std::size_t size) noexcept {
  return bsalloc_aligned_alloc(alignment, size);
}
BSALLOC_EXPORT int posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  return bsalloc_posix_memalign(out, alignment, size);
}
BSALLOC_EXPORT void* memalign(std::size_t alignment, std::size_t size) noexcept {
  return bsalloc_memalign(alignment, size);
}
BSALLOC_EXPORT void* valloc(std::size_t size) noexcept {
  return bsalloc_valloc(size);
}
BSALLOC_EXPORT void* pvalloc(std::size_t size) noexcept {
  return bsalloc_pvalloc(size);
}
BSALLOC_EXPORT std::size_t malloc_usable_size(void* p) noexcept {
  return bsalloc_malloc_usable_size(p);
}

// glibc's internal names, which some programs and libraries call directly.
BSALLOC_EXPORT void* __libc_malloc(std::size_t size) noexcept {
  return bsalloc_malloc(size);
}
BSALLOC_EXPORT void __libc_free(void* p) noexcept {
  bsalloc_free(p);
}
BSALLOC_EXPORT void* __libc_calloc(std::size_t n, std::size_t size) noexcept {
  return bsalloc_calloc(n, size);
}
BSALLOC_EXPORT void* __libc_realloc(void* p, std::size_t size) noexcept {
  return bsalloc_realloc(p, size);
}
BSALLOC_EXPORT void* __libc_memalign(std::size_t alignment, std::size_t size) noexcept {
  return bsalloc_memalign(alignment, size);
}
BSALLOC_EXPORT void* __libc_valloc(std::size_t size) noexcept {
  return bsalloc_valloc(size);
}
BSALLOC_EXPORT void* __libc_pvalloc(std::size_t size) noexcept {
  return bsalloc_pvalloc(size);
}
BSALLOC_EXPORT int __posix_memalign(void** out, std::size_t alignment, std::size_t size) noexcept {
  return bsalloc_posix_memalign(out, alignment, size);
}

// -- operator new / delete ---------------------------------------------------------------------
namespace {

// The throwing forms: the installed new-handler is called until it gives up (throws, or there
// is none, then std::bad_alloc).
[[gnu::noinline]] void* new_slow(std::size_t size, std::size_t alignment) {
  for (;;) {
    void* p = alignment <= 16 ? bsalloc_malloc(size) : bsalloc_aligned_alloc(alignment, size);
    if (p) return p;
    std::new_handler h = std::get_new_handler();
    if (!h) throw std::bad_alloc();
    h();
  }
}

inline void* new_plain(std::size_t size) {
  if (void* p = bsalloc_malloc(size)) [[likely]]
    return p;
  return new_slow(size, 16);
}
inline void* new_aligned(std::size_t size, std::align_val_t alignment) {
  const auto a = static_cast<std::size_t>(alignment);
  if (void* p = bsalloc_aligned_alloc(a, size)) [[likely]]
    return p;
  return new_slow(size, a);
}
inline void* new_nothrow(std::size_t size, std::size_t alignment) noexcept {
  try {
    return new_slow(size, alignment);
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

#define BSALLOC_NEW_EXPORT __attribute__((visibility("default")))

BSALLOC_NEW_EXPORT void* operator new(std::size_t size) {
  return new_plain(size);
}
BSALLOC_NEW_EXPORT void* operator new[](std::size_t size) {
  return new_plain(size);
}
BSALLOC_NEW_EXPORT void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  if (void* p = bsalloc_malloc(size)) [[likely]]
    return p;
  return new_nothrow(size, 16);
}
BSALLOC_NEW_EXPORT void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  if (void* p = bsalloc_malloc(size)) [[likely]]
    return p;
  return new_nothrow(size, 16);
}
BSALLOC_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t alignment) {
  return new_aligned(size, alignment);
}
BSALLOC_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t alignment) {
  return new_aligned(size, alignment);
}
BSALLOC_NEW_EXPORT void* operator new(std::size_t size, std::align_val_t alignment,
                                      const std::nothrow_t&) noexcept {
  return new_nothrow(size, static_cast<std::size_t>(alignment));
}
BSALLOC_NEW_EXPORT void* operator new[](std::size_t size, std::align_val_t alignment,
                                        const std::nothrow_t&) noexcept {
  return new_nothrow(size, static_cast<std::size_t>(alignment));
}

BSALLOC_NEW_EXPORT void operator delete(void* p) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete[](void* p) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete(void* p, const std::nothrow_t&) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete[](void* p, const std::nothrow_t&) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete(void* p, std::size_t) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete[](void* p, std::size_t) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete(void* p, std::align_val_t) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete[](void* p, std::align_val_t) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  bsalloc_free(p);
}
BSALLOC_NEW_EXPORT void operator delete[](void* p, std::align_val_t,
                                          const std::nothrow_t&) noexcept {
  bsalloc_free(p);
}
