// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::object_pool<T, Lock, SlabBytes> — a typed slab cache: each type its own slabs, objects
// handed out as RAII pointers (pool_ptr) that can be freed from any thread without the pool.
//
// Glossary
//   slab      SlabBytes of memory from the upstream resource, aligned to its own size: a header
//             at its start, then `objects_per_slab` slots. The slab that holds an object is found
//             by masking the object's address: p & ~(slab_bytes - 1).
//   slot      room for one T: slot_size bytes (sizeof(T) rounded up to its alignment, at least one
//             pointer), aligned to max(alignof(T), alignof(void*)). A free slot holds, in its
//             first word, the link to the next free slot of its slab.
//   bump      a slab's slots [bump, objects_per_slab) have never been handed out: a new slab is
//             not touched beyond its header until its slots are used.
//   control   the shared state of a pool: lock, slab lists, counters, registry. Every pool handle
//             (object_pool is a copyable handle) and every slab header points to it.
//   handle    an object_pool value. Copies are handles to the same control block.
//
// Lifetime protocol
//   The control block lives while handles > 0 or in_use > 0, both counted under its lock. Whoever
//   brings the second of them to zero (the last handle's destructor, or the free of the last
//   object after the last handle is gone — they may race on two threads, the lock orders them)
//   sees both at zero under the lock, and after unlocking returns every slab and the control
//   block upstream: nobody else can reach the control block any more. Everything a thread needs
//   after unlocking (the upstream pointer) it copies out before unlocking.
//   With no handle left no allocation can happen, so slabs that become empty go back upstream at
//   once, and the cached empty slab goes back when the last handle does.
//   Thread caches (thread-safe, unchecked pools; detail/pool_cache.hpp): a slot in a thread's
//   cache counts as in use (in_use and the slabs' `used` include it), so the control block
//   cannot die while any thread caches its slots. When the last handle goes, the pool closes
//   (key.slot = no_pool_slot: every fast path misses) and the dropping thread flushes its own
//   cache; another thread's cached slots come back when it next frees an object of the pool,
//   when its table grows, or when it exits — the last of those frees may be the one that
//   destroys the control block, by the rule above.
//
// Lock order: a pool's lock, then (rarely: registry growth) the upstream resource's. Slabs are
// taken from and given back to the upstream with the pool's lock released.
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
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <bsalloc/locks.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/pool_ptr.hpp>
#include <bsalloc/stats.hpp>

#include <bsalloc/detail/config.hpp>  // BSALLOC_CHECKED_DEFAULT, BSALLOC_ASAN
#include <bsalloc/detail/pool_cache.hpp>

#ifdef BSALLOC_ASAN
#include <sanitizer/asan_interface.h>
#endif

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

namespace detail {

constexpr std::size_t pool_align_up(std::size_t v, std::size_t a) noexcept {
  return (v + a - 1) / a * a;
}

/// "T" out of a __PRETTY_FUNCTION__ of a template with parameter T (GCC and Clang forms).
std::string_view pool_type_name_from(std::string_view pretty) noexcept;

template <class T>
std::string_view pool_type_name() noexcept {
  return pool_type_name_from(__PRETTY_FUNCTION__);
}

/// Checked mode's verdict: prints "bsalloc: object_pool<type>: op(pointer): problem" to stderr
/// and aborts.
[[noreturn]] void pool_bad_pointer(std::string_view type, const char* op, const void* p,
                                   std::string_view problem) noexcept;
[[noreturn]] void pool_misaligned_slab(std::string_view type, const void* slab,
                                       std::size_t slab_bytes);
[[noreturn]] void pool_invariant_broken(std::string_view type, const std::string& what);

// AddressSanitizer: free slots are poisoned but for the link word, so a use after free of an
// object in a pool is reported.
inline void pool_poison(const void* p, std::size_t n) noexcept {
#ifdef BSALLOC_ASAN
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}
inline void pool_unpoison(const void* p, std::size_t n) noexcept {
#ifdef BSALLOC_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

// Memcheck (src/object_pool.cpp; no-ops unless built with <valgrind/memcheck.h> and running under
// memcheck): a pool constructed under memcheck has no thread cache, each slab is a memcheck
// memory pool and each slot handed out a chunk of it; free slots are no-access but for their link
// word, as under ASan.
bool pool_memcheck() noexcept;  // running under memcheck (decided once per process)
void pool_vg_slab_born(const void* slab, const void* first, std::size_t n) noexcept;
void pool_vg_slab_dies(const void* slab, std::size_t n) noexcept;
void pool_vg_alloc(const void* slab, const void* p, std::size_t n) noexcept;
void pool_vg_free(const void* slab, const void* p) noexcept;  // p's link word stays accessible

inline constexpr std::uintptr_t pool_slab_magic = 0x62736c6162706f6fULL;  // "bslabpoo"

}  // namespace detail

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

  struct control;

  enum class list_id : std::uint8_t { partial, full };

  // The header at the start of every slab.
  // Invariants (check_invariants() verifies them; the owner's lock guards every mutable field):
  //   S1 magic == pool_slab_magic ^ (address of the slab) while the slab belongs to a pool; 0
  //      once it has been given back upstream. owner never changes.
  //   S2 used + (length of the free list) + (objects_per_slab - bump) == objects_per_slab; the
  //      free list holds distinct slot starts below bump.
  //   S3 checked mode: bit i of the allocation bitmap (which follows the header) is set iff slot
  //      i is handed out; their count is used.
  struct slab {
    std::uintptr_t magic;
    control* owner;
    void* free;        // free slots below bump, linked through their first word
    std::size_t used;  // slots handed out
    std::size_t bump;  // slots [bump, objects_per_slab) never handed out
    slab* prev;        // neighbours on the partial or the full list
    slab* next;
    list_id where;
  };

  // A doubly linked list of slabs through their headers.
  struct slab_list {
    slab* head = nullptr;
    slab* tail = nullptr;

    void push_front(slab* s) noexcept {
      s->prev = nullptr;
      s->next = head;
      (head ? head->prev : tail) = s;
      head = s;
    }
    void push_back(slab* s) noexcept {
      s->next = nullptr;
      s->prev = tail;
      (tail ? tail->next : head) = s;
      tail = s;
    }
    void unlink(slab* s) noexcept {
      (s->prev ? s->prev->next : head) = s->next;
      (s->next ? s->next->prev : tail) = s->prev;
    }
  };

 public:
  using value_type = T;
  using lock_type = Lock;
  using pointer = pool_ptr<T, Lock, SlabBytes>;

  /// False for null_lock pools: one thread at a time for the pool and everything from it.
  static constexpr bool thread_safe = is_thread_safe_lock_v<Lock>;
  static constexpr std::size_t slot_align = std::max(alignof(T), alignof(void*));
  static constexpr std::size_t slot_size =
      detail::pool_align_up(std::max(sizeof(T), sizeof(void*)), slot_align);

 private:
  static constexpr std::size_t header_bytes_for(std::size_t n) noexcept {
    return detail::pool_align_up(sizeof(slab) + (n + 63) / 64 * 8, slot_align);
  }
  static constexpr std::size_t capacity_for(std::size_t bytes) noexcept {
    if (bytes <= sizeof(slab)) return 0;
    // Each slot costs slot_size bytes plus one bitmap bit: an upper bound, then down by the
    // rounding of the bitmap to words and of the header to slot_align (a few steps at most).
    std::size_t n = (bytes - sizeof(slab)) * 8 / (slot_size * 8 + 1);
    while (n > 0 && header_bytes_for(n) + n * slot_size > bytes) --n;
    return n;
  }
  static constexpr std::size_t auto_bytes() noexcept {
    std::size_t bytes = std::size_t{64} << 10;
    while (capacity_for(bytes) < 8) bytes *= 2;
    return bytes;
  }

 public:
  /// Bytes of one slab, also its alignment.
  static constexpr std::size_t slab_bytes = SlabBytes == auto_slab_bytes ? auto_bytes() : SlabBytes;
  /// Objects one slab holds.
  static constexpr std::size_t objects_per_slab = capacity_for(slab_bytes);

  static_assert(alignof(T) <= slab_bytes / 2,
                "object_pool<T, Lock, SlabBytes>: alignof(T) is more than a slab can give (a slab "
                "is aligned to SlabBytes and holds at least two objects); raise SlabBytes");
  static_assert(objects_per_slab >= 2,
                "object_pool<T, Lock, SlabBytes>: fewer than two objects of T fit in one slab "
                "after its header; raise SlabBytes (or leave it to the default)");

 private:
  static constexpr std::size_t first_slot = header_bytes_for(objects_per_slab);
  // Per thread and pool: at most cache_limit free slots (about 8 KiB), moved in batches.
  static constexpr std::uint32_t cache_limit =
      static_cast<std::uint32_t>(std::clamp<std::size_t>(8192 / slot_size, 4, 64));
  static constexpr std::uint32_t cache_batch = cache_limit / 2;
  static constexpr std::size_t bitmap_words = (objects_per_slab + 63) / 64;
  static_assert(sizeof(slab) % alignof(std::uint64_t) == 0);

  // The state every handle and every slab of one pool shares.
  // Invariants (check_invariants() verifies them; `lock` guards every field but the consts):
  //   C1 every slab of the pool is on exactly one list: `full` iff used == objects_per_slab,
  //      else `partial`; its `where` says which. Both lists are doubly linked.
  //   C2 at most one slab has used == 0: `empty`, the cached empty slab, kept at the tail end
  //      of the partial list (a slab that empties moves there), and only while handles > 0.
  //   C3 in_use == sum of used over the slabs (slots in thread caches count as used); peak >=
  //      in_use when the pool has no thread cache. With one, peak leaves out cached slots (it
  //      is brought up to date at each refill and flush, from the entry's low-water count).
  //   C4 registry holds exactly the slabs' addresses, sorted ascending; slabs == its size.
  //   C5 the control block exists iff handles > 0 or in_use > 0.
  struct alignas(64) control {
    control(std::pmr::memory_resource* up, bool check)
        : checked(check),
          memcheck(detail::pool_memcheck()),
          extra(check || memcheck),
          upstream(up),
          registry(up) {
      if (thread_safe && !check && !memcheck) detail::pool_cache_register(key, this, &flush_thunk);
    }

    [[no_unique_address]] mutable Lock lock;
    slab_list partial;      // slabs with a free slot; allocation takes from the head
    slab* empty = nullptr;  // the cached empty slab (on the partial list) or nullptr
    std::size_t in_use = 0;
    std::size_t peak = 0;
    const bool checked;
    const bool memcheck;  // constructed under memcheck: client requests, no thread cache
    const bool extra;     // checked || memcheck: the one flag the locked path tests
    std::pmr::memory_resource* const upstream;
    slab_list full;  // slabs with no free slot
    std::size_t handles = 1;
    std::size_t slabs = 0;
    std::pmr::vector<std::uintptr_t> registry;  // from upstream: a pool takes nothing elsewhere
    detail::pool_cache_key key;                 // the thread caches' view (no slot: none)
  };

  // What a thread does after it released the lock: give a slab back, destroy the pool.
  struct after_unlock {
    std::pmr::memory_resource* upstream;
    slab* release = nullptr;
    control* dead = nullptr;  // set for the one thread that saw handles == in_use == 0
  };

 public:
  /// A pool taking its slabs from global_page_resource().
  object_pool() : object_pool(object_pool_options{}) {}
  /// A pool taking its slabs from `upstream` (nullptr: global_page_resource()).
  explicit object_pool(std::pmr::memory_resource* upstream)
      : object_pool(object_pool_options{.upstream = upstream}) {}
  explicit object_pool(const object_pool_options& options) {
    std::pmr::memory_resource* up =
        options.upstream ? options.upstream : &bsalloc::global_page_resource();
    void* mem = up->allocate(sizeof(control), alignof(control));
    ctl_ = ::new (mem) control(up, options.checked);
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
  ~object_pool() { drop_handle(*ctl_); }

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
          on_handout(p);
          return static_cast<T*>(p);
        }
      }
      return static_cast<T*>(slot != detail::no_pool_slot ? refill(c) : allocate_miss(c));
    }
    return static_cast<T*>(allocate_locked(c));
  }

 private:
  // The pool's lock, one slot.
  static void* allocate_locked(control& c) {
    c.lock.lock();
    slab* s = c.partial.head;
    if (!s) [[unlikely]]
      return allocate_slow(c);
    void* p = take_slot(c, s);
    if (c.in_use > c.peak) c.peak = c.in_use;
    c.lock.unlock();
    on_handout(p);
    return p;
  }

 public:
  /// Gives back a slot from allocate() (its object already destroyed, or never constructed).
  /// nullptr is ignored. Checked mode verifies the pointer first (see the class comment).
  void deallocate(T* p) noexcept {
    if (!p) return;
    if (ctl_->checked) [[unlikely]] {
      deallocate_checked(*ctl_, p, "deallocate");
      return;
    }
    release_slot(slab_of(p), p);
  }

  /// Runs ~T on an object from this pool and gives its slot back. In checked mode the pointer
  /// is verified before ~T runs.
  void destroy(T* p) noexcept {
    if (!p) return;
    control& c = *ctl_;
    if (c.checked) [[unlikely]] {
      {
        std::lock_guard<Lock> guard(c.lock);
        validate(c, p, "destroy");
      }
      p->~T();
      deallocate_checked(c, p, "destroy");
      return;
    }
    p->~T();
    release_slot(slab_of(p), p);
  }

  /// Runs ~T and gives the slot back to whichever pool of this type it came from, found from
  /// the address alone (what pool_ptr's destructor calls). Any thread (thread_safe pools).
  /// The slab header's magic is verified always; in checked mode also the pool's registry, the
  /// object boundary and the allocation bit, before ~T runs. Unlike deallocate / destroy, this
  /// has to read the header p masks to, so p must at least point into mapped memory.
  static void dispose(T* p) noexcept {
    if (!p) return;
    slab* s = slab_of(p);
    // Checked or not (one compare on the header's first cache line): the header must be a
    // live slab's before its owner pointer is followed.
    if (s->magic != (detail::pool_slab_magic ^ reinterpret_cast<std::uintptr_t>(s))) [[unlikely]]
      detail::pool_bad_pointer(detail::pool_type_name<T>(), "dispose", p,
                               "not in a live object_pool slab (bad slab header)");
    if (s->owner->checked) [[unlikely]] {
      control& c = *s->owner;
      {
        std::lock_guard<Lock> guard(c.lock);
        validate(c, p, "dispose");
      }
      p->~T();
      deallocate_checked(c, p, "dispose");
      return;
    }
    p->~T();
    release_slot(s, p);
  }

  /// Whether p points into one of this pool's slabs (at any byte of any slot).
  bool owns(const void* p) const {
    const control& c = *ctl_;
    std::lock_guard<Lock> guard(c.lock);
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    return in_registry(c, a & ~(slab_bytes - 1)) && (a & (slab_bytes - 1)) >= first_slot;
  }

  /// Gives the cached empty slab back upstream; returns the bytes given back.
  std::size_t trim() {
    control& c = *ctl_;
    flush_own(c);
    after_unlock todo{c.upstream};
    {
      std::lock_guard<Lock> guard(c.lock);
      if (slab* e = c.empty) {
        c.empty = nullptr;
        forget_slab(c, e);
        todo.release = e;
      }
    }
    finish(todo);
    return todo.release ? slab_bytes : 0;
  }

  object_pool_stats stats() const {
    flush_own(*ctl_);  // the calling thread's cached slots count as free
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
    st.slabs = c.slabs;
    st.empty_slabs = c.empty ? 1 : 0;
    st.bytes_reserved = c.slabs * slab_bytes;
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

  /// Verifies S1–S3 for every slab and C1–C4; throws std::logic_error naming what is broken.
  void check_invariants() const {
    flush_own(*ctl_);
    const control& c = *ctl_;
    std::lock_guard<Lock> guard(c.lock);
    auto fail = [](const std::string& what) {
      detail::pool_invariant_broken(detail::pool_type_name<T>(), what);
    };
    std::size_t slabs = 0, used = 0;
    bool cached_seen = false;
    std::vector<std::uintptr_t> addresses;
    std::vector<bool> is_free(objects_per_slab);
    for (const list_id which : {list_id::partial, list_id::full}) {
      const slab_list& list = which == list_id::partial ? c.partial : c.full;
      const char* name = which == list_id::partial ? "partial" : "full";
      const slab* prev = nullptr;
      for (slab* s = list.head; s; prev = s, s = s->next) {
        const auto a = reinterpret_cast<std::uintptr_t>(s);
        if (++slabs > c.slabs)
          fail(fmt::format("C4: more slabs on the lists than the {} counted", c.slabs));
        if (s->prev != prev)
          fail(fmt::format("C1: {} list: broken back link at {}", name,
                           static_cast<const void*>(s)));
        if (s->where != which)
          fail(fmt::format("C1: slab {} is on the {} list but tagged otherwise",
                           static_cast<const void*>(s), name));
        if (a & (slab_bytes - 1))
          fail(fmt::format("S1: slab {} not aligned to its size", static_cast<const void*>(s)));
        if (s->magic != (detail::pool_slab_magic ^ a) || s->owner != &c)
          fail(fmt::format("S1: slab {}: bad magic or owner", static_cast<const void*>(s)));
        if (which == list_id::full ? s->used != objects_per_slab : s->used >= objects_per_slab)
          fail(fmt::format("C1: slab {} with {} of {} slots used is on the {} list",
                           static_cast<const void*>(s), s->used, objects_per_slab, name));
        if (s->used == 0 && s != c.empty)
          fail(fmt::format("C2: slab {} is empty but not the cached empty slab",
                           static_cast<const void*>(s)));
        if (s == c.empty) {
          cached_seen = true;
          if (s->next) fail("C2: the cached empty slab is not at the tail of the partial list");
        }
        if (s->bump > objects_per_slab)
          fail(fmt::format("S2: slab {}: bump {} past the end", static_cast<const void*>(s),
                           s->bump));
        std::fill(is_free.begin(), is_free.end(), false);
        std::size_t n = 0;
        for (void* p = s->free; p;) {
          const auto off = reinterpret_cast<std::uintptr_t>(p) - a;
          if (reinterpret_cast<std::uintptr_t>(p) < a || off < first_slot ||
              (off - first_slot) % slot_size || (off - first_slot) / slot_size >= s->bump)
            fail(fmt::format("S2: slab {}: free list holds {}, not a slot below bump",
                             static_cast<const void*>(s), p));
          const std::size_t i = (off - first_slot) / slot_size;
          if (is_free[i])
            fail(fmt::format("S2: slab {}: slot {} twice on the free list",
                             static_cast<const void*>(s), i));
          is_free[i] = true;
          ++n;
          std::memcpy(&p, p, sizeof p);
        }
        if (s->used + n + (objects_per_slab - s->bump) != objects_per_slab)
          fail(fmt::format("S2: slab {}: {} used + {} free + {} never used != {}",
                           static_cast<const void*>(s), s->used, n, objects_per_slab - s->bump,
                           objects_per_slab));
        if (c.checked) {
          std::size_t bits = 0;
          for (std::size_t i = 0; i < objects_per_slab; ++i) {
            const bool set = bitmap(s)[i / 64] >> (i % 64) & 1;
            bits += set;
            if (set && (is_free[i] || i >= s->bump))
              fail(fmt::format("S3: slab {}: slot {} is free but marked allocated",
                               static_cast<const void*>(s), i));
          }
          if (bits != s->used)
            fail(fmt::format("S3: slab {}: {} bits set for {} used", static_cast<const void*>(s),
                             bits, s->used));
        }
        used += s->used;
        addresses.push_back(a);
      }
      if (list.tail != prev) fail(fmt::format("C1: {} list: tail is not the last slab", name));
    }
    if (c.empty && !cached_seen) fail("C2: the cached empty slab is not on the partial list");
    if (used != c.in_use)
      fail(fmt::format("C3: in_use is {} but the slabs hold {}", c.in_use, used));
    if (c.key.home == detail::no_pool_slot && c.peak < c.in_use)
      fail(fmt::format("C3: peak {} below in_use {}", c.peak, c.in_use));
    if (slabs != c.slabs)
      fail(fmt::format("C4: {} slabs on the lists, {} counted", slabs, c.slabs));
    std::sort(addresses.begin(), addresses.end());
    if (!std::equal(addresses.begin(), addresses.end(), c.registry.begin(), c.registry.end()))
      fail("C4: the registry does not hold exactly the slabs' addresses");
  }

 private:
  static slab* slab_of(const void* p) noexcept {
    return reinterpret_cast<slab*>(reinterpret_cast<std::uintptr_t>(p) & ~(slab_bytes - 1));
  }
  static std::byte* slot_at(slab* s, std::size_t i) noexcept {
    return reinterpret_cast<std::byte*>(s) + first_slot + i * slot_size;
  }
  static std::uint64_t* bitmap(slab* s) noexcept {
    return reinterpret_cast<std::uint64_t*>(reinterpret_cast<std::byte*>(s) + sizeof(slab));
  }
  static std::size_t index_of(slab* s, const void* p) noexcept {
    return static_cast<std::size_t>(static_cast<const std::byte*>(p) -
                                    reinterpret_cast<std::byte*>(s) - first_slot) /
           slot_size;
  }
  static bool in_registry(const control& c, std::uintptr_t a) noexcept {
    return std::binary_search(c.registry.begin(), c.registry.end(), a);
  }

  static void on_handout(void* p) noexcept {
    detail::pool_poison(p, slot_size);
    detail::pool_unpoison(p, sizeof(T));
  }

  // Lock held. Takes a slot of s, which is on the partial list.
  static void* take_slot(control& c, slab* s) noexcept {
    void* p = s->free;
    if (p) {
      void* next;
      std::memcpy(&next, p, sizeof next);
      s->free = next;
    } else {
      p = slot_at(s, s->bump++);
    }
    if (s == c.empty) [[unlikely]]
      c.empty = nullptr;  // the cached empty slab is in use again
    if (++s->used == objects_per_slab) [[unlikely]] {
      c.partial.unlink(s);
      c.full.push_front(s);
      s->where = list_id::full;
    }
    if (c.extra) [[unlikely]] {
      if (c.checked) {
        const std::size_t i = index_of(s, p);
        bitmap(s)[i / 64] |= std::uint64_t{1} << (i % 64);
      }
      if (c.memcheck) detail::pool_vg_alloc(s, p, sizeof(T));
    }
    ++c.in_use;  // the caller updates peak (cached slots are not counted in it)
    return p;
  }

  // Lock held on entry (the partial list is empty); released on return and on throw.
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
    ++c.slabs;
    c.partial.push_front(fresh);
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
      detail::pool_misaligned_slab(detail::pool_type_name<T>(), mem, slab_bytes);
    }
    slab* s = ::new (mem) slab{detail::pool_slab_magic ^ reinterpret_cast<std::uintptr_t>(mem),
                               &c,
                               nullptr,
                               0,
                               0,
                               nullptr,
                               nullptr,
                               list_id::partial};
    std::memset(bitmap(s), 0, bitmap_words * sizeof(std::uint64_t));
    detail::pool_poison(slot_at(s, 0), slab_bytes - first_slot);
    if (c.memcheck) [[unlikely]]
      detail::pool_vg_slab_born(s, slot_at(s, 0), slab_bytes - first_slot);
    return s;
  }

  // No lock needed: the slab is off every list and out of the registry.
  static void release_slab(std::pmr::memory_resource* upstream, slab* s) noexcept {
    s->magic = 0;
    detail::pool_unpoison(s, slab_bytes);
    detail::pool_vg_slab_dies(s, slab_bytes);  // slots still out die with it; a no-op off memcheck
    upstream->deallocate(s, slab_bytes, slab_bytes);
  }

  // Lock held. Takes an empty slab off its list and out of the registry.
  static void forget_slab(control& c, slab* s) noexcept {
    (s->where == list_id::full ? c.full : c.partial).unlink(s);
    const auto a = reinterpret_cast<std::uintptr_t>(s);
    c.registry.erase(std::lower_bound(c.registry.begin(), c.registry.end(), a));
    --c.slabs;
  }

  // Lock held. Puts slot p back into s; returns what to do once the lock is released.
  static after_unlock put_slot(control& c, slab* s, void* p) noexcept {
    if (c.extra) [[unlikely]] {
      if (c.checked) {
        const std::size_t i = index_of(s, p);
        bitmap(s)[i / 64] &= ~(std::uint64_t{1} << (i % 64));
      }
      if (c.memcheck) detail::pool_vg_free(s, p);
    }
    detail::pool_poison(p, slot_size);
    detail::pool_unpoison(p, sizeof(void*));
    std::memcpy(p, &s->free, sizeof(void*));
    s->free = p;
    after_unlock todo{c.upstream};
    if (s->used-- == objects_per_slab) [[unlikely]] {
      c.full.unlink(s);
      c.partial.push_front(s);
      s->where = list_id::partial;
    } else if (s->used == 0) [[unlikely]] {
      todo.release = retire(c, s);
    }
    --c.in_use;
    if (c.handles == 0 && c.in_use == 0) todo.dead = &c;
    return todo;
  }

  // Lock held; s just became empty. Keeps it as the cached empty slab (at the tail end of the
  // partial list, so partly used slabs fill first) or returns it for release.
  [[gnu::noinline]] static slab* retire(control& c, slab* s) noexcept {
    if (c.handles > 0 && c.empty == nullptr) {
      c.empty = s;
      c.partial.unlink(s);
      c.partial.push_back(s);
      return nullptr;
    }
    forget_slab(c, s);
    return s;
  }

  static void free_slot(slab* s, void* p) noexcept {
    control& c = *s->owner;
    c.lock.lock();
    const after_unlock todo = put_slot(c, s, p);
    c.lock.unlock();
    if (todo.release || todo.dead) [[unlikely]]
      finish(todo);
  }

  // ---- the thread cache (see the lifetime protocol and detail/pool_cache.hpp) --------------

  // Gives slot p of s back: into this thread's cache for its pool when it has room, else to
  // the pool under its lock.
  static void release_slot(slab* s, void* p) noexcept {
    if constexpr (thread_safe) {
      control& c = *s->owner;
      const std::uint32_t slot = c.key.slot.load(std::memory_order_relaxed);
      const detail::pool_tls_state& t = detail::t_pool_cache;
      if (slot < t.cap) {
        detail::pool_tls_entry& e = t.table[slot];
        if (e.gen == c.key.gen && e.count < cache_limit) [[likely]] {
          detail::pool_poison(p, slot_size);
          detail::pool_unpoison(p, sizeof(void*));
          std::memcpy(p, &e.head, sizeof(void*));
          e.head = p;
          ++e.count;
          return;
        }
      }
      release_miss(s, p);
    } else {
      free_slot(s, p);
    }
  }

  // Out of line so that the hit path above keeps no registers: the cache's slow path, or the
  // lock for pools without a cache.
  [[gnu::noinline]] static void release_miss(slab* s, void* p) noexcept {
    if (s->owner->key.home != detail::no_pool_slot && push_slow(*s->owner, p)) return;
    free_slot(s, p);
  }

  // The calling thread's non-empty entry for c, or nullptr. Non-empty: c cannot die before the
  // entry is flushed (its slots count as in use).
  static detail::pool_tls_entry* own_entry(const control& c) noexcept {
    const std::uint32_t home = c.key.home;
    const detail::pool_tls_state& t = detail::t_pool_cache;
    if (home >= t.cap) return nullptr;
    detail::pool_tls_entry& e = t.table[home];
    return e.gen == c.key.gen && e.count > 0 ? &e : nullptr;
  }

  // Empties the entry (the calling thread's) into its pool c.
  static void flush_entry(control& c, detail::pool_tls_entry& e) noexcept {
    void* head = e.head;
    const std::uint32_t n = e.count;
    const std::uint32_t low = e.low;
    e.head = nullptr;
    e.count = e.low = 0;
    flush_slots(c, head, n, low);
  }

  static void flush_own(const control& c) noexcept {
    if (detail::pool_tls_entry* e = own_entry(c)) flush_entry(const_cast<control&>(c), *e);
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
      std::memcpy(&head, p, sizeof head);
      const after_unlock todo = put_slot(c, slab_of(p), p);
      if (todo.release) {
        todo.release->next = releases;
        releases = todo.release;
      }
      if (todo.dead) dead = todo.dead;
    }
    c.lock.unlock();
    while (slab* s = releases) {
      releases = s->next;
      release_slab(up, s);
    }
    if (dead) destroy_control(dead);
  }

  static void flush_thunk(void* owner, void* head, std::uint32_t n, std::uint32_t low) noexcept {
    flush_slots(*static_cast<control*>(owner), head, n, low);
  }

  // The fast free missed (no entry yet, a stale one, a full one, or c is closed). True when p
  // went into this thread's cache; false: the caller gives it to the pool.
  [[gnu::noinline]] static void* allocate_miss(control& c) { return allocate_locked(c); }

  [[gnu::noinline]] static bool push_slow(control& c, void* p) noexcept {
    if (c.key.slot.load(std::memory_order_relaxed) == detail::no_pool_slot) {
      // Closed: this thread's cached slots go back now (p is in use: c survives the flush).
      if (detail::pool_tls_entry* e = own_entry(c)) flush_entry(c, *e);
      return false;
    }
    detail::pool_tls_entry* e = detail::pool_cache_entry(c.key);
    if (!e) return false;
    if (e->count >= cache_limit) {  // keep the newest cache_limit - cache_batch, flush the rest
      void* last = e->head;
      for (std::uint32_t i = 1; i < cache_limit - cache_batch; ++i)
        std::memcpy(&last, last, sizeof last);
      void* rest;
      std::memcpy(&rest, last, sizeof rest);
      std::memset(last, 0, sizeof(void*));
      const std::uint32_t n = e->count - (cache_limit - cache_batch);
      const std::uint32_t low = e->low;
      e->count = e->low = cache_limit - cache_batch;
      flush_slots(c, rest, n, low);
    }
    detail::pool_poison(p, slot_size);
    detail::pool_unpoison(p, sizeof(void*));
    std::memcpy(p, &e->head, sizeof(void*));
    e->head = p;
    ++e->count;
    return true;
  }

  // The fast allocation missed on an open, cached pool: takes up to cache_batch slots under
  // one lock, hands out one and caches the rest.
  [[gnu::noinline]] static void* refill(control& c) {
    detail::pool_tls_entry* e = detail::pool_cache_entry(c.key);
    if (!e || e->head) return allocate_locked(c);  // e->head: only if closed meanwhile
    c.lock.lock();
    if (c.in_use - e->low > c.peak) c.peak = c.in_use - e->low;  // as in flush_slots
    e->low = 0;
    if (!c.partial.head) [[unlikely]]
      return allocate_slow(c);  // unlocks
    void* first = take_slot(c, c.partial.head);
    void* head = nullptr;
    std::uint32_t n = 0;
    for (; n + 1 < cache_batch && c.partial.head; ++n) {
      void* q = take_slot(c, c.partial.head);
      detail::pool_unpoison(q, sizeof(void*));
      std::memcpy(q, &head, sizeof head);
      head = q;
    }
    if (c.in_use - n > c.peak) c.peak = c.in_use - n;
    c.lock.unlock();
    e->head = head;
    e->count = e->low = n;
    on_handout(first);
    return first;
  }

  // Lock held. Checked mode: aborts unless p is the start of an allocated slot of c's slabs.
  // Reads nothing at p's slab before the registry says the slab is c's.
  static void validate(const control& c, const void* p, const char* op) noexcept {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const std::string_view type = detail::pool_type_name<T>();
    if (!in_registry(c, a & ~(slab_bytes - 1)))
      detail::pool_bad_pointer(type, op, p,
                               "not allocated from this pool (no slab of it holds it)");
    slab* s = slab_of(p);
    if (s->magic != (detail::pool_slab_magic ^ reinterpret_cast<std::uintptr_t>(s)) ||
        s->owner != &c)
      detail::pool_bad_pointer(type, op, p, "the slab header is corrupt");
    const std::size_t offset = a & (slab_bytes - 1);
    if (offset < first_slot)
      detail::pool_bad_pointer(type, op, p, "points into a slab header, not at an object");
    if ((offset - first_slot) % slot_size != 0 ||
        (offset - first_slot) / slot_size >= objects_per_slab)
      detail::pool_bad_pointer(type, op, p, "not the start of an object (inside a slot)");
    const std::size_t i = index_of(s, p);
    if (!(bitmap(s)[i / 64] >> (i % 64) & 1))
      detail::pool_bad_pointer(type, op, p, "not allocated: double free (or never handed out)");
  }

  [[gnu::noinline]] static void deallocate_checked(control& c, T* p, const char* op) noexcept {
    c.lock.lock();
    validate(c, p, op);
    const after_unlock todo = put_slot(c, slab_of(p), p);
    c.lock.unlock();
    finish(todo);
  }

  static void drop_handle(control& c) noexcept {
    detail::pool_tls_entry* own = own_entry(c);  // non-empty: c outlives this call
    bool closed = false;
    after_unlock todo{c.upstream};
    c.lock.lock();
    if (--c.handles == 0) {
      closed = true;
      c.key.slot.store(detail::no_pool_slot, std::memory_order_release);  // T3
      if (slab* e = c.empty) {  // no more allocations: the cached slab goes
        c.empty = nullptr;
        forget_slab(c, e);
        todo.release = e;
      }
      if (c.in_use == 0) todo.dead = &c;
    }
    c.lock.unlock();
    finish(todo);
    if (closed && own) flush_entry(c, *own);
  }

  // Lock released. `todo` holds everything needed: once the lock is released the control block
  // may already be gone unless todo.dead says this thread is the one to destroy it.
  static void finish(const after_unlock& todo) noexcept {
    if (todo.release) release_slab(todo.upstream, todo.release);
    if (todo.dead) destroy_control(todo.dead);
  }

  // The last handle and the last object are gone: nothing else can reach c. Every slab went
  // upstream when it emptied (no handle: no cache), so the lists are empty; a slab still on
  // them would be returned all the same.
  [[gnu::noinline]] static void destroy_control(control* c) noexcept {
    std::pmr::memory_resource* up = c->upstream;
    for (slab_list* list : {&c->partial, &c->full})
      while (slab* s = list->head) {
        list->unlink(s);
        release_slab(up, s);
      }
    detail::pool_cache_unregister(c->key);
    c->~control();
    up->deallocate(c, sizeof(control), alignof(control));
  }

  control* ctl_;
};

}  // namespace bsalloc

template <>
struct fmt::formatter<bsalloc::object_pool_stats>
    : bsalloc::detail::stats_formatter<bsalloc::object_pool_stats> {};
