// SPDX-License-Identifier: Apache-2.0
// The process allocator's cold half: building the engine (environment options, the next
// allocator), the bootstrap arena, the slow allocate / free paths, foreign pointers and stats.
// The hot entry points are in api.cpp. See engine.hpp for the design and invariants.
#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>

#include <bsalloc/malloc.h>
#include <fmt/format.h>

#include "../page/internal.hpp"
#include "../slab/unsized.hpp"
#include "engine.hpp"
#include "fast.hpp"
#include "options.hpp"

// Defined by the replacement (malloc/override.cpp) when it is linked into the same object as
// this file: then the next allocator is the one after us (RTLD_NEXT); without it, malloc is
// not ours and the next allocator is the process's own malloc (RTLD_DEFAULT), e.g. a
// sanitizer's.
extern "C" {
[[gnu::weak]] extern const int bsalloc_malloc_override_linked;
}

namespace bsalloc::detail::mx {

std::atomic<engine*> g_engine{nullptr};
std::atomic<std::uintptr_t> g_fast_owner{no_owner};
fast_state g_fast;
next_allocator g_next;
thread_local constinit bool t_busy __attribute__((tls_model(BSALLOC_TLS_MODEL))) = false;

namespace {

std::atomic<int> g_state{0};  // 0: not built, 1: being built, 2: built
alignas(engine) std::byte g_storage[sizeof(engine)];
int g_stats_mode = 0;  // 0 none, 1 table, 2 JSON (BSALLOC_STATS)

// -- bootstrap arena: calls while the next allocator is not known yet (dlsym itself allocates) --
constexpr std::size_t arena_bytes = std::size_t{256} << 10;
alignas(4096) std::byte g_arena[arena_bytes];
std::atomic<std::size_t> g_arena_used{0};

void* arena_allocate(std::size_t bytes, std::size_t alignment) noexcept {
  if (alignment < min_align) alignment = min_align;
  if (bytes > arena_bytes || alignment > 4096) return nullptr;
  std::size_t used = g_arena_used.load(std::memory_order_relaxed);
  for (;;) {
    const std::size_t start = round_up(used + sizeof(std::size_t), alignment);
    const std::size_t end = start + round_up(bytes == 0 ? 1 : bytes, min_align);
    if (end > arena_bytes) return nullptr;
    if (g_arena_used.compare_exchange_weak(used, end, std::memory_order_relaxed)) {
      std::memcpy(g_arena + start - sizeof(std::size_t), &bytes, sizeof bytes);
      return g_arena + start;
    }
  }
}

template <class F>
F resolve(void* handle, const char* name) noexcept {
  return reinterpret_cast<F>(::dlsym(handle, name));
}

void resolve_next() noexcept {
  void* h = &bsalloc_malloc_override_linked != nullptr ? RTLD_NEXT : RTLD_DEFAULT;
  next_allocator n;
  n.malloc = resolve<decltype(n.malloc)>(h, "malloc");
  n.free = resolve<decltype(n.free)>(h, "free");
  n.calloc = resolve<decltype(n.calloc)>(h, "calloc");
  n.realloc = resolve<decltype(n.realloc)>(h, "realloc");
  n.memalign = resolve<decltype(n.memalign)>(h, "memalign");
  n.usable_size = resolve<decltype(n.usable_size)>(h, "malloc_usable_size");
  if (!n.malloc || !n.free || !n.realloc || !n.memalign) n = next_allocator{};
  g_next = n;
}

// Every core cache is made now, with the flag set: a core cache is otherwise created (with
// operator new, under the slab layer's registry lock) on the first use of its CPU — which may be
// a thread-exit flush, called by the C++ runtime outside any bsalloc entry point, where an
// allocation would come back here and wait for that lock.
// Returns the slab layer's state (found through a slab header: the engine has one slab size).
slab_state& precreate_cores(engine& e) {
  void* p = e.small.take(min_align, min_align);
  slab_state& st = *slab_at<slab>(p, slab_bytes, e.colours)->res;
  for (std::size_t ci = 0; ci < st.ncores; ++ci) st.core(ci);
  e.small.give(p, min_align, min_align);
  return st;
}

void print_stats_at_exit() {
  bsalloc_malloc_stats_print(g_stats_mode == 2);
}

}  // namespace

engine::engine(const page_resource_options& slab_opts, const page_resource_options& large_opts,
               const slab_resource_options& knobs)
    : slab_pages(slab_opts),
      large_pages(large_opts),
      small(std::pmr::pool_options{0, max_small}, knobs, &slab_pages),
      checked(knobs.checked),
      colours(slab_colour_mask(slab_bytes, header_colours(knobs.checked, knobs.hardened))) {}

engine* start() noexcept {
  int s = g_state.load(std::memory_order_acquire);
  if (s == 2) return g_engine.load(std::memory_order_acquire);
  if (s == 0 && g_state.compare_exchange_strong(s, 1, std::memory_order_acq_rel)) {
    const bool was_busy = t_busy;
    t_busy = true;  // the loader, the C++ runtime and our constructors allocate: not from here
    resolve_next();
    const options o = read_options();
    g_stats_mode = o.stats;
    engine* e = nullptr;
    const slab_state* st = nullptr;
    try {
      e = ::new (g_storage) engine(o.slab_pages, o.large_pages, o.knobs);
      st = &precreate_cores(*e);
    } catch (const std::exception& x) {
      std::fprintf(stderr, "bsalloc: malloc: cannot start the allocator: %s\n", x.what());
      std::abort();
    }
    g_fast_owner.store(e->checked ? no_owner : reinterpret_cast<std::uintptr_t>(&e->slab_pages),
                       std::memory_order_release);
    enable_fast(*st, e->checked);
    g_engine.store(e, std::memory_order_release);
    g_state.store(2, std::memory_order_release);
    if (g_stats_mode) std::atexit(print_stats_at_exit);
    t_busy = was_busy;
    return e;
  }
  if (t_busy) return nullptr;  // this thread is building it (a call from inside the build)
  while (g_state.load(std::memory_order_acquire) != 2) ::sched_yield();
  return g_engine.load(std::memory_order_acquire);
}

void enable_fast(const slab_state& st, bool checked) noexcept {
  if (checked || st.careful) return;  // F1: every call takes the slow path
  BSALLOC_ASSERT(st.geom[0].colour_mask == slab_colour_mask(slab_bytes, true),
                 "F1: fast_free finds headers at their colours");
  g_fast.slot.store(st.slot, std::memory_order_relaxed);
  g_fast.owner.store(g_fast_owner.load(std::memory_order_relaxed), std::memory_order_relaxed);
  g_fast.id.store(st.id, std::memory_order_release);
}

bool in_bootstrap_arena(const void* p) noexcept {
  const auto* b = static_cast<const std::byte*>(p);
  return b >= g_arena && b < g_arena + arena_bytes;
}

std::size_t bootstrap_size(const void* p) noexcept {
  std::size_t n;
  std::memcpy(&n, static_cast<const std::byte*>(p) - sizeof n, sizeof n);
  return n;
}

void* side_allocate(std::size_t bytes, std::size_t alignment) noexcept {
  if (g_next.malloc) {
    void* p = alignment <= min_align ? g_next.malloc(bytes) : g_next.memalign(alignment, bytes);
    if (!p) errno = ENOMEM;
    return p;
  }
  void* p = arena_allocate(bytes, alignment);
  if (!p) errno = ENOMEM;
  return p;
}

void bad_pointer(const char* call, const void* p, const char* why) noexcept {
  char buf[512];
  const int n = std::snprintf(buf, sizeof buf, "bsalloc: %s(%p): %s\n", call, p, why);
  if (n > 0) [[maybe_unused]]
    auto w = ::write(2, buf, std::min<std::size_t>(sizeof buf - 1, static_cast<std::size_t>(n)));
  std::abort();
}

void* allocate_cold(std::size_t bytes, std::size_t alignment) noexcept {
  if (t_busy) return side_allocate(bytes, alignment);
  engine* e = start();
  if (!e) return side_allocate(bytes, alignment);
  busy_scope busy;
  try {
    if (alignment <= 4096 && slab_resource::size_class(bytes, alignment) >= 0)
      return e->small.take(bytes, alignment);
    if (bytes > (page_size << max_order) || alignment > (page_size << max_order)) {
      errno = ENOMEM;
      return nullptr;
    }
    return e->large_pages.allocate_pages(page_resource::pages_for(bytes),
                                         std::max(alignment, page_size));
  } catch (...) {
    errno = ENOMEM;
    return nullptr;
  }
}

void release_cold(void* p) noexcept {
  if (!p) return;
  const page_resource* owner = page_map_find(p).owner;
  engine* e = g_engine.load(std::memory_order_acquire);
  if (!e && !t_busy && !owner) e = start();  // a foreign pointer before the first malloc
  if (e && owner == &e->slab_pages) {
    busy_scope busy;
    if (!e->checked) {
      e->small.give(p, unsized_class_bytes(p, slab_bytes, e->colours), min_align);
      return;
    }
    const unsized_request r = unsized_checked_request(p, slab_bytes, &e->small);
    if (r.alignment == 0)
      bad_pointer("free", p,
                  "not a live allocation of bsalloc (a pointer into its slab pages that is no "
                  "object: foreign, or freed twice after its slab was given back)");
    e->small.give(p, r.bytes, r.alignment);  // checked: aborts naming p on a double free
    return;
  }
  if (e && owner == &e->large_pages) {
    busy_scope busy;
    try {
      e->large_pages.deallocate_run(p);
    } catch (const std::exception& x) {
      bad_pointer("free", p, x.what());
    }
    return;
  }
  if (owner) bad_pointer("free", p, "memory of a bsalloc page_resource that malloc does not own");
  if (in_bootstrap_arena(p)) return;  // never given back
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  if (addr % min_align != 0 || addr < 65536)
    bad_pointer("free", p,
                "not bsalloc's, and no allocator could have handed it out (misaligned or in the "
                "first 64 KiB)");
  if (g_next.free) {
    g_next.free(p);
    return;
  }
  bad_pointer("free", p, "not bsalloc's, and there is no next allocator to hand it to");
}

}  // namespace bsalloc::detail::mx

extern "C" void bsalloc_malloc_stats_print(int json) noexcept {
  using namespace bsalloc::detail::mx;
  engine* e = g_engine.load(std::memory_order_acquire);
  if (!e) {
    std::fprintf(stderr, "bsalloc malloc (pid %d): no call served\n", static_cast<int>(::getpid()));
    return;
  }
  const bool was_busy = t_busy;
  t_busy = true;
  try {
    const auto s = e->small.stats();
    const auto sp = e->slab_pages.stats();
    const auto lp = e->large_pages.stats();
    if (json)
      fmt::print(stderr,
                 "{{\"bsalloc_malloc\": {{\"pid\": {}, \"slab_resource\": {}, \"slab_pages\": {}, "
                 "\"large_pages\": {}}}}}\n",
                 ::getpid(), to_json(s), to_json(sp), to_json(lp));
    else
      fmt::print(stderr,
                 "bsalloc malloc (pid {}): slab layer (requests up to 64 KiB)\n{}\nslab pages\n{}\n"
                 "large pages (requests above 64 KiB)\n{}\n",
                 ::getpid(), s, sp, lp);
  } catch (...) {
  }
  t_busy = was_busy;
}

namespace {
// A count read from the engine's stats, with the re-entrancy flag set (stats() may allocate);
// 0 before the engine exists or if reading fails.
template <class F>
std::size_t engine_count(F read) noexcept {
  using namespace bsalloc::detail::mx;
  engine* e = g_engine.load(std::memory_order_acquire);
  if (!e) return 0;
  const bool was_busy = t_busy;
  t_busy = true;
  std::size_t n = 0;
  try {
    n = read(*e);
  } catch (...) {
  }
  t_busy = was_busy;
  return n;
}
}  // namespace

extern "C" std::size_t bsalloc_malloc_objects_in_use(void) noexcept {
  return engine_count([](auto& e) { return e.small.stats().objects_in_use; });
}

extern "C" std::size_t bsalloc_malloc_large_in_use(void) noexcept {
  return engine_count([](auto& e) { return e.large_pages.stats().allocated_bytes; });
}

extern "C" void bsalloc_malloc_check_invariants(void) noexcept {
  using namespace bsalloc::detail::mx;
  engine* e = g_engine.load(std::memory_order_acquire);
  if (!e) return;
  if (t_busy) {  // E3: called from outside bsalloc
    std::fprintf(stderr, "bsalloc: malloc: invariant E3 broken (the re-entrancy flag is set)\n");
    std::abort();
  }
  const bool fast = g_fast_owner.load(std::memory_order_relaxed) ==
                    reinterpret_cast<std::uintptr_t>(&e->slab_pages);
  if (fast == e->checked) {  // E1: the fast free path is on exactly when checked mode is off
    std::fprintf(stderr, "bsalloc: malloc: invariant E1 broken (fast free owner)\n");
    std::abort();
  }
  const std::uint64_t fid = g_fast.id.load(std::memory_order_relaxed);
  if ((fid != no_fast_id &&
       (e->checked || !fast ||
        g_fast.owner.load() != reinterpret_cast<std::uintptr_t>(&e->slab_pages))) ||
      (fid == no_fast_id && g_fast.owner.load() != no_owner) ||
      (fid != no_fast_id && bsalloc::detail::t_slots[g_fast.slot.load()].id != 0 &&
       bsalloc::detail::t_slots[g_fast.slot.load()].id != fid)) {  // F1, F2
    std::fprintf(stderr, "bsalloc: malloc: invariant F1 broken (fast path id)\n");
    std::abort();
  }
  busy_scope busy;
  try {
    e->small.check_invariants();
    e->slab_pages.check_invariants();
    e->large_pages.check_invariants();
  } catch (const std::exception& x) {
    std::fprintf(stderr, "bsalloc: malloc: %s\n", x.what());
    std::abort();
  }
}

extern "C" int bsalloc_malloc_owns(const void* p) noexcept {
  using namespace bsalloc::detail::mx;
  engine* e = g_engine.load(std::memory_order_acquire);
  if (!e || !p) return 0;
  const bsalloc::page_resource* o = bsalloc::detail::page_map_find(p).owner;
  return o == &e->slab_pages || o == &e->large_pages;
}
