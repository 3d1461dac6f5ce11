// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::object_pool<T, Lock, SlabBytes> — a typed slab cache: each type its own slabs, objects
// handed out as RAII pointers (pool_ptr) that can be freed from any thread without the pool.
//
// Glossary (the slab words are the slab core's, the same as slab_resource's:
// detail/slab_core.hpp)
//   slab      SlabBytes of memory from the upstream resource, aligned to its own size: the
//             header, room for the checked bitmap, then `objects_per_slab` slots. The slab that
//             holds an object is found by masking the object's address: p & ~(slab_bytes - 1).
//   slot      room for one T: slot_size bytes (sizeof(T) rounded up to its alignment, at least one
//             pointer), aligned to max(alignof(T), alignof(void*)). A free slot holds, in its
//             first word, the link to the next free slot of its slab.
//   untouched a slab's slots from `tail` on have never been handed out: a new slab is not
//             touched beyond its header until its slots are used.
//   control   the shared state of a pool: lock, slab lists, counters, registry. Every pool handle
//             (object_pool is a copyable handle) and every slab header (`res`) points to it.
//   handle    an object_pool value. Copies are handles to the same control block.
//
// Where the parts are (all under detail/, included here):
//   slab_core.hpp          the slab header, lists, take / put back, empty-slab policy, checked
//                          bitmap and invariant walk, shared with slab_resource
//   pool_control.hpp       the control block, the lifetime protocol, the geometry
//   pool_slabs.hpp         the pool on the slab core: its lock, registry, new and released slabs
//   pool_thread_cache.hpp  the per-thread front (pool_cache.hpp: the per-thread table)
//   pool_checked.hpp       checked mode's verdicts and check_invariants()
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

#include <bsalloc/locks.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/pool_ptr.hpp>
#include <bsalloc/stats.hpp>

#include <bsalloc/detail/config.hpp>  // BSALLOC_CHECKED_DEFAULT
#include <bsalloc/detail/pool_cache.hpp>
#include <bsalloc/detail/pool_checked.hpp>
#include <bsalloc/detail/pool_control.hpp>
#include <bsalloc/detail/pool_slabs.hpp>
#include <bsalloc/detail/pool_thread_cache.hpp>

namespace bsalloc {

struct object_pool_options {
  /// Where slabs (and the pool's small control block and slab registry) come from; nullptr
  /// means global_page_resource(). It must honour alignment up to the slab size and outlive
  /// the pool's last handle and last object.
  std::pmr::memory_resource* upstream = nullptr;
  /// Checked mode: deallocate / destroy / dispose verify the pointer (from this pool, at an
  /// object boundary, currently allocated) and abort with a message naming it otherwise.
  bool checked = BSALLOC_CHECKED_DEFAULT != 0;
};

struct object_pool_stats {
  std::string type;                  ///< T's name
  std::size_t object_size = 0;       ///< sizeof(T)
  std::size_t object_align = 0;      ///< alignof(T)
  std::size_t slot_size = 0;         ///< bytes a slot takes in a slab
  std::size_t slab_bytes = 0;        ///< one slab (also its alignment)
  std::size_t objects_per_slab = 0;  ///< slots per slab
  std::size_t objects_in_use = 0;    ///< allocated and not yet freed
  std::size_t peak_objects = 0;      ///< highest objects_in_use seen
  std::size_t slabs = 0;             ///< slabs held from upstream (empty_slabs included)
  std::size_t empty_slabs = 0;       ///< slabs kept with no object in them (0 or 1)
  std::size_t bytes_reserved = 0;    ///< slabs * slab_bytes
  std::size_t handles = 0;           ///< object_pool handles sharing these slabs
  bool checked = false;              ///< checked mode
  bool thread_safe = true;           ///< false for null_lock pools
};

std::string to_string(const object_pool_stats& s);
std::string to_json(const object_pool_stats& s);

/// Gives every slot the calling thread caches for any object_pool back to its pool (a thread
/// going idle; thread exit does it by itself).
inline void release_pool_thread_caches() noexcept {
  detail::pool_cache_flush_thread();
}

/// A typed slab cache with RAII handles; see the top of this header.
///
/// object_pool is a handle: copies share the same slabs (reference counted). Moving a pool
/// copies the handle (the source stays usable): a pool handle always refers to live slabs.
/// Objects (pool_ptr) may outlive every handle; the memory goes back upstream when the last
/// handle and the last object are gone, whichever goes first.
///
/// Thread safety: with a thread-safe Lock (yield_lock, std::mutex) handles, objects and
/// pool_ptrs may be used, copied and destroyed on any thread. With null_lock (`thread_safe ==
/// false`) the pool, all its handles and all its objects belong to one thread at a time.
template <class T, class Lock, std::size_t SlabBytes>
class object_pool {
  static_assert(std::is_object_v<T> && !std::is_array_v<T> && !std::is_const_v<T> &&
                    !std::is_volatile_v<T>,
                "object_pool<T>: T must be a non-const, non-volatile object type, not an array");
  static_assert(lock_policy<Lock>, "object_pool<T, Lock>: Lock must have lock() and unlock()");
  static_assert(SlabBytes == auto_slab_bytes || std::has_single_bit(SlabBytes),
                "object_pool<T, Lock, SlabBytes>: SlabBytes must be a power of two (slabs are "
                "aligned to their size, so an object's slab is found by masking its address)");

  using geom = detail::pool_geometry<T, SlabBytes>;
  using core = detail::pool_slabs<T, Lock, SlabBytes>;  // the pool on the slab core
  using cache = detail::pool_thread_cache<T, Lock, SlabBytes>;
  using checks = detail::pool_checked<T, Lock, SlabBytes>;
  using control = detail::pool_control<Lock>;
  using slab = typename control::slab;
  using after_unlock = detail::pool_after_unlock<Lock>;

 public:
  using value_type = T;
  using lock_type = Lock;
  using pointer = pool_ptr<T, Lock, SlabBytes>;

  /// False for null_lock pools: one thread at a time for the pool and everything from it.
  static constexpr bool thread_safe = is_thread_safe_lock_v<Lock>;
  static constexpr std::size_t slot_align = geom::slot_align;
  static constexpr std::size_t slot_size = geom::slot_size;
  /// Bytes of one slab, also its alignment.
  static constexpr std::size_t slab_bytes = geom::slab_bytes;
  /// Objects one slab holds.
  static constexpr std::size_t objects_per_slab = geom::objects_per_slab;

  static_assert(alignof(T) <= slab_bytes / 2,
                "object_pool<T, Lock, SlabBytes>: alignof(T) is more than a slab can give (a slab "
                "is aligned to SlabBytes and holds at least two objects); raise SlabBytes");
  static_assert(objects_per_slab >= 2,
                "object_pool<T, Lock, SlabBytes>: fewer than two objects of T fit in one slab "
                "after its header; raise SlabBytes (or leave it to the default)");

  /// A pool taking its slabs from global_page_resource().
  object_pool() : object_pool(object_pool_options{}) {}
  /// A pool taking its slabs from `upstream` (nullptr: global_page_resource()).
  explicit object_pool(std::pmr::memory_resource* upstream)
      : object_pool(object_pool_options{.upstream = upstream}) {}
  explicit object_pool(const object_pool_options& options) {
    std::pmr::memory_resource* up =
        options.upstream ? options.upstream : &bsalloc::global_page_resource();
    void* mem = up->allocate(sizeof(control), alignof(control));
    ctl_ = ::new (mem) control(up, options.checked, &cache::flush_thunk);
  }
  /// Another handle to the same slabs.
  object_pool(const object_pool& other) noexcept : ctl_(other.ctl_) {
    std::lock_guard<Lock> guard(ctl_->lock);
    ++ctl_->handles;
  }
  object_pool& operator=(const object_pool& other) noexcept {
    if (ctl_ != other.ctl_) {
      object_pool copy(other);
      swap(copy);
    }
    return *this;
  }
  ~object_pool() { cache::drop_handle(*ctl_); }

  void swap(object_pool& other) noexcept { std::swap(ctl_, other.ctl_); }
  friend void swap(object_pool& a, object_pool& b) noexcept { a.swap(b); }
  /// Handles to the same slabs compare equal.
  friend bool operator==(const object_pool& a, const object_pool& b) noexcept {
    return a.ctl_ == b.ctl_;
  }

  /// Constructs a T in a slot from Args; if the constructor throws, the slot goes back and the
  /// exception propagates. Throws what the upstream throws when a new slab cannot be had.
  template <class... Args>
  [[nodiscard]] pointer make(Args&&... args) {
    T* slot = allocate();
    if constexpr (std::is_nothrow_constructible_v<T, Args...>) {
      return pointer(::new (static_cast<void*>(slot)) T(std::forward<Args>(args)...));
    } else {
      try {
        return pointer(::new (static_cast<void*>(slot)) T(std::forward<Args>(args)...));
      } catch (...) {
        deallocate(slot);
        throw;
      }
    }
  }

  /// An uninitialised slot for one T (construct it in place; end it with deallocate after ~T,
  /// or hand the object to a pool_ptr). Throws what the upstream throws.
  [[nodiscard]] T* allocate() {
    control& c = *ctl_;
    if constexpr (thread_safe) {
      const std::uint32_t slot = c.key.slot.load(std::memory_order_relaxed);
      const detail::pool_tls_state& t = detail::t_pool_cache;
      if (slot < t.cap) {
        detail::pool_tls_entry& e = t.table[slot];
        if (void* p = e.head) [[likely]] {  // T2: a non-empty entry is this pool's
          std::memcpy(&e.head, p, sizeof(void*));
          e.low = std::min(e.low, --e.count);
          core::on_handout(p);
          return static_cast<T*>(p);
        }
      }
      return static_cast<T*>(slot != detail::no_pool_slot ? cache::refill(c)
                                                          : cache::allocate_miss(c));
    }
    return static_cast<T*>(core::allocate_locked(c));
  }

  /// Gives back a slot from allocate() (its object already destroyed, or never constructed).
  /// nullptr is ignored. Checked mode verifies the pointer first (see the class comment).
  void deallocate(T* p) noexcept {
    if (!p) return;
    if (ctl_->checked) [[unlikely]] {
      checks::deallocate_checked(*ctl_, p, "deallocate");
      return;
    }
    cache::release_slot(core::slab_of(p), p);
  }

  /// Runs ~T on an object from this pool and gives its slot back. In checked mode the pointer
  /// is verified before ~T runs.
  void destroy(T* p) noexcept {
    if (!p) return;
    if (ctl_->checked) [[unlikely]] {
      checks::destroy_checked(*ctl_, p, "destroy");
      return;
    }
    p->~T();
    cache::release_slot(core::slab_of(p), p);
  }

  /// Runs ~T and gives the slot back to whichever pool of this type it came from, found from
  /// the address alone (what pool_ptr's destructor calls). Any thread (thread_safe pools).
  /// The slab header's magic is verified always; in checked mode also the pool's registry, the
  /// object boundary and the allocation bit, before ~T runs. Unlike deallocate / destroy, this
  /// has to read the header p masks to, so p must at least point into mapped memory.
  [[gnu::always_inline]] static void dispose(T* p) noexcept {
    if (!p) return;
    slab* s = core::slab_of(p);
    // Checked or not (one compare on the header's first cache line): the header must be a
    // live slab's before its owner pointer is followed.
    if (!detail::pool_slab_live(s)) [[unlikely]]
      detail::pool_bad_pointer(detail::pool_type_name<T>(), "dispose", p,
                               "not in a live object_pool slab (bad slab header)");
    if (s->res->checked) [[unlikely]] {
      checks::destroy_checked(*s->res, p, "dispose");
      return;
    }
    p->~T();
    cache::release_slot(s, p);
  }

  /// Whether p points into one of this pool's slabs (at any byte of any slot).
  bool owns(const void* p) const {
    const control& c = *ctl_;
    std::lock_guard<Lock> guard(c.lock);
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    return core::in_registry(c, a & ~(slab_bytes - 1)) &&
           (a & (slab_bytes - 1)) >= geom::first_slot;
  }

  /// Gives the kept empty slab back upstream; returns the bytes given back.
  std::size_t trim() {
    control& c = *ctl_;
    cache::flush_own(c);
    after_unlock todo{c.upstream};
    {
      std::lock_guard<Lock> guard(c.lock);
      todo.release = core::forget_empty(c);
    }
    core::finish(todo);
    return todo.release ? slab_bytes : 0;
  }

  object_pool_stats stats() const {
    cache::flush_own(*ctl_);  // the calling thread's cached slots count as free
    const control& c = *ctl_;
    object_pool_stats st;
    st.type = std::string(detail::pool_type_name<T>());
    st.object_size = sizeof(T);
    st.object_align = alignof(T);
    st.slot_size = slot_size;
    st.slab_bytes = slab_bytes;
    st.objects_per_slab = objects_per_slab;
    st.checked = c.checked;
    st.thread_safe = thread_safe;
    std::lock_guard<Lock> guard(c.lock);
    st.objects_in_use = c.in_use;
    st.peak_objects = c.peak;
    st.slabs = c.lists.slabs;
    st.empty_slabs = c.lists.empty_count;
    st.bytes_reserved = c.lists.slabs * slab_bytes;
    st.handles = c.handles;
    return st;
  }

  /// Handles sharing these slabs (this one included).
  std::size_t use_count() const {
    std::lock_guard<Lock> guard(ctl_->lock);
    return ctl_->handles;
  }
  std::pmr::memory_resource* upstream_resource() const noexcept { return ctl_->upstream; }
  bool checked() const noexcept { return ctl_->checked; }

  /// Verifies the slab core's S1, S2, S4, S5 for every slab and the control block's C1-C4
  /// (detail/pool_control.hpp); throws std::logic_error naming what is broken.
  void check_invariants() const { checks::check_invariants(*ctl_); }

 private:
  control* ctl_;
};

}  // namespace bsalloc

template <>
struct fmt::formatter<bsalloc::object_pool_stats>
    : bsalloc::detail::stats_formatter<bsalloc::object_pool_stats> {};
