// bsalloc::slab_resource — see include/bsalloc/slab_resource.hpp for the glossary and invariants.
//
// Layers, fastest first:
//   1. thread cache  (do_allocate / do_deallocate, inline): pop/push a per-class LIFO list.
//   2. core cache    (refill / flush, under the core's mutex): slabs, partial/full/empty lists.
//   3. upstream      (new_slab / return_slabs, no lock held): whole slabs, large requests.
// Remote frees go from layer 1's flush straight into the owner core's lock-free inbox.
#include <bsalloc/slab_resource.hpp>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <boost/lockfree/queue.hpp>

// Under AddressSanitizer free objects are poisoned (all but the word that links them), so a
// use after free inside the pool is reported like one outside it.
#if defined(__SANITIZE_ADDRESS__)
#define BSALLOC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BSALLOC_ASAN 1
#endif
#endif
#ifdef BSALLOC_ASAN
#include <sanitizer/asan_interface.h>
#define BSALLOC_POISON_FREE(p, size) \
  ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + sizeof(void*), (size) - sizeof(void*))
#define BSALLOC_UNPOISON(p, size) ASAN_UNPOISON_MEMORY_REGION((p), (size))
#else
#define BSALLOC_POISON_FREE(p, size) ((void)0)
#define BSALLOC_UNPOISON(p, size) ((void)0)
#endif

namespace bsalloc {
namespace detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Size classes: 8..64 step 8, then 8 classes per doubling up to 64 KiB (88 classes).
// ---------------------------------------------------------------------------------------------

constexpr int class_count = 88;
constexpr std::size_t small_max = 1024;       // sizes served by the inline table
constexpr std::size_t max_slab_align = 4096;  // alignment a class can give at most
constexpr std::uint32_t slab_magic = 0xb5a1ab5au;

constexpr std::size_t class_size_of(int c) {
  if (c < 8) return std::size_t{8} * static_cast<std::size_t>(c + 1);
  const std::size_t base = std::size_t{64} << ((c - 8) / 8);
  return base + static_cast<std::size_t>((c - 8) % 8 + 1) * (base / 8);
}

constexpr int class_of(std::size_t size) {  // 1 <= size <= 64 KiB
  if (size <= 64) return static_cast<int>((size + 7) / 8) - 1;
  const int m = static_cast<int>(std::bit_width(size - 1)) - 1;  // 2^m < size <= 2^(m+1)
  const std::size_t base = std::size_t{1} << m;
  const std::size_t step = base / 8;
  return 8 + (m - 6) * 8 + static_cast<int>((size - base + step - 1) / step) - 1;
}

static_assert(class_size_of(class_count - 1) == slab_resource::max_pool_block);
static_assert(class_of(65) == 8 && class_size_of(8) == 72 && class_of(128) == 15);
static_assert(class_of(129) == 16 && class_of(std::size_t{64} << 10) == class_count - 1);

constexpr std::size_t lowest_bit(std::size_t v) {
  return v & (~v + 1);
}
constexpr std::size_t round_up(std::size_t v, std::size_t a) {
  return (v + a - 1) / a * a;
}
constexpr bool power_of_two(std::size_t v) {
  return v != 0 && (v & (v - 1)) == 0;
}

// The inline class table, indexed by size / 8 rounded up. Every size up to 128 that is a
// multiple of 8 is a class, and every class above is a multiple of 16.
constexpr auto make_small_table() {
  std::array<std::uint8_t, small_max / 8 + 1> t{};
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<std::uint8_t>(class_of(std::max<std::size_t>(8, i * 8)));
  t[0] = static_cast<std::uint8_t>(class_of(16));  // 0 bytes: 16 serves every alignment <= 16
  return t;
}
constexpr auto small_class_table = make_small_table();

// Alignment 1..16, without a branch: for 16 the index is rounded up to even, so the class size
// is a multiple of 16 and its objects are 16-aligned.
constexpr std::size_t small_index(std::size_t bytes, std::size_t alignment) {
  const std::size_t i = (bytes + 7) >> 3;
  return i + (i & (alignment >> 4));
}
static_assert(class_size_of(small_class_table[small_index(24, 16)]) == 32);
static_assert(class_size_of(small_class_table[small_index(0, 16)]) == 16);
static_assert(class_size_of(small_class_table[small_index(24, 8)]) == 24);
static_assert(class_size_of(small_class_table[small_index(1024, 16)]) == 1024);

// Above 1 KiB every class size is a multiple of 128 (and so 16-aligned): size / 128 rounded up
// indexes the class exactly.
constexpr auto make_medium_table() {
  std::array<std::uint8_t, slab_resource::max_pool_block / 128 + 1> t{};
  for (std::size_t i = 0; i < t.size(); ++i)
    t[i] = static_cast<std::uint8_t>(class_of(std::max<std::size_t>(8, i * 128)));
  return t;
}
constexpr auto medium_class_table = make_medium_table();
static_assert(class_size_of(medium_class_table[(1025 + 127) >> 7]) == 1152);
static_assert(class_size_of(medium_class_table[(4096 + 127) >> 7]) == 4096);

// ---------------------------------------------------------------------------------------------
// Structures
// ---------------------------------------------------------------------------------------------

enum : std::uint8_t { list_partial, list_full, list_empty };

// The slab header: the first 64 bytes of every slab. Guarded by the owner core's lock, except
// magic/cls/owner/res, which never change after the slab is published.
struct slab {
  std::uint32_t magic;
  std::uint16_t cls;
  std::uint16_t owner;  // core cache index
  std::uint32_t used;   // objects out of the slab
  std::uint32_t capacity;
  std::uint32_t untouched;  // objects never handed out, from `tail` on
  std::uint8_t list;
  void* free;  // objects given back, LIFO, linked through their first word
  char* tail;
  slab* prev;
  slab* next;
  slab_state* res;
};
static_assert(sizeof(slab) <= 64);

struct class_geom {
  std::size_t size = 0;
  std::size_t slab_bytes = 0;
  std::size_t offset = 0;  // first object, from the slab start
  std::uint32_t capacity = 0;
  std::uint32_t bitmap_words = 0;  // checked mode: one bit per object, after the header
  std::uint32_t cache_limit = 0;   // thread cache: most objects kept at first
  std::uint32_t cache_max = 0;     // ... and after growing (a bin that overflows doubles)
};

struct bin {
  void* head = nullptr;
  std::atomic<std::uint32_t> count{0};  // written by the owner thread only; relaxed
  std::uint16_t limit = 0;              // <= cache_max <= 2048
  std::uint16_t refilled = 0;           // refilled since the limit last grew
};

struct thread_cache {
  slab_state* res;  // nullptr once the resource is gone (orphaned; the thread frees it)
  thread_cache* prev;
  thread_cache* next;
  std::array<bin, class_count> bins;
};

struct remote_batch {  // a chain of `count` objects of one class, linked through their first word
  void* head;
  std::uint32_t count;
  std::uint32_t cls;
};

struct alignas(64) core_cache {
  explicit core_cache(std::size_t capacity) : inbox(capacity) {}
  struct lists {
    slab* partial = nullptr;
    slab* full = nullptr;
    slab* empty = nullptr;
    std::uint32_t empty_count = 0;
    std::uint32_t slabs = 0;
  };
  std::mutex lock;
  std::array<lists, class_count> cls;  // lock
  slab_core_stats counters;            // lock
  boost::lockfree::queue<remote_batch, boost::lockfree::fixed_sized<true>> inbox;
  std::array<std::atomic<void*>, class_count> overflow{};  // Treiber stacks of objects
  std::array<std::atomic<std::uint64_t>, 2> overflow_mask{};
  std::atomic<std::size_t> overflows{0};
};

struct large_trailer {  // after the user's bytes of every large block
  large_trailer* prev;
  large_trailer* next;
  std::size_t bytes;
  std::size_t alignment;
};

struct slab_list {  // slabs to give back upstream once no lock is held
  slab* head = nullptr;
  void push(slab* s) {
    s->next = head;
    head = s;
  }
};

// Thread-local state. t_slots is trivially constructible: the fast path reads it with no guard.
struct tls_slot {
  std::uint64_t id;
  thread_cache* cache;
};
constexpr std::uint32_t tls_slot_count = 16;
thread_local tls_slot t_slots[tls_slot_count] __attribute__((tls_model("initial-exec")));
thread_local bool t_exiting __attribute__((tls_model("initial-exec")));

struct exit_hook {
  bool armed = false;
  ~exit_hook();
};
thread_local exit_hook t_exit_hook;

// Guards every thread cache's list membership, orphaning and flushing at exit. Recursive: a
// flush may return slabs to an upstream that is itself a slab_resource.
std::recursive_mutex& registry_mutex() {
  alignas(std::recursive_mutex) static std::byte storage[sizeof(std::recursive_mutex)];
  static std::recursive_mutex* const m = ::new (storage) std::recursive_mutex();
  return *m;
}

std::atomic<std::uint64_t> next_resource_id{1};

}  // namespace

struct slab_state {
  std::pmr::memory_resource* upstream = nullptr;
  slab_resource_options knobs;
  std::pmr::pool_options pool{};
  int classes = 0;  // classes in use: [0, classes)
  std::array<class_geom, class_count> geom{};
  core_cache* cores = nullptr;
  std::size_t ncores = 0;
  std::array<std::atomic<std::int64_t>, class_count> out{};  // objects out of slabs, not remote
  std::array<std::atomic<std::int64_t>, class_count> peak{};
  std::atomic<std::size_t> slab_bytes_reserved{0};
  thread_cache* caches = nullptr;  // registry_mutex
  std::mutex large_lock;
  large_trailer* large_head = nullptr;                                 // large_lock
  std::size_t large_objects = 0, large_bytes = 0, large_reserved = 0;  // large_lock
  std::mutex checked_lock;
  std::unordered_set<std::uintptr_t> checked_slabs;               // checked_lock
  std::unordered_map<std::uintptr_t, std::size_t> checked_large;  // checked_lock
  std::array<std::size_t, 16> slab_sizes{};  // distinct slab sizes, for checked lookups
  std::size_t slab_size_count = 0;
  const slab_resource* self = nullptr;

  // -- slabs ----------------------------------------------------------------------------------
  slab* slab_of(const void* p, int c) const {
    return reinterpret_cast<slab*>(reinterpret_cast<std::uintptr_t>(p) &
                                   ~(geom[static_cast<std::size_t>(c)].slab_bytes - 1));
  }
  std::atomic<std::uint64_t>* bitmap(slab* s) {
    return reinterpret_cast<std::atomic<std::uint64_t>*>(reinterpret_cast<char*>(s) + 64);
  }
  std::size_t object_index(slab* s, const void* p) const {
    const auto& g = geom[s->cls];
    return (static_cast<std::size_t>(static_cast<const char*>(p) - reinterpret_cast<char*>(s)) -
            g.offset) /
           g.size;
  }

  static void unlink(slab*& head, slab* s) {
    if (s->prev)
      s->prev->next = s->next;
    else
      head = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = nullptr;
  }
  static void link(slab*& head, slab* s) {
    s->prev = nullptr;
    s->next = head;
    if (head) head->prev = s;
    head = s;
  }
  static slab*& list_head(core_cache::lists& l, std::uint8_t which) {
    return which == list_partial ? l.partial : which == list_full ? l.full : l.empty;
  }
  static void move(core_cache::lists& l, slab* s, std::uint8_t to) {
    unlink(list_head(l, s->list), s);
    if (s->list == list_empty) --l.empty_count;
    s->list = to;
    link(list_head(l, to), s);
    if (to == list_empty) ++l.empty_count;
  }

  slab* new_slab(std::size_t core, int c) {
    const auto& g = geom[static_cast<std::size_t>(c)];
    void* mem = upstream->allocate(g.slab_bytes, g.slab_bytes);
    if (reinterpret_cast<std::uintptr_t>(mem) & (g.slab_bytes - 1)) {
      upstream->deallocate(mem, g.slab_bytes, g.slab_bytes);
      throw std::bad_alloc();  // an upstream that does not honour alignment cannot serve slabs
    }
    auto* s = static_cast<slab*>(mem);
    s->magic = slab_magic;
    s->cls = static_cast<std::uint16_t>(c);
    s->owner = static_cast<std::uint16_t>(core);
    s->used = 0;
    s->capacity = g.capacity;
    s->untouched = g.capacity;
    s->list = list_partial;
    s->free = nullptr;
    s->tail = reinterpret_cast<char*>(s) + g.offset;
    s->prev = s->next = nullptr;
    s->res = this;
    if (knobs.checked) {
      for (std::uint32_t w = 0; w < g.bitmap_words; ++w)
        ::new (bitmap(s) + w) std::atomic<std::uint64_t>(0);
      std::lock_guard lock(checked_lock);
      checked_slabs.insert(reinterpret_cast<std::uintptr_t>(s));
    }
    slab_bytes_reserved.fetch_add(g.slab_bytes, std::memory_order_relaxed);
    return s;
  }

  void return_slabs(slab_list& l) {
    while (slab* s = l.head) {
      l.head = s->next;
      const std::size_t bytes = geom[s->cls].slab_bytes;
      if (knobs.checked) {
        std::lock_guard lock(checked_lock);
        checked_slabs.erase(reinterpret_cast<std::uintptr_t>(s));
      }
      BSALLOC_UNPOISON(s, bytes);
      s->magic = 0;
      slab_bytes_reserved.fetch_sub(bytes, std::memory_order_relaxed);
      upstream->deallocate(s, bytes, bytes);
    }
  }

  // -- core cache, lock held ------------------------------------------------------------------
  // An object comes back into its slab (owned by `core`).
  void put_back(core_cache& core, void* p, int c, slab_list& returns) {
    slab* s = slab_of(p, c);
    *static_cast<void**>(p) = s->free;
    s->free = p;
    BSALLOC_POISON_FREE(p, geom[static_cast<std::size_t>(c)].size);
    --s->used;
    auto& l = core.cls[static_cast<std::size_t>(c)];
    if (s->list == list_full) move(l, s, list_partial);
    if (s->used == 0) {
      if (l.empty_count < knobs.max_empty_slabs_per_class) {
        move(l, s, list_empty);
      } else {
        unlink(list_head(l, s->list), s);
        --l.slabs;
        ++core.counters.slab_returns;
        returns.push(s);
      }
    }
  }

  void drain(core_cache& core, slab_list& returns) {
    remote_batch m;
    while (core.inbox.pop(m)) {
      void* p = m.head;
      for (std::uint32_t i = 0; i < m.count; ++i) {
        void* next = *static_cast<void**>(p);
        put_back(core, p, static_cast<int>(m.cls), returns);
        p = next;
      }
      core.counters.remote_frees_received += m.count;
    }
    for (std::size_t w = 0; w < core.overflow_mask.size(); ++w) {
      if (core.overflow_mask[w].load(std::memory_order_relaxed) == 0) continue;
      std::uint64_t bits = core.overflow_mask[w].exchange(0, std::memory_order_acquire);
      while (bits) {
        const int c = static_cast<int>(w * 64) + std::countr_zero(bits);
        bits &= bits - 1;
        void* p =
            core.overflow[static_cast<std::size_t>(c)].exchange(nullptr, std::memory_order_acquire);
        while (p) {
          void* next = *static_cast<void**>(p);
          put_back(core, p, c, returns);
          ++core.counters.remote_frees_received;
          p = next;
        }
      }
    }
  }

  // Takes up to n objects of class c from the core's slabs; returns them chained.
  std::uint32_t take(core_cache& core, int c, std::uint32_t n, void*& chain) {
    auto& l = core.cls[static_cast<std::size_t>(c)];
    const std::size_t size = geom[static_cast<std::size_t>(c)].size;
    std::uint32_t got = 0;
    while (got < n) {
      slab* s = l.partial;
      if (!s) {
        if (!l.empty) break;
        s = l.empty;
        move(l, s, list_partial);
      }
      while (got < n && (s->free || s->untouched)) {
        void* p;
        if (s->free) {
          p = s->free;
          s->free = *static_cast<void**>(p);
        } else {
          p = s->tail;
          s->tail += size;
          --s->untouched;
        }
        ++s->used;
        *static_cast<void**>(p) = chain;
        chain = p;
        ++got;
      }
      if (!s->free && !s->untouched) move(l, s, list_full);
    }
    core.counters.allocations += got;
    return got;
  }

  // -- between thread and core caches -----------------------------------------------------------
  std::size_t current_core() const {
    const int cpu = ::sched_getcpu();
    return cpu < 0 ? 0 : static_cast<std::size_t>(cpu) % ncores;
  }

  // Takes up to n objects of class c from one core's slabs (after draining its inbox).
  std::uint32_t take_from(std::size_t ci, int c, std::uint32_t n, void*& chain, slab* fresh) {
    core_cache& core = cores[ci];
    slab_list returns;
    std::uint32_t got;
    {
      std::lock_guard lock(core.lock);
      drain(core, returns);
      if (fresh) {
        auto& l = core.cls[static_cast<std::size_t>(c)];
        link(l.partial, fresh);
        ++l.slabs;
        ++core.counters.slab_refills;
      }
      got = take(core, c, n, chain);
    }
    return_slabs(returns);
    if (got) {
      const auto now = out[static_cast<std::size_t>(c)].fetch_add(got) + got;
      auto& pk = peak[static_cast<std::size_t>(c)];
      for (auto seen = pk.load(std::memory_order_relaxed);
           now > seen && !pk.compare_exchange_weak(seen, now);) {
      }
    }
    return got;
  }

  std::uint32_t refill(int c, std::uint32_t n, void*& chain) {
    const std::size_t ci = current_core();
    if (std::uint32_t got = take_from(ci, c, n, chain, nullptr)) return got;
    slab* fresh;
    try {
      fresh = new_slab(ci, c);  // no lock held
    } catch (const std::bad_alloc&) {
      // The upstream is out: objects free in other cores' slabs still serve (a thread that
      // migrated left them there). They stay those cores' objects.
      for (std::size_t k = 1; k < ncores; ++k)
        if (std::uint32_t got = take_from((ci + k) % ncores, c, n, chain, nullptr)) return got;
      throw;  // nothing changed
    }
    return take_from(ci, c, n, chain, fresh);
  }

  // Gives a chain of n objects of class c back: local ones into this core's slabs under its
  // lock, remote ones posted to their owners' inboxes.
  void flush(int c, void* chain, std::uint32_t n) {
    if (n == 0) return;
    out[static_cast<std::size_t>(c)].fetch_sub(n);
    const std::size_t ci = current_core();
    core_cache& core = cores[ci];
    struct group {
      std::size_t owner;
      void* head;
      void* tail;
      std::uint32_t count;
    };
    std::array<group, 8> groups;
    std::size_t ngroups = 0;
    slab_list returns;
    {
      std::lock_guard lock(core.lock);
      drain(core, returns);
      std::uint32_t local = 0;
      for (void* p = chain; n--;) {
        void* next = *static_cast<void**>(p);
        const std::size_t owner = slab_of(p, c)->owner;
        if (owner == ci) {
          put_back(core, p, c, returns);
          ++local;
        } else {
          std::size_t g = 0;
          while (g < ngroups && groups[g].owner != owner) ++g;
          if (g == groups.size()) {  // more owners than groups: post the first one now
            post(core, groups[0].owner, c, groups[0].head, groups[0].tail, groups[0].count);
            groups[0] = groups[--ngroups];
            g = ngroups;
          }
          if (g == ngroups) groups[ngroups++] = {owner, nullptr, p, 0};
          *static_cast<void**>(p) = groups[g].head;
          groups[g].head = p;
          ++groups[g].count;
        }
        p = next;
      }
      for (std::size_t g = 0; g < ngroups; ++g)
        post(core, groups[g].owner, c, groups[g].head, groups[g].tail, groups[g].count);
      core.counters.deallocations += local;
    }
    return_slabs(returns);  // no lock held
  }

  // Posts a chain to another core's inbox, never taking its lock and never dropping it.
  void post(core_cache& from, std::size_t owner, int c, void* head, void* tail,
            std::uint32_t count) {
    core_cache& to = cores[owner];
    from.counters.remote_frees_sent += count;
    if (to.inbox.bounded_push(remote_batch{head, count, static_cast<std::uint32_t>(c)})) return;
    to.overflows.fetch_add(1, std::memory_order_relaxed);
    auto& stack = to.overflow[static_cast<std::size_t>(c)];
    void* old = stack.load(std::memory_order_relaxed);
    do {
      *static_cast<void**>(tail) = old;
    } while (!stack.compare_exchange_weak(old, head, std::memory_order_release,
                                          std::memory_order_relaxed));
    to.overflow_mask[static_cast<std::size_t>(c) / 64].fetch_or(
        std::uint64_t{1} << (static_cast<std::size_t>(c) % 64), std::memory_order_release);
  }

  // -- thread caches ----------------------------------------------------------------------------
  void flush_cache(thread_cache& tc) {  // everything in it goes back
    for (int c = 0; c < classes; ++c) {
      bin& b = tc.bins[static_cast<std::size_t>(c)];
      const std::uint32_t n = b.count.load(std::memory_order_relaxed);
      void* head = b.head;
      b.head = nullptr;
      b.count.store(0, std::memory_order_relaxed);
      flush(c, head, n);
    }
  }
  void link_cache(thread_cache* tc) {
    tc->prev = nullptr;
    tc->next = caches;
    if (caches) caches->prev = tc;
    caches = tc;
  }
  void unlink_cache(thread_cache* tc) {
    if (tc->prev)
      tc->prev->next = tc->next;
    else
      caches = tc->next;
    if (tc->next) tc->next->prev = tc->prev;
  }

  // -- large blocks ---------------------------------------------------------------------------
  static std::size_t large_body(std::size_t bytes) {
    return round_up(bytes, alignof(large_trailer));
  }
  static std::size_t large_align(std::size_t a) { return std::max(a, alignof(large_trailer)); }

  void* allocate_large(std::size_t bytes, std::size_t alignment) {
    if (bytes > std::numeric_limits<std::size_t>::max() / 2) throw std::bad_alloc();
    const std::size_t body = large_body(bytes);
    const std::size_t total = body + sizeof(large_trailer);
    void* p = upstream->allocate(total, large_align(alignment));
    auto* t = reinterpret_cast<large_trailer*>(static_cast<char*>(p) + body);
    t->bytes = bytes;
    t->alignment = alignment;
    std::lock_guard lock(large_lock);
    t->prev = nullptr;
    t->next = large_head;
    if (large_head) large_head->prev = t;
    large_head = t;
    ++large_objects;
    large_bytes += bytes;
    large_reserved += total;
    return p;
  }
  void deallocate_large(void* p, std::size_t bytes, std::size_t alignment) {
    const std::size_t body = large_body(bytes);
    const std::size_t total = body + sizeof(large_trailer);
    auto* t = reinterpret_cast<large_trailer*>(static_cast<char*>(p) + body);
    {
      std::lock_guard lock(large_lock);
      if (t->prev)
        t->prev->next = t->next;
      else
        large_head = t->next;
      if (t->next) t->next->prev = t->prev;
      --large_objects;
      large_bytes -= bytes;
      large_reserved -= total;
    }
    upstream->deallocate(p, total, large_align(alignment));
  }

  // -- checked mode ---------------------------------------------------------------------------
  [[noreturn]] void bad(const void* p, std::size_t bytes, std::size_t alignment,
                        const std::string& problem) const {
    std::fflush(stdout);
    fmt::print(stderr, "bsalloc: slab_resource {}: deallocate({}, {}, {}): {}\n",
               static_cast<const void*>(self), p, bytes, alignment, problem);
    std::fflush(stderr);
    std::abort();
  }

  // The registered slab that holds p, whatever its class; nullptr if none. checked_lock held.
  slab* registered_slab(const void* p) const {
    for (std::size_t i = 0; i < slab_size_count; ++i) {
      const auto base = reinterpret_cast<std::uintptr_t>(p) & ~(slab_sizes[i] - 1);
      if (checked_slabs.count(base)) return reinterpret_cast<slab*>(base);
    }
    return nullptr;
  }

  void mark_allocated(void* p, int c) {
    slab* s = slab_of(p, c);
    const std::size_t i = object_index(s, p);
    const std::uint64_t bit = std::uint64_t{1} << (i % 64);
    if (bitmap(s)[i / 64].fetch_or(bit, std::memory_order_relaxed) & bit) {
      fmt::print(stderr,
                 "bsalloc: slab_resource {}: allocate: object {} handed out twice "
                 "(heap corruption: a write after free?)\n",
                 static_cast<const void*>(self), p);
      std::abort();
    }
  }

  void check_deallocate(void* p, std::size_t bytes, std::size_t alignment, int c) {
    std::lock_guard lock(checked_lock);
    const auto addr = reinterpret_cast<std::uintptr_t>(p);
    if (c < 0) {
      auto it = checked_large.find(addr);
      if (it != checked_large.end()) {
        if (it->second != bytes)
          bad(p, bytes, alignment,
              fmt::format("size does not match the allocation ({} bytes)", it->second));
        checked_large.erase(it);
        return;
      }
      if (slab* s = registered_slab(p))
        bad(p, bytes, alignment,
            fmt::format("size or alignment does not match the allocation (a {}-byte object)",
                        geom[s->cls].size));
      bad(p, bytes, alignment,
          "pointer is not a live allocation of this resource (foreign pointer or double free)");
    }
    slab* s = registered_slab(p);
    if (!s) {
      if (checked_large.count(addr))
        bad(p, bytes, alignment,
            fmt::format("size does not match the allocation ({} bytes, from the upstream)",
                        checked_large[addr]));
      bad(p, bytes, alignment, "pointer was not allocated by this resource");
    }
    if (s->cls != c)
      bad(p, bytes, alignment,
          fmt::format("size or alignment does not match the allocation (a {}-byte object)",
                      geom[s->cls].size));
    const auto& g = geom[s->cls];
    const std::size_t off = addr - reinterpret_cast<std::uintptr_t>(s);
    if (off < g.offset || (off - g.offset) % g.size != 0 || (off - g.offset) / g.size >= g.capacity)
      bad(p, bytes, alignment, "pointer is not the start of an object");
    const std::size_t i = (off - g.offset) / g.size;
    const std::uint64_t bit = std::uint64_t{1} << (i % 64);
    if (!(bitmap(s)[i / 64].fetch_and(~bit, std::memory_order_relaxed) & bit))
      bad(p, bytes, alignment, "double free");
  }
};

namespace {

thread_cache* find_cache(std::uint64_t id, std::uint32_t slot) {
  tls_slot& s = t_slots[slot];
  return s.id == id ? s.cache : nullptr;
}

// Drops whatever occupies a thread's slot: flushed into its resource if that is alive. Registry
// lock held.
void evict(tls_slot& s) {
  if (thread_cache* tc = s.cache) {
    if (tc->res) {
      tc->res->flush_cache(*tc);
      tc->res->unlink_cache(tc);
    }
    delete tc;
  }
  s = tls_slot{0, nullptr};
}

exit_hook::~exit_hook() {
  t_exiting = true;
  std::lock_guard lock(registry_mutex());
  for (auto& s : t_slots) evict(s);
}

}  // namespace
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------------------------

using detail::class_count;
using detail::slab_state;

slab_resource::slab_resource() : slab_resource(std::pmr::pool_options{}) {}
slab_resource::slab_resource(std::pmr::memory_resource* upstream)
    : slab_resource(std::pmr::pool_options{}, slab_resource_options{}, upstream) {}
slab_resource::slab_resource(const std::pmr::pool_options& options,
                             std::pmr::memory_resource* upstream)
    : slab_resource(options, slab_resource_options{}, upstream) {}
slab_resource::slab_resource(const std::pmr::pool_options& options)
    : slab_resource(options, slab_resource_options{}, &global_page_resource()) {}

slab_resource::slab_resource(const std::pmr::pool_options& options,
                             const slab_resource_options& knobs,
                             std::pmr::memory_resource* upstream)
    : state_(nullptr),
      id_(detail::next_resource_id.fetch_add(1)),
      slot_(static_cast<std::uint32_t>(id_ % detail::tls_slot_count)),
      small_bound_(0),
      inline_bound_(0),
      checked_(knobs.checked) {
  if (!upstream) throw std::invalid_argument("bsalloc::slab_resource: null upstream");
  if (knobs.min_slab_bytes < page_size || knobs.min_slab_bytes > (std::size_t{1} << 20) ||
      !detail::power_of_two(knobs.min_slab_bytes))
    throw std::invalid_argument(fmt::format(
        "bsalloc::slab_resource: min_slab_bytes {} is not a power of two from 4 KiB to 1 MiB",
        knobs.min_slab_bytes));
  if (knobs.remote_queue_capacity == 0 || knobs.remote_queue_capacity > 65534)
    throw std::invalid_argument(
        fmt::format("bsalloc::slab_resource: remote_queue_capacity {} is not in 1..65534",
                    knobs.remote_queue_capacity));
  auto st = std::make_unique<slab_state>();
  st->upstream = upstream;
  st->knobs = knobs;
  st->self = this;
  std::size_t largest = options.largest_required_pool_block;
  if (largest == 0) largest = std::size_t{32} << 10;
  largest = std::clamp<std::size_t>(largest, 8, max_pool_block);
  st->classes = detail::class_of(largest) + 1;
  std::size_t most_objects = 0;
  for (int c = 0; c < st->classes; ++c) {
    auto& g = st->geom[static_cast<std::size_t>(c)];
    g.size = detail::class_size_of(c);
    g.slab_bytes = std::max(knobs.min_slab_bytes, std::bit_ceil(g.size * 16));
    const std::size_t bits = g.slab_bytes / g.size;
    g.bitmap_words = knobs.checked ? static_cast<std::uint32_t>((bits + 63) / 64) : 0;
    const std::size_t obj_align = std::min(detail::lowest_bit(g.size), detail::max_slab_align);
    g.offset = detail::round_up(64 + std::size_t{g.bitmap_words} * 8, obj_align);
    g.capacity = static_cast<std::uint32_t>((g.slab_bytes - g.offset) / g.size);
    g.cache_limit = static_cast<std::uint32_t>(
        std::clamp<std::size_t>((std::size_t{32} << 10) / g.size, 2, 256));
    g.cache_max = std::max<std::uint32_t>(
        g.cache_limit,
        static_cast<std::uint32_t>(std::min<std::size_t>(2048, (std::size_t{128} << 10) / g.size)));
    most_objects = std::max<std::size_t>(most_objects, g.capacity);
    if (std::find(st->slab_sizes.begin(), st->slab_sizes.begin() + st->slab_size_count,
                  g.slab_bytes) == st->slab_sizes.begin() + st->slab_size_count)
      st->slab_sizes[st->slab_size_count++] = g.slab_bytes;
  }
  st->pool.largest_required_pool_block = detail::class_size_of(st->classes - 1);
  st->pool.max_blocks_per_chunk = most_objects;
  if (!knobs.checked) {
    small_bound_ = static_cast<std::uint32_t>(
        std::min(detail::small_max, st->pool.largest_required_pool_block) + 1);
    inline_bound_ = static_cast<std::uint32_t>(st->pool.largest_required_pool_block + 1);
  }
  std::size_t n = knobs.caches;
  if (n == 0) n = static_cast<std::size_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_CONF)));
  n = std::min<std::size_t>(n, 4096);
  st->knobs.caches = n;
  st->ncores = n;
  st->cores = static_cast<detail::core_cache*>(::operator new (
      sizeof(detail::core_cache) * n, std::align_val_t{alignof(detail::core_cache)}));
  std::size_t built = 0;
  try {
    for (; built < n; ++built)
      ::new (&st->cores[built]) detail::core_cache(knobs.remote_queue_capacity);
  } catch (...) {
    while (built) st->cores[--built].~core_cache();
    ::operator delete (st->cores, std::align_val_t{alignof(detail::core_cache)});
    throw;
  }
  state_ = st.release();
}

namespace {
// Every slab and large block back upstream; every core's lists reset. No concurrent use.
void free_everything(slab_state& st) {
  detail::slab_list returns;
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    auto& core = st.cores[ci];
    std::lock_guard lock(core.lock);
    detail::remote_batch m;
    while (core.inbox.pop(m)) {
    }
    for (auto& o : core.overflow) o.store(nullptr, std::memory_order_relaxed);
    for (auto& w : core.overflow_mask) w.store(0, std::memory_order_relaxed);
    for (auto& l : core.cls) {
      for (detail::slab** head : {&l.partial, &l.full, &l.empty}) {
        while (detail::slab* s = *head) {
          *head = s->next;
          returns.push(s);
        }
      }
      l = {};
    }
  }
  st.return_slabs(returns);
  for (auto& o : st.out) o.store(0, std::memory_order_relaxed);
  detail::large_trailer* t;
  {
    std::lock_guard lock(st.large_lock);
    t = st.large_head;
    st.large_head = nullptr;
    st.large_objects = st.large_bytes = st.large_reserved = 0;
  }
  while (t) {
    detail::large_trailer* next = t->next;
    const std::size_t body = slab_state::large_body(t->bytes);
    st.upstream->deallocate(reinterpret_cast<char*>(t) - body, body + sizeof(*t),
                            slab_state::large_align(t->alignment));
    t = next;
  }
  std::lock_guard lock(st.checked_lock);
  st.checked_slabs.clear();
  st.checked_large.clear();
}
}  // namespace

slab_resource::~slab_resource() {
  {
    std::lock_guard lock(detail::registry_mutex());
    for (auto* tc = state_->caches; tc; tc = tc->next) tc->res = nullptr;  // orphaned
    state_->caches = nullptr;
    // This thread's slot would otherwise keep an orphan until it exits.
    auto& s = detail::t_slots[slot_];
    if (s.id == id_) detail::evict(s);
  }
  free_everything(*state_);
  for (std::size_t i = 0; i < state_->ncores; ++i) state_->cores[i].~core_cache();
  ::operator delete (state_->cores, std::align_val_t{alignof(detail::core_cache)});
  delete state_;
}

std::pmr::memory_resource* slab_resource::upstream_resource() const noexcept {
  return state_->upstream;
}
std::pmr::pool_options slab_resource::options() const noexcept {
  return state_->pool;
}
const slab_resource_options& slab_resource::knobs() const noexcept {
  return state_->knobs;
}

int slab_resource::size_class(std::size_t bytes, std::size_t alignment) noexcept {
  if (alignment <= 16 && bytes <= detail::small_max && detail::power_of_two(alignment))
    return detail::small_class_table[detail::small_index(bytes, alignment)];
  if (alignment <= 8) {
    return bytes <= max_pool_block ? detail::class_of(bytes) : -1;
  }
  if (alignment > detail::max_slab_align || !detail::power_of_two(alignment)) return -1;
  const std::size_t size = detail::round_up(std::max(bytes, alignment), alignment);
  if (size > max_pool_block) return -1;
  int c = detail::class_of(size);
  while (c < class_count && detail::lowest_bit(detail::class_size_of(c)) < alignment) ++c;
  return c < class_count ? c : -1;
}

std::size_t slab_resource::class_size(int cls) noexcept {
  return cls >= 0 && cls < class_count ? detail::class_size_of(cls) : 0;
}

// ---------------------------------------------------------------------------------------------
// The fast path: thread cache hit. Everything else is in allocate_slow / deallocate_slow.
// ---------------------------------------------------------------------------------------------

// The class the inline path serves, or -1: small sizes by the first table, the rest of the
// classes by the second, so that the common small case stays one compare and one load.
#define BSALLOC_INLINE_CLASS(bytes, alignment, cls)                         \
  if ((bytes) < small_bound_) [[likely]]                                    \
    cls = detail::small_class_table[detail::small_index(bytes, alignment)]; \
  else if ((bytes) < inline_bound_)                                         \
    cls = detail::medium_class_table[((bytes) + 127) >> 7];                 \
  else                                                                      \
    cls = -1

void* slab_resource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (alignment <= 16) [[likely]] {
    int cls;
    BSALLOC_INLINE_CLASS(bytes, alignment, cls);
    const detail::tls_slot& s = detail::t_slots[slot_];
    if (cls >= 0 && s.id == id_) [[likely]] {
      detail::bin& b = s.cache->bins[static_cast<std::size_t>(cls)];
      if (void* p = b.head) [[likely]] {
        b.head = *static_cast<void**>(p);
        b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
        BSALLOC_UNPOISON(p, detail::class_size_of(cls));
        return p;
      }
    }
  }
  return allocate_slow(bytes, alignment);
}

void slab_resource::do_deallocate(void* p, std::size_t bytes, std::size_t alignment) {
  if (alignment <= 16) [[likely]] {
    int cls;
    BSALLOC_INLINE_CLASS(bytes, alignment, cls);
    const detail::tls_slot& s = detail::t_slots[slot_];
    if (cls >= 0 && s.id == id_) [[likely]] {
      detail::bin& b = s.cache->bins[static_cast<std::size_t>(cls)];
      const std::uint32_t n = b.count.load(std::memory_order_relaxed);
      if (n < b.limit) [[likely]] {
        *static_cast<void**>(p) = b.head;
        b.head = p;
        b.count.store(n + 1, std::memory_order_relaxed);
        BSALLOC_POISON_FREE(p, detail::class_size_of(cls));
        return;
      }
    }
  }
  deallocate_slow(p, bytes, alignment);
}
#undef BSALLOC_INLINE_CLASS

namespace {
detail::thread_cache* cache_for(slab_state& st, std::uint64_t id, std::uint32_t slot) {
  if (detail::thread_cache* tc = detail::find_cache(id, slot)) return tc;
  if (!st.knobs.thread_cache || detail::t_exiting) return nullptr;
  std::lock_guard lock(detail::registry_mutex());
  auto& s = detail::t_slots[slot];
  detail::evict(s);
  auto* tc = new (std::nothrow) detail::thread_cache{};
  if (!tc) return nullptr;  // no cache: served by the core caches directly
  tc->res = &st;
  for (int c = 0; c < st.classes; ++c)
    tc->bins[static_cast<std::size_t>(c)].limit =
        static_cast<std::uint16_t>(st.geom[static_cast<std::size_t>(c)].cache_limit);
  st.link_cache(tc);
  s = detail::tls_slot{id, tc};
  detail::t_exit_hook.armed = true;  // registers the thread-exit flush
  return tc;
}
}  // namespace

void* slab_resource::allocate_slow(std::size_t bytes, std::size_t alignment) {
  slab_state& st = *state_;
  if (!detail::power_of_two(alignment))
    throw std::invalid_argument(
        fmt::format("bsalloc::slab_resource: alignment {} is not a power of two", alignment));
  int c = size_class(bytes, alignment);
  if (c >= st.classes) c = -1;
  if (c < 0) {
    void* p = st.allocate_large(bytes, alignment);
    if (checked_) {
      std::lock_guard lock(st.checked_lock);
      st.checked_large[reinterpret_cast<std::uintptr_t>(p)] = bytes;
    }
    return p;
  }
  void* p;
  if (detail::thread_cache* tc = cache_for(st, id_, slot_)) {
    detail::bin& b = tc->bins[static_cast<std::size_t>(c)];
    if (b.head) {
      p = b.head;
      b.head = *static_cast<void**>(p);
      b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    } else {
      void* chain = nullptr;
      const std::uint32_t got = st.refill(c, std::max<std::uint32_t>(1, b.limit / 2u), chain);
      b.refilled = 1;
      p = chain;
      b.head = *static_cast<void**>(chain);
      b.count.store(got - 1, std::memory_order_relaxed);
    }
  } else {
    void* chain = nullptr;
    st.refill(c, 1, chain);
    p = chain;
  }
  if (checked_) st.mark_allocated(p, c);
  BSALLOC_UNPOISON(p, st.geom[static_cast<std::size_t>(c)].size);
  return p;
}

void slab_resource::deallocate_slow(void* p, std::size_t bytes, std::size_t alignment) {
  slab_state& st = *state_;
  int c = detail::power_of_two(alignment) ? size_class(bytes, alignment) : -2;
  if (c >= st.classes) c = -1;
  if (checked_) {
    if (c == -2) st.bad(p, bytes, alignment, "alignment is not a power of two");
    st.check_deallocate(p, bytes, alignment, c);
  }
  if (c < 0) {
    st.deallocate_large(p, bytes, alignment);
    return;
  }
  BSALLOC_POISON_FREE(p, st.geom[static_cast<std::size_t>(c)].size);
  if (detail::thread_cache* tc = cache_for(st, id_, slot_)) {
    detail::bin& b = tc->bins[static_cast<std::size_t>(c)];
    *static_cast<void**>(p) = b.head;
    b.head = p;
    const std::uint32_t n = b.count.load(std::memory_order_relaxed) + 1;
    if (n <= b.limit) {
      b.count.store(n, std::memory_order_relaxed);
      return;
    }
    const std::uint32_t most = st.geom[static_cast<std::size_t>(c)].cache_max;
    if (b.limit < most && b.refilled) {
      // A bin that overflows and that its thread also refills (it allocates this class too)
      // grows first, so bursts of the same objects stay in the thread cache. A thread that only
      // frees keeps the small limit and hands objects back promptly.
      b.limit = static_cast<std::uint16_t>(std::min<std::uint32_t>(most, b.limit * 2u));
      b.refilled = 0;
      b.count.store(n, std::memory_order_relaxed);
      return;
    }
    // Over the limit: keep the newest half, give back the older rest.
    const std::uint32_t keep = b.limit / 2;
    void* cut = b.head;
    for (std::uint32_t i = 1; i < keep; ++i) cut = *static_cast<void**>(cut);
    void* rest = keep ? *static_cast<void**>(cut) : b.head;
    if (keep)
      *static_cast<void**>(cut) = nullptr;
    else
      b.head = nullptr;
    b.count.store(keep, std::memory_order_relaxed);
    st.flush(c, rest, n - keep);
    return;
  }
  st.flush(c, p, 1);
}

// ---------------------------------------------------------------------------------------------
// Whole-resource operations
// ---------------------------------------------------------------------------------------------

void slab_resource::release() {
  std::lock_guard lock(detail::registry_mutex());
  for (auto* tc = state_->caches; tc; tc = tc->next)
    for (auto& b : tc->bins) {
      b.head = nullptr;
      b.count.store(0, std::memory_order_relaxed);
    }
  free_everything(*state_);
  for (auto& pk : state_->peak) pk.store(0, std::memory_order_relaxed);
}

std::size_t slab_resource::trim() {
  slab_state& st = *state_;
  {
    std::lock_guard lock(detail::registry_mutex());
    if (detail::thread_cache* tc = detail::find_cache(id_, slot_)) st.flush_cache(*tc);
  }
  std::size_t bytes = 0;
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    auto& core = st.cores[ci];
    detail::slab_list returns;
    {
      std::lock_guard lock(core.lock);
      st.drain(core, returns);
      for (auto& l : core.cls) {
        while (detail::slab* s = l.empty) {
          slab_state::unlink(l.empty, s);
          --l.empty_count;
          --l.slabs;
          ++core.counters.slab_returns;
          returns.push(s);
        }
      }
    }
    for (detail::slab* s = returns.head; s; s = s->next) bytes += st.geom[s->cls].slab_bytes;
    st.return_slabs(returns);
  }
  return bytes;
}

slab_resource_stats slab_resource::stats() const {
  slab_state& st = *state_;
  slab_resource_stats s;
  std::array<std::int64_t, class_count> cached{};
  {
    std::lock_guard lock(detail::registry_mutex());
    for (auto* tc = st.caches; tc; tc = tc->next) {
      ++s.thread_caches;
      for (int c = 0; c < st.classes; ++c)
        cached[static_cast<std::size_t>(c)] +=
            tc->bins[static_cast<std::size_t>(c)].count.load(std::memory_order_relaxed);
    }
  }
  std::array<std::size_t, class_count> slabs{};
  s.cores.resize(st.ncores);
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    auto& core = st.cores[ci];
    std::lock_guard lock(core.lock);
    s.cores[ci] = core.counters;
    s.cores[ci].remote_overflows = core.overflows.load(std::memory_order_relaxed);
    for (int c = 0; c < st.classes; ++c)
      slabs[static_cast<std::size_t>(c)] += core.cls[static_cast<std::size_t>(c)].slabs;
  }
  for (int c = 0; c < st.classes; ++c) {
    const auto i = static_cast<std::size_t>(c);
    const std::int64_t in_use =
        std::max<std::int64_t>(0, st.out[i].load(std::memory_order_relaxed) - cached[i]);
    const auto peak = static_cast<std::size_t>(st.peak[i].load(std::memory_order_relaxed));
    s.cached_objects += static_cast<std::size_t>(cached[i]);
    if (slabs[i] == 0 && peak == 0) continue;
    slab_class_stats k;
    k.object_size = st.geom[i].size;
    k.slab_bytes = st.geom[i].slab_bytes;
    k.slabs = slabs[i];
    k.objects_in_use = static_cast<std::size_t>(in_use);
    k.bytes_in_use = k.objects_in_use * k.object_size;
    k.peak_objects = peak;
    s.objects_in_use += k.objects_in_use;
    s.bytes_in_use += k.bytes_in_use;
    s.classes.push_back(k);
  }
  s.bytes_reserved = st.slab_bytes_reserved.load(std::memory_order_relaxed);
  std::lock_guard lock(st.large_lock);
  s.large_objects = st.large_objects;
  s.large_bytes = st.large_bytes;
  s.bytes_in_use += st.large_bytes;
  s.bytes_reserved += st.large_reserved;
  return s;
}

void slab_resource::check_invariants() const {
  slab_state& st = *state_;
  auto fail = [](std::size_t core, int c, const char* what) {
    throw std::logic_error(fmt::format(
        "bsalloc::slab_resource invariant broken (core {}, class {}): {}", core, c, what));
  };
  // Remote frees in flight are used objects until drained (S3): drain them first.
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    detail::slab_list returns;
    {
      std::lock_guard lock(st.cores[ci].lock);
      st.drain(st.cores[ci], returns);
    }
    st.return_slabs(returns);
  }
  std::array<std::int64_t, class_count> used{};
  for (std::size_t ci = 0; ci < st.ncores; ++ci) {
    auto& core = st.cores[ci];
    std::lock_guard lock(core.lock);
    for (int c = 0; c < class_count; ++c) {
      auto& l = core.cls[static_cast<std::size_t>(c)];
      std::uint32_t count = 0, empties = 0;
      for (std::uint8_t which : {detail::list_partial, detail::list_full, detail::list_empty}) {
        detail::slab* prev = nullptr;
        for (detail::slab* s = slab_state::list_head(l, which); s; prev = s, s = s->next) {
          ++count;
          if (s->magic != detail::slab_magic || s->cls != c || s->owner != ci || s->res != &st)
            fail(ci, c, "S2: foreign slab on a list");
          if (s->prev != prev) fail(ci, c, "S2: list back link broken");
          if (s->list != which) fail(ci, c, "S2: slab tagged with another list");
          std::uint32_t free_len = 0;
          for (void* p = s->free; p; p = *static_cast<void**>(p))
            if (++free_len > s->capacity) fail(ci, c, "S1: free list longer than the slab");
          if (s->used + free_len + s->untouched != s->capacity)
            fail(ci, c, "S1: used + free + untouched != capacity");
          const bool full = free_len == 0 && s->untouched == 0;
          if ((which == detail::list_full) != full)
            fail(ci, c, "S2: full list iff no free object");
          if ((which == detail::list_empty) != (s->used == 0))
            fail(ci, c, "S2: empty list iff nothing used");
          used[static_cast<std::size_t>(c)] += s->used;
          if (which == detail::list_empty) ++empties;
        }
      }
      if (count != l.slabs) fail(ci, c, "S2: slab count wrong");
      if (empties != l.empty_count) fail(ci, c, "S2: empty count wrong");
      if (empties > st.knobs.max_empty_slabs_per_class) fail(ci, c, "S4: too many empty slabs");
    }
  }
  for (int c = 0; c < class_count; ++c)
    if (used[static_cast<std::size_t>(c)] != st.out[static_cast<std::size_t>(c)].load())
      fail(st.ncores, c, "S3: objects used in slabs != objects out of slabs");
}

}  // namespace bsalloc
