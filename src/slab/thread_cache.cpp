// SPDX-License-Identifier: Apache-2.0
// Thread caches: the per-thread slot table, the registry that links each resource's caches, the
// flush at thread exit, and the fork handlers that make every lock of the slab layer safe across
// fork(). See state.hpp.
//
// Slots. Each live resource owns one dense slot (reused after it is destroyed) and a unique id.
// A thread's entry for a slot holds (id, cache) of the resource it last cached there; the fast
// path trusts it only when the id matches, so an entry left by a destroyed resource is simply
// stale: its cache was freed by that resource's destructor, and the entry is overwritten when
// the thread first uses the slot's next owner. A thread's memory for resources it no longer
// uses is therefore bounded by its table (reserved, touched one page per 256 slots) — caches of
// destroyed resources do not outlive them.
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <new>
#include <thread>
#include <vector>

#include "../page/internal.hpp"
#include "state.hpp"

namespace bsalloc::detail {

tls_slot no_slots[max_slots];
thread_local constinit tls_slot* t_slots __attribute__((tls_model(BSALLOC_TLS_MODEL))) = no_slots;

namespace {

thread_local constinit std::uint32_t t_slot_end __attribute__((tls_model(BSALLOC_TLS_MODEL))) =
    0;  // this thread's entries in use are below it
thread_local constinit bool t_exiting __attribute__((tls_model(BSALLOC_TLS_MODEL))) = false;

struct exit_hook {
  bool armed = false;
  ~exit_hook();
};
thread_local exit_hook t_exit_hook;

// Slot ownership: owner[slot] is the id of the live resource that owns it, 0 if free.
struct slot_registry {
  std::vector<std::uint64_t> owner{0};  // slot 0 is no_slot: never owned
  std::vector<std::uint32_t> free;
};
slot_registry& slots() {  // registry_mutex; never destroyed (threads may exit after main)
  static slot_registry* const r = new slot_registry;
  return *r;
}

tls_slot* map_table() {
  void* m = ::mmap(nullptr, sizeof(tls_slot) * max_slots, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return m == MAP_FAILED ? nullptr : static_cast<tls_slot*>(m);
}

// Every live resource, newest first: what the fork handlers lock.
std::mutex& live_states_mutex() {
  alignas(std::mutex) static std::byte storage[sizeof(std::mutex)];
  static std::mutex* const m = ::new (storage) std::mutex();
  return *m;
}
slab_state* live_head = nullptr;  // live_states_mutex

void fork_prepare() noexcept;
void fork_parent() noexcept;
void fork_child() noexcept;

}  // namespace

std::mutex& registry_mutex() {
  alignas(std::mutex) static std::byte storage[sizeof(std::mutex)];
  static std::mutex* const m = ::new (storage) std::mutex();
  return *m;
}

std::uint32_t acquire_slot(std::uint64_t id) {
  std::lock_guard lock(registry_mutex());
  slot_registry& r = slots();
  std::uint32_t s;
  if (!r.free.empty()) {
    s = r.free.back();
    r.free.pop_back();
  } else if (r.owner.size() < max_slots) {
    s = static_cast<std::uint32_t>(r.owner.size());
    r.owner.push_back(0);
  } else {
    return no_slot;
  }
  r.owner[s] = id;
  return s;
}

namespace {
// The alignment of a thread cache's block (make_thread_cache): its colours are cache lines, and
// free_thread_cache must give the block back with the alignment it was taken with.
constexpr std::size_t cache_block_align = 64;
}  // namespace

thread_cache* make_thread_cache(const slab_state& st) noexcept {
  // Colour: the cache starts at a multiple of 64 bytes into its block that depends on the
  // resource's slot, so that the bins of one class in the caches of many resources (one
  // thread, one resource per subsystem) do not fall into the same few cache sets whatever
  // the system allocator's placement — as slab colour does for slabs' first objects.
  constexpr std::size_t line = cache_block_align, colours = 32;
  static_assert(alignof(thread_cache) <= line);
  const std::size_t colour = (st.slot * 7 % colours) * line;
  constexpr std::size_t tc_bytes = (sizeof(thread_cache) + line - 1) / line * line;
  const std::size_t bytes = colour + tc_bytes;
  void* block = ::operator new (bytes, std::align_val_t{line}, std::nothrow);
  if (!block) return nullptr;
  auto* tc = new (static_cast<char*>(block) + colour) thread_cache{};
  tc->block = block;
  return tc;
}

void free_thread_cache(thread_cache* tc) noexcept {
  void* block = tc->block;
  tc->~thread_cache();
  ::operator delete (block, std::align_val_t{cache_block_align});
}

thread_cache* cache_for(slab_state& st) {
  if (thread_cache* tc = find_cache(st)) return tc;
  if (!st.knobs.thread_cache || t_exiting || st.slot == no_slot) return nullptr;
  if (t_slots == no_slots) {
    tls_slot* table = map_table();
    if (!table) return nullptr;  // no cache: served by the core caches directly
    t_slots = table;
  }
  thread_cache* tc = make_thread_cache(st);
  if (!tc) return nullptr;
  tc->res = &st;
  for (int c = 0; c < st.classes; ++c)
    tc->bins[static_cast<std::size_t>(c)].limit =
        static_cast<std::uint16_t>(st.geom[static_cast<std::size_t>(c)].cache_limit);
  for (std::size_t b = 0; b < large_runs::bins; ++b)
    if (st.large_bin_used[b]) {
      tc->bins[static_cast<std::size_t>(large_base) + b].limit = st.large_start;
      tc->large_limit_bytes += st.large_start * large_runs::bin_pages(b) * page_size;
    }
  {
    std::lock_guard lock(registry_mutex());
    tc->prev = nullptr;
    tc->next = st.caches;
    if (st.caches) st.caches->prev = tc;
    st.caches = tc;
    // Whatever the entry held belonged to a destroyed resource, which freed its cache.
    t_slots[st.slot] = tls_slot{st.id, tc};
  }
  t_slot_end = std::max(t_slot_end, st.slot + 1);
  st.caches_created.fetch_add(1, std::memory_order_relaxed);
  t_exit_hook.armed = true;  // registers the thread-exit flush
  return tc;
}

std::size_t slab_state::flush_cache(thread_cache& tc) {
  std::size_t bytes = 0;
  for (int c = 0; c < classes; ++c) {
    bin& b = tc.bins[static_cast<std::size_t>(c)];
    const std::uint32_t n = b.count.load(std::memory_order_relaxed);
    void* head = b.head;
    b.head = nullptr;
    b.count.store(0, std::memory_order_relaxed);
    bytes += flush(c, head, n);
  }
  return bytes + flush_large(tc);
}

void slab_state::trim_bin(thread_cache& tc, int c, std::uint32_t keep) {
  bin& b = tc.bins[static_cast<std::size_t>(c)];
  const std::uint32_t n = b.count.load(std::memory_order_relaxed);
  if (n <= keep) return;
  void* cut = b.head;
  if (careful) {
    for (std::uint32_t i = 1; i < keep; ++i) cut = next_of(cut, c);
  } else {  // the test out of the loop
    for (std::uint32_t i = 1; i < keep; ++i) cut = link_get(cut, 0);
  }
  void* rest = next_of(cut, c);
  set_next(cut, nullptr);
  b.count.store(keep, std::memory_order_relaxed);
  flush(c, rest, n - keep);
}

// A bin that saw no slow-path visit since the last look starts its refills small again; if its
// limit grew, it halves its limit (down to the initial one) and gives back what is over it: a
// class that went quiet does not keep its burst's objects, and the slabs they pin, for ever.
void slab_state::scavenge(thread_cache& tc) {
  scavenge_large(tc);
  for (int c = 0; c < classes; ++c) {
    bin& b = tc.bins[static_cast<std::size_t>(c)];
    if (b.flags & bin_active) {
      b.flags = static_cast<std::uint16_t>(b.flags & ~bin_active);
      continue;
    }
    b.flags = static_cast<std::uint16_t>(b.flags & ~bin_step_mask);  // quiet: slow start again
    const auto& g = geom[static_cast<std::size_t>(c)];
    if (b.limit <= g.cache_limit) continue;
    const std::uint32_t lower = std::max<std::uint32_t>(g.cache_limit, b.limit / 2u);
    BSALLOC_ASSERT(tc.grown_bytes.load(std::memory_order_relaxed) >= (b.limit - lower) * g.size,
                   "T1 (grown bytes cover every grown bin)");
    tc.grown_bytes.fetch_sub((b.limit - lower) * g.size, std::memory_order_relaxed);
    b.limit = static_cast<std::uint16_t>(lower);
    b.flags = 0;
    bin_shrinks.fetch_add(1, std::memory_order_relaxed);
    trim_bin(tc, c, lower);
  }
}

void drop_caches(slab_state& st, bool destroying) {
  {
    std::lock_guard lock(registry_mutex());
    for (thread_cache* tc = st.caches; tc;) {
      thread_cache* next = tc->next;
      // Large bins emptied: their runs are live and tagged, free_large() frees them.
      st.forget_large(*tc);
      if (destroying) {
        free_thread_cache(tc);
      } else {
        for (auto& b : tc->bins) {
          b.head = nullptr;
          b.count.store(0, std::memory_order_relaxed);
        }
      }
      tc = next;
    }
    if (destroying) {
      st.caches = nullptr;
      if (st.slot != no_slot) {
        slots().owner[st.slot] = 0;
        slots().free.push_back(st.slot);
        tls_slot& mine = t_slots[st.slot];
        if (mine.id == st.id) mine = tls_slot{0, nullptr};
      }
    }
  }
  // A thread exiting right now may be flushing a cache it detached from the list: wait for it
  // (it takes no lock that we hold).
  while (st.pins.load(std::memory_order_acquire) != 0) std::this_thread::yield();
}

namespace {

exit_hook::~exit_hook() {
  t_exiting = true;
  for (std::uint32_t i = 1; i < t_slot_end; ++i) {
    tls_slot& s = t_slots[i];
    if (!s.id) continue;
    thread_cache* tc = nullptr;
    {
      std::lock_guard lock(registry_mutex());
      if (slots().owner[i] == s.id) {  // the resource is alive: detach its cache, pin it
        tc = s.cache;
        slab_state& st = *tc->res;
        if (tc->prev)
          tc->prev->next = tc->next;
        else
          st.caches = tc->next;
        if (tc->next) tc->next->prev = tc->prev;
        st.fold_large(*tc);  // stats() no longer sees tc: its counts move to st now
        st.pins.fetch_add(1, std::memory_order_relaxed);
      }
      s = tls_slot{0, nullptr};
    }
    if (tc) {
      slab_state& st = *tc->res;
      st.flush_cache(*tc);
      free_thread_cache(tc);
      st.pins.fetch_sub(1, std::memory_order_release);  // the last access to st
    }
  }
  if (t_slots != no_slots) {
    ::munmap(t_slots, sizeof(tls_slot) * max_slots);
    t_slots = no_slots;
  }
  t_slot_end = 0;
}

// -- fork ----------------------------------------------------------------------------------------
// prepare takes every lock of the slab layer in the lock order (state.hpp), so no other thread
// holds one when fork() copies the process; parent and child release them. In the child, caches
// of threads that do not exist there stay linked and are freed with their resource; their
// objects are lost (as with any allocator), and no flush is pending (pins reset).

void fork_prepare() noexcept {
  live_states_mutex().lock();
  for (slab_state* st = live_head; st; st = st->live_next)
    if (st->upstream_serial) st->upstream_lock.lock();
  registry_mutex().lock();
  for (slab_state* st = live_head; st; st = st->live_next)
    for (std::size_t ci = 0; ci < st->ncores; ++ci)
      if (core_cache* cc = st->core_if(ci)) cc->lock.lock();
  for (slab_state* st = live_head; st; st = st->live_next) st->checked_lock.lock();
  for (slab_state* st = live_head; st; st = st->live_next) st->large_lock.lock();
}

void fork_release(bool child) noexcept {
  for (slab_state* st = live_head; st; st = st->live_next) st->large_lock.unlock();
  for (slab_state* st = live_head; st; st = st->live_next) st->checked_lock.unlock();
  for (slab_state* st = live_head; st; st = st->live_next) {
    for (std::size_t ci = 0; ci < st->ncores; ++ci)
      if (core_cache* cc = st->core_if(ci)) cc->lock.unlock();
    if (child) st->pins.store(0, std::memory_order_relaxed);
  }
  registry_mutex().unlock();
  for (slab_state* st = live_head; st; st = st->live_next)
    if (st->upstream_serial) st->upstream_lock.unlock();
  live_states_mutex().unlock();
}

void fork_parent() noexcept {
  fork_release(false);
}
void fork_child() noexcept {
  fork_release(true);
  // Still the only thread, and the page layer's child handler has run (registered first).
  for (slab_state* st = live_head; st; st = st->live_next) st->recount_after_fork();
}

}  // namespace

void register_live(slab_state& st) {
  static const bool installed = [] {
    install_page_fork_handlers();  // first: the slab layer's prepare must run before the page's
    ::pthread_atfork(fork_prepare, fork_parent, fork_child);
    return true;
  }();
  (void)installed;
  std::lock_guard lock(live_states_mutex());
  st.live_prev = nullptr;
  st.live_next = live_head;
  if (live_head) live_head->live_prev = &st;
  live_head = &st;
}

void unregister_live(slab_state& st) {
  std::lock_guard lock(live_states_mutex());
  if (st.live_prev)
    st.live_prev->live_next = st.live_next;
  else
    live_head = st.live_next;
  if (st.live_next) st.live_next->live_prev = st.live_prev;
}

}  // namespace bsalloc::detail
