// SPDX-License-Identifier: Apache-2.0
#pragma once
// object_pool's checked mode (every free verified against the registry, the slab header, the
// object boundary and the slab core's allocation bitmap) and its invariant walk (the slab
// core's, then C1-C4). Part of <bsalloc/object_pool.hpp>; include that.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <bsalloc/detail/pool_thread_cache.hpp>
#include <bsalloc/detail/slab_walk.hpp>

namespace bsalloc::detail {

template <class T, class Lock, std::size_t SlabBytes>
struct pool_checked {
  using core = pool_slabs<T, Lock, SlabBytes>;
  using cache = pool_thread_cache<T, Lock, SlabBytes>;
  using control = typename core::control;
  using slab = typename core::slab;
  using after_unlock = typename core::after_unlock;
  static constexpr std::size_t slot_size = core::slot_size;
  static constexpr std::size_t slab_bytes = core::slab_bytes;
  static constexpr std::size_t first_slot = core::first_slot;
  static constexpr std::size_t objects_per_slab = core::objects_per_slab;

  // Lock held. Checked mode: aborts unless p is the start of an allocated slot of c's slabs.
  // Reads nothing at p's slab before the registry says the slab is c's.
  static void validate(const control& c, const void* p, const char* op) noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const std::string_view type = pool_type_name<T>();
    if (!core::in_registry(c, a & ~(slab_bytes - 1)))
      pool_bad_pointer(type, op, p, "not allocated from this pool (no slab of it holds it)");
    const slab* s = core::slab_of(p);
    if (!pool_slab_live(s) || s->res != &c)
      pool_bad_pointer(type, op, p, "the slab header is corrupt");
    const std::size_t offset = a & (slab_bytes - 1);
    if (offset < first_slot)
      pool_bad_pointer(type, op, p, "points into a slab header, not at an object");
    if ((offset - first_slot) % slot_size != 0 ||
        (offset - first_slot) / slot_size >= objects_per_slab)
      pool_bad_pointer(type, op, p, "not the start of an object (inside a slot)");
    if (!slab_bit(s, slab_index(s, p, first_slot, slot_size)))
      pool_bad_pointer(type, op, p, "not allocated: double free (or never handed out)");
  }

  [[gnu::noinline]] static void deallocate_checked(control& c, void* p, const char* op) noexcept {
    c.lock.lock();
    validate(c, p, op);
    const after_unlock todo = core::put_slot(c, core::slab_of(p), p);
    c.lock.unlock();
    core::finish(todo);
  }

  // Checked destroy / dispose: validated before ~T runs, then freed (validated again: another
  // thread may have freed it meanwhile).
  static void destroy_checked(control& c, T* p, const char* op) noexcept {
    {
      std::lock_guard<Lock> guard(c.lock);
      validate(c, p, op);
    }
    p->~T();
    deallocate_checked(c, p, op);
  }

  /// The slab core's S1, S2, S4, S5 for every slab, then C1-C4; throws std::logic_error.
  static void check_invariants(const control& c) {
    cache::flush_own(c);
    std::lock_guard<Lock> guard(c.lock);
    auto fail = [](const std::string& what) { pool_invariant_broken(pool_type_name<T>(), what); };
    const slab_walk_geom walk{.size = slot_size,
                              .first_object = first_slot,
                              .slab_bytes = slab_bytes,
                              .capacity = static_cast<std::uint32_t>(objects_per_slab),
                              .max_empty = c.max_empty(),  // C1
                              .checked = c.checked,
                              .exact_bits = true};  // C2
    const std::size_t used = slab_check_lists(
        c.lists, walk,
        [&](const slab* s) {
          return pool_slab_live(s) && s->res == &c && s->cls == 0 && s->owner == 0;
        },
        [](void* p, const slab*) { return core::link_of(p); },
        [&](const char* what, const slab* s) {
          fail(fmt::format("{} (slab {})", what, static_cast<const void*>(s)));
        });
    if (used != c.in_use)
      fail(fmt::format("C3: in_use is {} but the slabs hold {}", c.in_use, used));
    if (c.key.home == no_pool_slot && c.peak < c.in_use)
      fail(fmt::format("C3: peak {} below in_use {}", c.peak, c.in_use));
    std::vector<std::uintptr_t> addresses;
    for (std::uint8_t which : {list_partial, list_full, list_empty})
      for (const slab* s = c.lists.head(which); s; s = s->next)
        addresses.push_back(reinterpret_cast<std::uintptr_t>(s));
    std::sort(addresses.begin(), addresses.end());
    if (!std::equal(addresses.begin(), addresses.end(), c.registry.begin(), c.registry.end()))
      fail("C4: the registry does not hold exactly the slabs' addresses");
  }
};

}  // namespace bsalloc::detail
