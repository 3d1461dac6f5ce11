// SPDX-License-Identifier: Apache-2.0
#pragma once
// The process allocator behind bsalloc_malloc & co. (and behind malloc / operator new when they
// are replaced): one slab_resource over a page_resource for requests up to 64 KiB, and a second
// page_resource for larger (or more aligned) blocks, built lazily in static storage on the first
// call and never destroyed.
//
// The hot paths (a thread-cache hit for malloc and free) are inline in the C API, on the slab
// layer's structures: src/malloc/fast.hpp.
//
// free(p) without a size: the page map says in O(1) whose page p is on —
//   the slab pages   a slab object: every slab is slab_bytes (1 MiB) big and aligned to it, so
//                    its header is at p & ~(slab_bytes - 1) plus its colour (engine::colours,
//                    slab_core.hpp) and names the class;
//   the large pages  the start of a run: deallocate_run(p);
//   nobody           a foreign pointer: handed to the next allocator (dlsym(RTLD_NEXT, ...)).
//
// Re-entrancy. bsalloc's own code allocates (thread and core caches, stats, the loader's dlsym,
// the C++ runtime's TLS destructor list): with malloc replaced, those calls come back here while
// this thread is inside bsalloc, maybe holding one of its locks. A thread-local flag, t_busy, is
// set around every call into the slab and page layers; a call that finds it set goes to the
// next allocator (or, before that is known, to a small static bump arena whose pointers free()
// recognises by address and ignores). Their frees find foreign pointers and follow them there.
//
// Invariants
//   E1  g_engine is null until the engine is fully built, then constant.
//   E2  every pointer handed out is in slab_pages (a slab object) or large_pages (a run start),
//       or came from the next allocator / the bootstrap arena while t_busy was set.
//   E3  t_busy is false whenever this thread is outside bsalloc.
#include <bsalloc/detail/config.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace bsalloc::detail::mx {

constexpr std::size_t slab_bytes = std::size_t{1} << 20;          // every slab of the engine
constexpr std::size_t max_small = slab_resource::max_pool_block;  // 64 KiB: the largest class
constexpr std::size_t min_align = 16;                             // what malloc promises

/// The slab_resource with its fast paths callable directly (no virtual call).
class slabs final : public slab_resource {
 public:
  using slab_resource::slab_resource;
  void* take(std::size_t bytes, std::size_t alignment) {
    return slab_resource::do_allocate(bytes, alignment);
  }
  void give(void* p, std::size_t bytes, std::size_t alignment) {
    slab_resource::do_deallocate(p, bytes, alignment);
  }
};

struct engine {
  page_resource slab_pages;
  page_resource large_pages;
  slabs small;
  bool checked;
  std::uintptr_t colours;  // small's header colours (slab_core.hpp): one slab size, one mask
  engine(const page_resource_options& slab_opts, const page_resource_options& large_opts,
         const slab_resource_options& knobs);
};

/// The next allocator in the chain (glibc's, usually): what foreign pointers are handed to.
struct next_allocator {
  void* (*malloc)(std::size_t) = nullptr;
  void (*free)(void*) = nullptr;
  void* (*calloc)(std::size_t, std::size_t) = nullptr;
  void* (*realloc)(void*, std::size_t) = nullptr;
  void* (*memalign)(std::size_t, std::size_t) = nullptr;
  std::size_t (*usable_size)(void*) = nullptr;
};

extern std::atomic<engine*> g_engine;  // E1
/// &g_engine->slab_pages once built, unless checked mode sends every free to release_cold;
/// no_owner (an address no page_resource has) before: the fast free path compares the page
/// map's answer with it, nothing else.
constexpr std::uintptr_t no_owner = 1;
extern std::atomic<std::uintptr_t> g_fast_owner;
extern next_allocator g_next;
extern thread_local constinit bool t_busy __attribute__((tls_model(BSALLOC_TLS_MODEL)));

/// Scope of a call into the slab / page layers (E3).
struct busy_scope {
  busy_scope() noexcept : was(t_busy) { t_busy = true; }
  ~busy_scope() { t_busy = was; }
  bool was;
  busy_scope(const busy_scope&) = delete;
  busy_scope& operator=(const busy_scope&) = delete;
};

/// Builds the engine if nobody has (other threads wait); null if this thread is building it.
[[gnu::noinline]] engine* start() noexcept;

// The cold paths (engine.cpp).
[[gnu::noinline]] void* allocate_cold(std::size_t bytes, std::size_t alignment) noexcept;
[[gnu::noinline]] void release_cold(void* p) noexcept;
/// A block for a call made while this thread is inside bsalloc (or before the engine exists).
void* side_allocate(std::size_t bytes, std::size_t alignment) noexcept;
bool in_bootstrap_arena(const void* p) noexcept;
std::size_t bootstrap_size(const void* p) noexcept;  // bytes usable at an arena pointer
[[noreturn]] void bad_pointer(const char* call, const void* p, const char* why) noexcept;

}  // namespace bsalloc::detail::mx
