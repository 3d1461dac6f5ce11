// SPDX-License-Identifier: Apache-2.0
// The page layer's memcheck client requests (memcheck.hpp states what they promise).
#include "memcheck.hpp"

#include <cstdlib>
#include <cstring>

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define BSALLOC_PAGE_VALGRIND 1
#endif
#endif
#ifndef BSALLOC_PAGE_VALGRIND
#define BSALLOC_PAGE_VALGRIND 0
#endif

namespace bsalloc::detail {

#if BSALLOC_PAGE_VALGRIND

namespace {
// Memcheck, not any Valgrind tool (callgrind must count the ordinary paths): its preloaded
// library is how a program tells, as the slab layer does (src/slab/hardened.cpp).
bool detect() noexcept {
  if (RUNNING_ON_VALGRIND == 0) return false;
  const char* pre = std::getenv("LD_PRELOAD");
  return pre && std::strstr(pre, "vgpreload_memcheck") != nullptr;
}
}  // namespace

bool pages_memcheck() noexcept {
  static const bool on = detect();
  return on;
}

// Each page_resource is a memcheck memory pool (its address names it), created on its first
// run: a meta pool, since its runs hold the memory pools of the slab layer and object_pool,
// whose chunks (the objects) memcheck then describes and leak-checks, not the runs around them.
void* memcheck_run_out(const void* pool, void* p, std::size_t pages) noexcept {
  if (!p || !pages_memcheck()) return p;
  if (!VALGRIND_MEMPOOL_EXISTS(pool))
    VALGRIND_CREATE_MEMPOOL_EXT(pool, 0, 0, VALGRIND_MEMPOOL_METAPOOL);
  VALGRIND_MEMPOOL_ALLOC(pool, p, pages << page_shift);
  return p;
}

void memcheck_run_in(const void* pool, const void* p) noexcept {
  if (pages_memcheck()) VALGRIND_MEMPOOL_FREE(pool, p);
}

void memcheck_run_resized(const void* pool, const void* p, std::size_t old_pages,
                          std::size_t new_pages) noexcept {
  if (!pages_memcheck()) return;
  const auto* c = static_cast<const char*>(p);
  if (new_pages > old_pages)  // the pages taken are the run's now, not yet written
    VALGRIND_MAKE_MEM_UNDEFINED(c + (old_pages << page_shift), (new_pages - old_pages)
                                                                   << page_shift);
  VALGRIND_MEMPOOL_CHANGE(pool, p, p, new_pages << page_shift);
  if (new_pages < old_pages)  // the tail given back is free pages
    VALGRIND_MAKE_MEM_NOACCESS(c + (new_pages << page_shift), (old_pages - new_pages)
                                                                  << page_shift);
}

void memcheck_pages_free(std::uintptr_t base, std::size_t pages) noexcept {
  if (pages_memcheck()) VALGRIND_MAKE_MEM_NOACCESS(base, pages << page_shift);
}

void memcheck_pages_returned(std::uintptr_t base, std::size_t pages) noexcept {
  if (pages_memcheck()) VALGRIND_MAKE_MEM_DEFINED(base, pages << page_shift);
}

#else  // no <valgrind/memcheck.h>: never under memcheck as far as this build knows

bool pages_memcheck() noexcept {
  return false;
}
void* memcheck_run_out(const void*, void* p, std::size_t) noexcept {
  return p;
}
void memcheck_run_in(const void*, const void*) noexcept {}
void memcheck_run_resized(const void*, const void*, std::size_t, std::size_t) noexcept {}
void memcheck_pages_free(std::uintptr_t, std::size_t) noexcept {}
void memcheck_pages_returned(std::uintptr_t, std::size_t) noexcept {}

#endif

}  // namespace bsalloc::detail
