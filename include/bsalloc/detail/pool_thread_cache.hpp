// SPDX-License-Identifier: Apache-2.0
#pragma once
// object_pool's per-thread front, the template part (the per-thread table is pool_cache.hpp),
// and the drop of a handle. Part of <bsalloc/object_pool.hpp>; include that. See the lifetime
// protocol in pool_control.hpp and invariants T1-T3 in pool_cache.hpp.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <bsalloc/detail/pool_cache.hpp>
#include <bsalloc/detail/pool_slabs.hpp>

namespace bsalloc::detail {

template <class T, class Lock, std::size_t SlabBytes>
struct pool_thread_cache {
  using core = pool_slabs<T, Lock, SlabBytes>;
  using control = typename core::control;
  using slab = typename core::slab;
  using after_unlock = typename core::after_unlock;
  static constexpr bool thread_safe = is_thread_safe_lock_v<Lock>;
  static constexpr std::uint32_t cache_limit = core::geom::cache_limit;
  static constexpr std::uint32_t cache_batch = core::geom::cache_batch;

  // Gives slot p of s back: into this thread's cache for its pool when it has room, else to
  // the pool under its lock.
  static void release_slot(slab* s, void* p) noexcept {
    if constexpr (thread_safe) {
      control& c = *s->res;
      const std::uint32_t slot = c.key.slot.load(std::memory_order_relaxed);
      const pool_tls_state& t = t_pool_cache;
      if (slot < t.cap) {
        pool_tls_entry& e = t.table[slot];
        if (e.gen == c.key.gen && e.count < cache_limit) [[likely]] {
          core::on_free(p);
          core::set_link(p, e.head);
          e.head = p;
          ++e.count;
          return;
        }
      }
      release_miss(s, p);
    } else {
      core::free_slot(s, p);
    }
  }

  // Out of line so that the hit path above keeps no registers: the cache's slow path, or the
  // lock for pools without a cache.
  [[gnu::noinline]] static void release_miss(slab* s, void* p) noexcept {
    if (s->res->key.home != no_pool_slot && push_slow(*s->res, p)) return;
    core::free_slot(s, p);
  }

  // The calling thread's non-empty entry for c, or nullptr. Non-empty: c cannot die before the
  // entry is flushed (its slots count as in use).
  static pool_tls_entry* own_entry(const control& c) noexcept {
    const std::uint32_t home = c.key.home;
    const pool_tls_state& t = t_pool_cache;
    if (home >= t.cap) return nullptr;
    pool_tls_entry& e = t.table[home];
    return e.gen == c.key.gen && e.count > 0 ? &e : nullptr;
  }

  // Empties the entry (the calling thread's) into its pool c.
  static void flush_entry(control& c, pool_tls_entry& e) noexcept {
    void* head = e.head;
    const std::uint32_t n = e.count;
    const std::uint32_t low = e.low;
    e.head = nullptr;
    e.count = e.low = 0;
    flush_slots(c, head, n, low);
  }

  static void flush_own(const control& c) noexcept {
    if (pool_tls_entry* e = own_entry(c)) flush_entry(const_cast<control&>(c), *e);
  }

  // Gives n cached slots linked from head back to c's slabs under one lock; may destroy c.
  // Peak: the objects in use were at most in_use - low since the entry's last refill or flush
  // (in_use counts the entry's slots; low is its lowest count since).
  [[gnu::noinline]] static void flush_slots(control& c, void* head, std::uint32_t n,
                                            std::uint32_t low) noexcept {
    std::pmr::memory_resource* up = c.upstream;
    slab* releases = nullptr;
    control* dead = nullptr;
    c.lock.lock();
    if (c.in_use - low > c.peak) c.peak = c.in_use - low;
    while (n-- > 0) {
      void* p = head;
      head = core::link_of(p);
      const after_unlock todo = core::put_slot(c, core::slab_of(p), p);
      if (todo.release) {
        todo.release->next = releases;
        releases = todo.release;
      }
      if (todo.dead) dead = todo.dead;
    }
    c.lock.unlock();
    while (slab* s = releases) {
      releases = s->next;
      core::release_slab(up, s);
    }
    if (dead) core::destroy_control(dead);
  }

  static void flush_thunk(void* owner, void* head, std::uint32_t n, std::uint32_t low) noexcept {
    flush_slots(*static_cast<control*>(owner), head, n, low);
  }

  // The fast allocation missed on a pool with no cache slot (closed, uncached or unregistered).
  [[gnu::noinline]] static void* allocate_miss(control& c) { return core::allocate_locked(c); }

  // The fast free missed (no entry yet, a stale one, a full one, or c is closed). True when p
  // went into this thread's cache; false: the caller gives it to the pool.
  [[gnu::noinline]] static bool push_slow(control& c, void* p) noexcept {
    if (c.key.slot.load(std::memory_order_relaxed) == no_pool_slot) {
      // Closed: this thread's cached slots go back now (p is in use: c survives the flush).
      if (pool_tls_entry* e = own_entry(c)) flush_entry(c, *e);
      return false;
    }
    pool_tls_entry* e = pool_cache_entry(c.key);
    if (!e) return false;
    if (e->count >= cache_limit) {  // keep the newest cache_limit - cache_batch, flush the rest
      void* last = e->head;
      for (std::uint32_t i = 1; i < cache_limit - cache_batch; ++i) last = core::link_of(last);
      void* rest = core::link_of(last);
      core::set_link(last, nullptr);
      const std::uint32_t n = e->count - (cache_limit - cache_batch);
      const std::uint32_t low = e->low;
      e->count = e->low = cache_limit - cache_batch;
      flush_slots(c, rest, n, low);
    }
    core::on_free(p);
    core::set_link(p, e->head);
    e->head = p;
    ++e->count;
    return true;
  }

  // The fast allocation missed on an open, cached pool: takes up to cache_batch slots under
  // one lock, hands out one and caches the rest.
  [[gnu::noinline]] static void* refill(control& c) {
    pool_tls_entry* e = pool_cache_entry(c.key);
    if (!e || e->head) return core::allocate_locked(c);  // e->head: only if closed meanwhile
    c.lock.lock();
    if (c.in_use - e->low > c.peak) c.peak = c.in_use - e->low;  // as in flush_slots
    e->low = 0;
    slab* s = slab_to_take(c.lists);
    if (!s) [[unlikely]]
      return core::allocate_slow(c);  // unlocks
    void* first = core::take_slot(c, s);
    void* head = nullptr;
    std::uint32_t n = 0;
    for (; n + 1 < cache_batch && (s = slab_to_take(c.lists)); ++n) {
      void* q = core::take_slot(c, s);
      pool_unpoison(q, sizeof(void*));
      core::set_link(q, head);
      head = q;
    }
    if (c.in_use - n > c.peak) c.peak = c.in_use - n;
    c.lock.unlock();
    e->head = head;
    e->count = e->low = n;
    core::on_handout(first);
    return first;
  }

  // A handle goes. The last one closes the pool (T3): the kept empty slab goes, and the
  // control block too if no object is left (C5).
  static void drop_handle(control& c) noexcept {
    pool_tls_entry* own = own_entry(c);  // non-empty: c outlives this call
    bool closed = false;
    after_unlock todo{c.upstream};
    c.lock.lock();
    if (--c.handles == 0) {
      closed = true;
      c.key.slot.store(no_pool_slot, std::memory_order_release);  // T3
      todo.release = core::forget_empty(c);  // no more allocations: the kept slab goes
      if (c.in_use == 0) todo.dead = &c;
    }
    c.lock.unlock();
    core::finish(todo);
    if (closed && own) flush_entry(c, *own);
  }
};

}  // namespace bsalloc::detail
