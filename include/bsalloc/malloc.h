/* SPDX-License-Identifier: Apache-2.0 */
#ifndef BSALLOC_MALLOC_H
#define BSALLOC_MALLOC_H
/* bsalloc's C allocation API under its own names: always in libbsalloc, whether or not malloc
 * itself is replaced (libbsalloc_malloc.so by LD_PRELOAD, or bsalloc::malloc_override at link
 * time, which forward malloc, free, ... and operator new/delete here). C and C++.
 *
 * The semantics are C's and glibc's: a failure returns NULL with errno = ENOMEM (EINVAL for a
 * bad alignment of aligned_alloc / memalign); posix_memalign returns the error and leaves *out
 * untouched; malloc(0) is a unique pointer; free(NULL) does nothing; realloc(p, 0) frees p and
 * returns NULL (glibc's choice). A pointer bsalloc did not hand out is passed to the next
 * allocator in the chain (dlsym(RTLD_NEXT, "free") ...). See docs/malloc.md. */
#include <stddef.h>

#ifdef __cplusplus
#define BSALLOC_C_NOEXCEPT noexcept
extern "C" {
#else
#define BSALLOC_C_NOEXCEPT
#endif

void* bsalloc_malloc(size_t size) BSALLOC_C_NOEXCEPT;
void bsalloc_free(void* p) BSALLOC_C_NOEXCEPT;
void* bsalloc_calloc(size_t n, size_t size) BSALLOC_C_NOEXCEPT;
void* bsalloc_realloc(void* p, size_t size) BSALLOC_C_NOEXCEPT;
void* bsalloc_reallocarray(void* p, size_t n, size_t size) BSALLOC_C_NOEXCEPT;
void* bsalloc_aligned_alloc(size_t alignment, size_t size) BSALLOC_C_NOEXCEPT;
int bsalloc_posix_memalign(void** out, size_t alignment, size_t size) BSALLOC_C_NOEXCEPT;
void* bsalloc_memalign(size_t alignment, size_t size) BSALLOC_C_NOEXCEPT;
void* bsalloc_valloc(size_t size) BSALLOC_C_NOEXCEPT;
void* bsalloc_pvalloc(size_t size) BSALLOC_C_NOEXCEPT;
size_t bsalloc_malloc_usable_size(void* p) BSALLOC_C_NOEXCEPT;

/* Prints the process allocator's stats (slab layer and page layer) to stderr: the table, or
 * JSON when json != 0 (what BSALLOC_STATS=1 / BSALLOC_STATS=json print at exit). */
void bsalloc_malloc_stats_print(int json) BSALLOC_C_NOEXCEPT;
/* Objects the process allocator's slab layer holds for users now, and large blocks: a cheap
 * way for a program (or a test) to see that bsalloc serves its calls. */
size_t bsalloc_malloc_objects_in_use(void) BSALLOC_C_NOEXCEPT;
size_t bsalloc_malloc_large_in_use(void) BSALLOC_C_NOEXCEPT;
/* Verifies the process allocator's invariants (E1-E3 of src/malloc/engine.hpp as far as they
 * can be seen, the slab layer's S1-S4, T1, L1 and both page resources' I1-I10); on a broken one
 * prints it on stderr and aborts. No other thread may use the allocator meanwhile (tests). */
void bsalloc_malloc_check_invariants(void) BSALLOC_C_NOEXCEPT;
/* Whether p is memory of the process allocator (not a foreign pointer). O(1), no lock. */
int bsalloc_malloc_owns(const void* p) BSALLOC_C_NOEXCEPT;

#ifdef __cplusplus
}
#endif

#endif /* BSALLOC_MALLOC_H */
