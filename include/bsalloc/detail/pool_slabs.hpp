// SPDX-License-Identifier: Apache-2.0
#pragma once
// object_pool on the slab core: new slabs, one slot taken or put back under the pool's lock,
// slabs given back, the control block's end. Part of <bsalloc/object_pool.hpp>; include that.
// The slab header, the lists, take / put back and the empty-slab policy are the slab core's
// (slab_core.hpp); what is here is the pool's use of them: its lock, registry, counters and the
// sanitizer / memcheck hooks.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory_resource>

#include <bsalloc/detail/pool_control.hpp>
#include <bsalloc/detail/slab_core.hpp>

namespace bsalloc::detail {

template <class T, class Lock, std::size_t SlabBytes>
struct pool_slabs {
  using geom = pool_geometry<T, SlabBytes>;
  using control = pool_control<Lock>;
  using slab = typename control::slab;
  using after_unlock = pool_after_unlock<Lock>;
  static constexpr std::size_t slot_size = geom::slot_size;
  static constexpr std::size_t slab_bytes = geom::slab_bytes;
  static constexpr std::size_t first_slot = geom::first_slot;
  static constexpr std::size_t objects_per_slab = geom::objects_per_slab;

  static slab* slab_of(const void* p) noexcept { return slab_at<slab>(p, slab_bytes); }
  // A free slot's link (its first word).
  static void* link_of(const void* p) noexcept {
    void* next;
    std::memcpy(&next, p, sizeof next);
    return next;
  }
  static void set_link(void* p, const void* next) noexcept { std::memcpy(p, &next, sizeof next); }
  // ASan: a slot handed out is addressable for a T; a free one only in its link word.
  static void on_handout(void* p) noexcept {
    pool_poison(p, slot_size);
    pool_unpoison(p, sizeof(T));
  }
  static void on_free(void* p) noexcept {
    pool_poison(p, slot_size);
    pool_unpoison(p, sizeof(void*));
  }
  static bool in_registry(const control& c, std::uintptr_t a) noexcept {
    return std::binary_search(c.registry.begin(), c.registry.end(), a);
  }

  // Lock held. One slot of s (the slab core's take); s goes to the full list when it has
  // nothing left to hand out. The caller updates peak (cached slots are not counted in it).
  static void* take_slot(control& c, slab* s) noexcept {
    void* p = slab_take(
        s, slot_size, [](void* q) { return link_of(q); }, [](void*) {});
    if (slab_exhausted(s)) [[unlikely]]
      slab_move(c.lists, s, list_full);
    if (c.extra) [[unlikely]] {
      if (c.checked) slab_bit_set(s, slab_index(s, p, first_slot, slot_size));
      if (c.memcheck) pool_vg_alloc(s, p, sizeof(T));
    }
    ++c.in_use;
    return p;
  }

  // The pool's lock, one slot.
  static void* allocate_locked(control& c) {
    c.lock.lock();
    slab* s = slab_to_take(c.lists);
    if (!s) [[unlikely]]
      return allocate_slow(c);
    void* p = take_slot(c, s);
    if (c.in_use > c.peak) c.peak = c.in_use;
    c.lock.unlock();
    on_handout(p);
    return p;
  }

  // Lock held on entry (no slab to take from); released on return and on throw.
  [[gnu::noinline]] static void* allocate_slow(control& c) {
    c.lock.unlock();
    slab* fresh = new_slab(c);
    c.lock.lock();
    const auto a = reinterpret_cast<std::uintptr_t>(fresh);
    try {
      c.registry.insert(std::lower_bound(c.registry.begin(), c.registry.end(), a), a);
    } catch (...) {
      c.lock.unlock();
      release_slab(c.upstream, fresh);
      throw;
    }
    slab_adopt(c.lists, fresh);
    void* p = take_slot(c, fresh);
    if (c.in_use > c.peak) c.peak = c.in_use;
    c.lock.unlock();
    on_handout(p);
    return p;
  }

  // No lock needed: the slab is not published yet.
  static slab* new_slab(control& c) {
    void* mem = c.upstream->allocate(slab_bytes, slab_bytes);
    // memory_resource::allocate promises the alignment (and lets the compiler assume it): hide
    // the value from the optimiser so a resource that breaks the promise is still caught here
    // rather than by a slab header found at the wrong address.
    auto addr = reinterpret_cast<std::uintptr_t>(mem);
    __asm__("" : "+r"(addr));
    if (addr & (slab_bytes - 1)) {
      c.upstream->deallocate(mem, slab_bytes, slab_bytes);
      pool_misaligned_slab(pool_type_name<T>(), mem, slab_bytes);
    }
    static_assert(objects_per_slab <= UINT32_MAX, "a slab's object count must fit 32 bits");
    slab* s = slab_carve(mem, pool_slab_magic(mem), 0, 0,
                         static_cast<std::uint32_t>(objects_per_slab), first_slot, &c);
    slab_bitmap_init(s, geom::bitmap_words);
    pool_poison(s->tail, slab_bytes - first_slot);
    if (c.memcheck) [[unlikely]]
      pool_vg_slab_born(s, s->tail, slab_bytes - first_slot);
    return s;
  }

  // No lock needed: the slab is off every list and out of the registry.
  static void release_slab(std::pmr::memory_resource* upstream, slab* s) noexcept {
    s->magic = 0;
    pool_unpoison(s, slab_bytes);
    pool_vg_slab_dies(s, slab_bytes);  // slots still out die with it; a no-op off memcheck
    upstream->deallocate(s, slab_bytes, slab_bytes);
  }

  // Lock held. s (off the lists) leaves the registry.
  static void unregister(control& c, slab* s) noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(s);
    c.registry.erase(std::lower_bound(c.registry.begin(), c.registry.end(), a));
  }
  // Lock held. Takes a slab off its list and out of the registry.
  static void forget_slab(control& c, slab* s) noexcept {
    slab_forget(c.lists, s);
    unregister(c, s);
  }
  // Lock held. The kept empty slab (if any) leaves; returned for release.
  static slab* forget_empty(control& c) noexcept {
    slab* e = c.lists.empty;
    if (e) forget_slab(c, e);
    return e;
  }

  // Lock held. Puts slot p back into s (the slab core's put back and empty-slab policy: C1);
  // returns what to do once the lock is released.
  static after_unlock put_slot(control& c, slab* s, void* p) noexcept {
    if (c.extra) [[unlikely]] {
      if (c.checked) slab_bit_clear(s, slab_index(s, p, first_slot, slot_size));
      if (c.memcheck) pool_vg_free(s, p);
    }
    on_free(p);
    slab_put(s, p, [](void* at, const void* next) { set_link(at, next); });
    after_unlock todo{c.upstream};
    if (slab* gone = slab_settle(c.lists, s, c.max_empty())) [[unlikely]] {
      unregister(c, gone);
      todo.release = gone;
    }
    --c.in_use;
    if (c.handles == 0 && c.in_use == 0) todo.dead = &c;
    return todo;
  }

  static void free_slot(slab* s, void* p) noexcept {
    control& c = *s->res;
    c.lock.lock();
    const after_unlock todo = put_slot(c, s, p);
    c.lock.unlock();
    if (todo.release || todo.dead) [[unlikely]]
      finish(todo);
  }

  // Lock released. `todo` holds everything needed: once the lock is released the control block
  // may already be gone unless todo.dead says this thread is the one to destroy it.
  static void finish(const after_unlock& todo) noexcept {
    if (todo.release) release_slab(todo.upstream, todo.release);
    if (todo.dead) destroy_control(todo.dead);
  }

  // The last handle and the last object are gone: nothing else can reach c (C5). Every slab
  // went upstream when it emptied (no handle: no empty slab kept), so the lists are empty; a
  // slab still on them would be returned all the same.
  [[gnu::noinline]] static void destroy_control(control* c) noexcept {
    std::pmr::memory_resource* up = c->upstream;
    for (std::uint8_t which : {list_partial, list_full, list_empty})
      while (slab* s = c->lists.head(which)) {
        slab_forget(c->lists, s);
        release_slab(up, s);
      }
    pool_cache_unregister(c->key);
    c->~control();
    up->deallocate(c, sizeof(control), alignof(control));
  }
};

}  // namespace bsalloc::detail
