// SPDX-License-Identifier: Apache-2.0
// The careful path: hardened mode and the memcheck client requests. A hardened resource alone
// (no checked mode, no zero-on-free, not under memcheck: `lean`) keeps its inline bounds, but its
// thread caches carry id | hardened_id_bit: the inline path finds the bin, its id test fails, and
// a second test tail-jumps to the lean hit path (hardened_hit.cpp, hardened_fast.hpp). Any
// other careful resource has its inline bounds at 0 (as in checked mode): every call takes the
// slow path, which calls in here. Other resources never do.
//
// Hardened mode (slab_resource_options::hardened)
//   H1  every free object (in a thread-cache bin, a slab's free list, a remote chain or an
//       overflow stack) has its link encoded (link_set with link_key) and its second word equal
//       to its free-state tag, tag_of(p) = p ^ tag_key. An object handed out has both words 0.
//   H2  every link followed is decoded and validated first: null, or an object boundary of its
//       class in a slab of this resource (magic, class, resource) — in the same slab for a slab's
//       free list; when the slabs come from page_resources, the page map must know the slab's page
//       before its header is read.
//   A deallocate finding the tag already there is a double free; an object handed out whose tag
//   is gone was written after it was freed. Either aborts naming the pointer. The hit path skips
//   the page map and the header for slabs its thread validated before (V1, hardened_types.hpp).
//
// Memcheck (built when <valgrind/memcheck.h> exists, active when running under Valgrind): every
// slab is a memory pool (its header address is the pool), every object handed out a chunk of it;
// free objects and a slab's untouched tail are no-access, and the allocator makes the words it
// reads and writes in them defined for exactly that access. A use after free or a leak of a
// pooled object is reported as for malloc.
#include <sys/random.h>

#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <bsalloc/budget.hpp>
#include <bsalloc/page_map.hpp>

#include "../page/internal.hpp"
#include "hardened_fast.hpp"
#include "header_window.hpp"
#include "state.hpp"

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define BSALLOC_VALGRIND 1
#endif
#endif
#ifndef BSALLOC_VALGRIND
#define BSALLOC_VALGRIND 0
#define RUNNING_ON_VALGRIND 0
#define VALGRIND_MAKE_MEM_NOACCESS(p, n) ((void)(p), (void)(n))
#define VALGRIND_MAKE_MEM_UNDEFINED(p, n) ((void)(p), (void)(n))
#define VALGRIND_MAKE_MEM_DEFINED(p, n) ((void)(p), (void)(n))
#define VALGRIND_CREATE_MEMPOOL(pool, rz, z) ((void)(pool))
#define VALGRIND_DESTROY_MEMPOOL(pool) ((void)(pool))
#define VALGRIND_MEMPOOL_ALLOC(pool, p, n) ((void)(pool), (void)(p), (void)(n))
#define VALGRIND_MEMPOOL_FREE(pool, p) ((void)(pool), (void)(p))
#endif

namespace bsalloc::detail {
namespace {

std::uintptr_t random_word() {
  std::uintptr_t k = 0;
  if (::getrandom(&k, sizeof k, 0) != static_cast<ssize_t>(sizeof k)) {
    // No entropy source: something that differs per process and resource, at least.
    k = static_cast<std::uintptr_t>(std::chrono::steady_clock::now().time_since_epoch().count()) *
            0x9e3779b97f4a7c15u ^
        reinterpret_cast<std::uintptr_t>(&k);
  }
  return k;
}

// Word i of free object p: made accessible for the access (ASan, memcheck), no-access again
// afterwards under memcheck (the object is free). The client requests out of line.
[[gnu::noinline]] std::uintptr_t word_get_vg(const std::uintptr_t* w) {
  VALGRIND_MAKE_MEM_DEFINED(w, sizeof *w);
  const std::uintptr_t v = *w;
  VALGRIND_MAKE_MEM_NOACCESS(w, sizeof *w);
  return v;
}
inline std::uintptr_t word_get(const void* p, int i, bool vg) {
  auto* w = static_cast<const std::uintptr_t*>(p) + i;
  BSALLOC_UNPOISON(const_cast<std::uintptr_t*>(w), sizeof *w);
  if (!vg) [[likely]]
    return *w;
  return word_get_vg(w);
}
void word_set(void* p, int i, std::uintptr_t v, bool vg) {
  auto* w = static_cast<std::uintptr_t*>(p) + i;
  BSALLOC_UNPOISON(w, sizeof *w);
  if (vg) VALGRIND_MAKE_MEM_UNDEFINED(w, sizeof *w);
  *w = v;
  if (vg) VALGRIND_MAKE_MEM_NOACCESS(w, sizeof *w);
}

// Running under memcheck (not just any Valgrind tool: callgrind counts the plain fast path).
// Memcheck's preloaded library is how a program tells: no client request names the tool.
bool under_memcheck() {
  if (!BSALLOC_VALGRIND || RUNNING_ON_VALGRIND == 0) return false;
  const char* pre = std::getenv("LD_PRELOAD");
  return pre && std::strstr(pre, "vgpreload_memcheck") != nullptr;
}

}  // namespace

bool running_under_memcheck() {
  static const bool memcheck = under_memcheck();
  return memcheck;
}

void slab_state::init_careful() {
  hardened = knobs.hardened;
  valgrind = running_under_memcheck();
  careful = hardened || valgrind;
  if (hardened) {
    link_key = random_word() | 1;  // never 0: 0 means "plain links"
    tag_key = random_word();
    for (int c = 0; c < classes; ++c) {
      auto& g = geom[static_cast<std::size_t>(c)];
      const int shift = std::countr_zero(g.size);
      g.low = (std::uint64_t{1} << shift) - 1;
      const std::uint64_t m = g.size >> shift;
      std::uint64_t inv = m;  // Newton's iteration: 3 → 6 → 12 → 24 → 48 → 96 correct bits
      for (int i = 0; i < 5; ++i) inv *= 2 - m * inv;
      g.inv = inv;
      g.lim = ~std::uint64_t{0} / m;
      g.span = std::size_t{g.capacity} * g.size;
      g.slab_mask = ~(g.slab_bytes - 1);
      // The hit path's copy (hardened_fast.hpp): Lemire's test needs every d it accepts < 2^32.
      auto& h = hard[static_cast<std::size_t>(c)];
      h.slab_mask = g.slab_mask;
      h.offset = g.offset;
      h.span = g.span;
      h.div_mul = ~std::uint64_t{0} / g.size + 1;
      BSALLOC_ASSERT(h.span < (std::uint64_t{1} << 32), "hardened geometry");
    }
  }
  std::pmr::memory_resource* up = upstream;
  while (auto* b = dynamic_cast<budget_resource*>(up)) up = b->upstream_resource();
  pages_known = dynamic_cast<page_resource*>(up) != nullptr;
  lean = hardened && !knobs.checked && !knobs.hardened_zero_on_free && !valgrind;
}

void slab_state::corrupt(const void* p, const std::string& problem) const {
  std::fflush(stdout);
  fmt::print(stderr, "bsalloc: slab_resource {} (hardened): {}\n", static_cast<const void*>(self),
             fmt::format(fmt::runtime(problem), p));
  std::fflush(stderr);
  std::abort();
}

void slab_state::check_slab(const slab* s, int c, const char* where) const {
  if (s->magic != slab_magic || s->cls != c || s->res != this || s->owner >= ncores ||
      s->used > s->capacity || s->untouched > s->capacity)
    corrupt(s, fmt::format("slab header at {{}} corrupted (seen in {}, class {})", where, c));
}

void* slab_state::next_careful(const void* at, int c, const slab* same) const {
  const std::uintptr_t stored = word_get(at, 0, valgrind);
  void* next = reinterpret_cast<void*>(stored ^ link_mask(at, link_key));
  if (!hardened || !next) return next;
  const auto n = reinterpret_cast<std::uintptr_t>(next);
  // The common case, as on the hit path: an object boundary in the slab of `at` (reached through
  // validated links or from a trusted head, so its slab is live and was validated) or in `same`
  // (its header checked by the caller). No page-map or header load.
  if (in_slab_of(
          hard[static_cast<std::size_t>(c)],
          same ? reinterpret_cast<std::uintptr_t>(same) : reinterpret_cast<std::uintptr_t>(at), n))
      [[likely]]
    return next;
  return next_far(at, next, c, same);
}

// next_careful's other case, out of line so that the common case needs no frame: the link leaves
// the slab (the full check: page map, header), or it is bad (an abort naming `at`).
void* slab_state::next_far(const void* at, void* next, int c, const slab* same) const {
  const auto n = reinterpret_cast<std::uintptr_t>(next);
  const slab* s = slab_of(next, c);
  if ((!same || s == same) && is_object(*this, next, c, s) && is_slab(*this, s, c)) return next;
  const char* problem;
  if (n >> 47)
    problem = "not a user-space address";
  else if (same && s != same)
    problem = "outside the object's own slab";
  else if (!is_object(*this, next, c, s))
    problem = "not an object boundary of its class";
  else if (pages_known && page_map_find(s).owner == nullptr)
    problem = "not in memory of any page_resource";
  else
    problem = "not in a slab of this resource and class";
  corrupt(at, fmt::format("free-list link of {{}} corrupted (use after free?): it decodes to {}, "
                          "{}",
                          next, problem));
  return next;
}

void slab_state::set_next_careful(void* at, const void* next) const {
  word_set(at, 0, reinterpret_cast<std::uintptr_t>(next) ^ link_mask(at, link_key), valgrind);
}

void slab_state::mark_fresh(void* p, int c) const {
  if (!hardened) return;
  const std::size_t size = geom[static_cast<std::size_t>(c)].size;
  if (knobs.hardened_zero_on_free) {  // fresh memory may be recycled pages: zero it all
    if (valgrind) VALGRIND_MAKE_MEM_UNDEFINED(p, size);
    std::memset(p, 0, size);
    if (valgrind) VALGRIND_MAKE_MEM_NOACCESS(p, size);
  }
  word_set(p, 1, reinterpret_cast<std::uintptr_t>(p) ^ tag_key, valgrind);
}

void slab_state::hand_out(void* p, int c, std::size_t bytes) const {
  const std::size_t size = geom[static_cast<std::size_t>(c)].size;
  if (hardened) {
    if (word_get(p, 1, valgrind) != (reinterpret_cast<std::uintptr_t>(p) ^ tag_key))
      corrupt(p, "free-state tag of {} corrupted (use after free?)");
    if (knobs.hardened_zero_on_free) {
      const auto* b = static_cast<const unsigned char*>(p);
      if (valgrind) VALGRIND_MAKE_MEM_DEFINED(b + 16, size - 16);
      for (std::size_t i = 16; i < size; ++i)
        if (b[i] != 0)
          corrupt(p, fmt::format("free object {{}} written after it was freed, at offset {} "
                                 "(use after free?)",
                                 i));
      if (valgrind) VALGRIND_MAKE_MEM_NOACCESS(b + 16, size - 16);  // the chunk below reopens it
    }
    word_set(p, 1, 0, valgrind);
  }
  word_set(p, 0, 0, valgrind);  // no stale link to another object (nor a pointer for leak checks)
  if (valgrind) VALGRIND_MEMPOOL_ALLOC(slab_of(p, c), p, bytes);
}

void slab_state::take_back(void* p, int c, std::size_t bytes, std::size_t alignment) const {
  const header_window headers(*this);
  const std::size_t size = geom[static_cast<std::size_t>(c)].size;
  if (hardened) {
    const auto n = reinterpret_cast<std::uintptr_t>(p);
    const slab* s = slab_of(p, c);
    if (n >> 47 || (pages_known && page_map_find(s).owner == nullptr))
      bad(p, bytes, alignment, "pointer is not in this resource's memory (hardened)");
    if (s->magic != slab_magic || s->cls != c || s->res != this)
      bad(p, bytes, alignment,
          "pointer is not in a slab of this resource for this size and alignment (foreign "
          "pointer or size mismatch; hardened)");
    if (!is_object(*this, p, c, s))
      bad(p, bytes, alignment, "pointer is not the start of an object (hardened)");
    if (n >= reinterpret_cast<std::uintptr_t>(tail_of(s)))
      bad(p, bytes, alignment,
          "not a live allocation of this resource: its slab never handed it out (hardened)");
    if (word_get(p, 1, valgrind) == (n ^ tag_key))
      bad(p, bytes, alignment, "double free (the object is already free; hardened)");
  }
  if (valgrind) VALGRIND_MEMPOOL_FREE(slab_of(p, c), p);
  if (hardened) {
    if (knobs.hardened_zero_on_free) {
      if (valgrind) VALGRIND_MAKE_MEM_UNDEFINED(p, size);
      std::memset(p, 0, size);
      if (valgrind) VALGRIND_MAKE_MEM_NOACCESS(p, size);
    }
    word_set(p, 1, reinterpret_cast<std::uintptr_t>(p) ^ tag_key, valgrind);
  }
}

// -- memcheck: slab headers (header_window.hpp) ---------------------------------------------------
// Per resource under memcheck: its live slabs and the windows open on it (headers defined while
// at least one is). A process-wide table: only resources under memcheck have an entry. The
// guarded part of a header is its mutable middle, from `used` to `next`; the words that never
// change while the slab is live (magic, cls, owner; res) stay readable, since code outside the
// slab layer reads them without a window (the malloc API's free() finds the class there, as
// object_pool reads its own headers' first word): hardened mode validates them instead.
namespace {
constexpr std::size_t guard_begin = offsetof(slab, used);
constexpr std::size_t guard_bytes = offsetof(slab, res) - guard_begin;
static_assert(offsetof(slab, res) + sizeof(void*) == sizeof(slab));
void guard(slab* s) noexcept {
  VALGRIND_MAKE_MEM_NOACCESS(reinterpret_cast<char*>(s) + guard_begin, guard_bytes);
}
void unguard(slab* s) noexcept {
  VALGRIND_MAKE_MEM_DEFINED(reinterpret_cast<char*>(s) + guard_begin, guard_bytes);
}
// A window costs a client request per live slab of the resource: past guard_limit live slabs a
// resource's headers stay defined for good (its windows cost nothing more), so that memcheck runs
// of big pools keep their time. Small pools (tests, the misuse cases) are guarded throughout.
constexpr std::size_t guard_limit = 128;
struct vg_headers {
  std::unordered_set<slab*> live;
  std::size_t windows = 0;
  bool guarded = true;  // false once live.size() passed guard_limit
};
std::mutex& vg_mutex() {
  static std::mutex m;
  return m;
}
std::unordered_map<const slab_state*, vg_headers>& vg_table() {
  static auto* t = new std::unordered_map<const slab_state*, vg_headers>;  // never destroyed
  return *t;
}
}  // namespace

void headers_open(const slab_state& st) noexcept {
  std::lock_guard lock(vg_mutex());
  vg_headers& h = vg_table()[&st];
  if (h.windows++ == 0 && h.guarded)
    for (slab* s : h.live) unguard(s);
}

void headers_close(const slab_state& st) noexcept {
  std::lock_guard lock(vg_mutex());
  vg_headers& h = vg_table()[&st];
  if (--h.windows == 0 && h.guarded)
    for (slab* s : h.live) guard(s);
  if (h.windows == 0 && h.live.empty()) vg_table().erase(&st);  // e.g. a resource destroyed
}

void slab_state::slab_born(slab* s) const {
  if (!valgrind) return;
  const auto& g = geom[s->cls];
  VALGRIND_CREATE_MEMPOOL(s, 0, 0);
  VALGRIND_MAKE_MEM_NOACCESS(reinterpret_cast<char*>(s) + g.offset, g.slab_bytes - g.offset);
  std::lock_guard lock(vg_mutex());
  vg_headers& h = vg_table()[this];
  h.live.insert(s);
  if (h.guarded && h.live.size() > guard_limit) {  // too many to guard: all defined for good
    h.guarded = false;
    if (h.windows == 0)
      for (slab* x : h.live) unguard(x);
  }
  if (h.windows == 0 && h.guarded) guard(s);
}

void slab_state::slab_dies(slab* s) const {
  // V1: before the slab goes, every thread's known_slabs goes stale.
  if (hardened) slab_deaths.fetch_add(1, std::memory_order_release);
  if (!valgrind) return;
  {
    std::lock_guard lock(vg_mutex());
    vg_headers& h = vg_table()[this];
    h.live.erase(s);
    if (h.live.empty() && h.windows == 0) vg_table().erase(this);
  }
  unguard(s);
  VALGRIND_DESTROY_MEMPOOL(s);  // objects still out (release(), the destructor) die with it
  VALGRIND_MAKE_MEM_DEFINED(s, geom[s->cls].slab_bytes);
}

}  // namespace bsalloc::detail
