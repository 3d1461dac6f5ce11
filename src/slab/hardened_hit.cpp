// SPDX-License-Identifier: Apache-2.0
// Hardened mode's thread-cache hit path, entered from the facade's inline path (a hardened
// resource's caches carry id | hardened_id_bit, see hardened.cpp) with the bin and the class: the
// validated pop and push (hardened_fast.hpp) and their far cases — a link or a freed pointer in
// another slab of the bin's, the last object of a bin, anything bad. Invariants H1, H2 are stated
// in hardened.cpp, V1 in hardened_types.hpp.
#include <bsalloc/slab_resource.hpp>

#include <cstdint>

#include "hardened_fast.hpp"
#include "state.hpp"

namespace bsalloc {

namespace detail {

// The far cases. A link or a freed pointer into a slab this thread validated before (V1) is
// checked as on the hit path: the boundary, the tail, the tag. Anything else is checked with the
// inline tests (is_object, is_slab: page map, header) out of line, in pop_check / push_check; what
// fails them goes to next_careful / take_back, which name the problem and abort. A slab that
// passes is remembered in tc.known, so that the next crossing into it is cheap.
namespace {

void remember(thread_cache& tc, const slab* s, int c, std::uint64_t epoch) {
  if (tc.known.epoch != epoch) {  // slabs went back upstream since these were validated
    tc.known.slab.fill(0);
    tc.known.epoch = epoch;
  }
  const auto a = reinterpret_cast<std::uintptr_t>(s);
  tc.known.slab[known_slot(a)] = a | static_cast<std::uintptr_t>(c);
}

}  // namespace

void* pop_check(const slab_state& st, thread_cache& tc, int c) {
  bin& b = tc.bins[static_cast<std::size_t>(c)];
  void* p = b.head;
  auto* w = static_cast<std::uintptr_t*>(p);
  // Read before the slab is validated: a slab that goes back upstream meanwhile bumps it.
  const std::uint64_t epoch = st.slab_deaths.load(std::memory_order_acquire);
  void* next = link_get(p, st.link_key);
  const slab* s = st.slab_of(next, c);
  const bool ok = !next || (is_object(st, next, c, s) && is_slab(st, s, c));
  BSALLOC_UNPOISON(p, st.geom[static_cast<std::size_t>(c)].size);
  if (!ok || w[1] != (reinterpret_cast<std::uintptr_t>(p) ^ st.tag_key)) [[unlikely]] {
    st.next_careful(p, c, nullptr);  // aborts naming p if the link is bad; else the tag is
    st.corrupt(p, "free-state tag of {} corrupted (use after free?)");
  }
  if (next) remember(tc, s, c, epoch);
  b.head = next;
  b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  w[0] = 0;
  w[1] = 0;
  return p;
}

namespace {

[[gnu::noinline]] void push_check(const slab_state& st, thread_cache& tc, int c, void* p,
                                  std::size_t bytes, std::size_t alignment) {
  bin& b = tc.bins[static_cast<std::size_t>(c)];
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const std::uint64_t epoch = st.slab_deaths.load(std::memory_order_acquire);
  const slab* s = st.slab_of(p, c);
  auto* w = static_cast<std::uintptr_t*>(p);
  const std::uintptr_t tag = a ^ st.tag_key;
  bool ok = is_slab(st, s, c) && is_object(st, p, c, s) &&     // no read of p before this
            a < reinterpret_cast<std::uintptr_t>(tail_of(s));  // handed out
  if (ok) {
    BSALLOC_UNPOISON(w + 1, sizeof *w);
    ok = w[1] != tag;  // else a double free
  }
  if (ok) [[likely]]
    w[1] = tag;
  else
    st.take_back(p, c, bytes, alignment);  // aborts: names the pointer and the problem
  remember(tc, s, c, epoch);
  BSALLOC_POISON_FREE(p, st.geom[static_cast<std::size_t>(c)].size);
  link_set(p, b.head, st.link_key);
  b.head = p;
  b.count.store(b.count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

}  // namespace

void* pop_far(const slab_state& st, bin& b, int c, std::uintptr_t next) {
  const auto i = static_cast<std::size_t>(c);
  thread_cache& tc = cache_of(b, i);
  const hardened_geom& h = st.hard[i];
  const std::uintptr_t s = next & h.slab_mask;
  if (!known_slab(st, tc, s, i) || !at_boundary(h, s, next)) return pop_check(st, tc, c);
  void* p = b.head;  // its tag checked by the caller
  BSALLOC_UNPOISON(p, st.geom[i].size);
  b.head = reinterpret_cast<void*>(next);
  b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  auto* w = static_cast<std::uintptr_t*>(p);
  w[0] = 0;
  w[1] = 0;
  return p;
}

void push_far(const slab_state& st, bin& b, int c, void* p, std::size_t bytes,
              std::size_t alignment) {
  const auto i = static_cast<std::size_t>(c);
  thread_cache& tc = cache_of(b, i);
  const hardened_geom& h = st.hard[i];
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t s = a & h.slab_mask;
  if (!known_slab(st, tc, s, i) || !at_boundary(h, s, a) ||
      a >= reinterpret_cast<std::uintptr_t>(tail_of(reinterpret_cast<const slab*>(s))))
    return push_check(st, tc, c, p, bytes, alignment);
  auto* w = static_cast<std::uintptr_t*>(p);
  const std::uintptr_t tag = a ^ st.tag_key;
  BSALLOC_UNPOISON(w + 1, sizeof *w);
  if (w[1] == tag) [[unlikely]]  // a double free: push_check names it
    return push_check(st, tc, c, p, bytes, alignment);
  w[1] = tag;
  BSALLOC_POISON_FREE(p, st.geom[i].size);
  w[0] = reinterpret_cast<std::uintptr_t>(b.head) ^ (a >> 12) ^ st.link_key;  // link_set
  b.head = p;
  b.count.store(b.count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

}  // namespace detail

// The lean hardened hit path (hardened_fast.hpp), entered from the inline path with the bin and
// the class it computed: one validated pop or push; links and frees that leave the head's slab
// and the last object of a bin take pop_far / push_far (a known slab, else pop_check /
// push_check, which abort naming the pointer when something is bad); a miss or a full bin, the
// slow path. Every exit is a return or a tail call, so nothing needs a frame. Classes not in use
// and bad_class (an alignment not a power of two) need no test: their bins are always empty and
// full (limit 0).
void* slab_resource::allocate_hardened(std::size_t bytes, std::size_t alignment, detail::bin* b,
                                       std::size_t cls) {
  if (cls == 0) [[unlikely]] {  // 8 B takes 16 B: room for the link and the tag
    ++b;
    cls = 1;
  }
  void* p = b->head;
  if (!p) return allocate_slow(bytes, alignment);
  return detail::hardened_pop(*state_, *b, cls, p);
}

void slab_resource::deallocate_hardened(void* p, std::size_t bytes, std::size_t alignment,
                                        detail::bin* b, std::size_t cls) {
  if (cls == 0) [[unlikely]] {
    ++b;
    cls = 1;
  }
  if (b->count.load(std::memory_order_relaxed) >= b->limit)
    return deallocate_slow(p, bytes, alignment);
  if (detail::hardened_push(*state_, *b, cls, p)) return;
  return detail::push_far(*state_, *b, static_cast<int>(cls), p, bytes, alignment);
}

}  // namespace bsalloc
