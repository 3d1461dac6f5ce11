// SPDX-License-Identifier: Apache-2.0
// object_pool's per-thread front: slot registry, the thread's table (growth, sweep of closed
// pools) and the flush at thread exit. See include/bsalloc/detail/pool_cache.hpp.
#include <bsalloc/detail/pool_cache.hpp>

#include <bsalloc/detail/config.hpp>  // BSALLOC_TLS_MODEL

#include <pthread.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

namespace bsalloc::detail {

// The model of the library's own (slow-path) accesses; code using object_pool picks its own.
thread_local constinit pool_tls_state t_pool_cache
    __attribute__((tls_model(BSALLOC_TLS_MODEL))) = {nullptr, 0, 0};

namespace {

// Slots of live pools: a free list of released slots, reused first (dense), and the next new.
struct slot_registry {
  std::mutex mutex;
  std::vector<std::uint32_t> free;
  std::uint32_t next = 0;
  std::uint64_t gen = 0;
};

slot_registry& registry() noexcept;

// fork(): the registry's mutex (a leaf: nothing else is taken under it) is held across it, so
// a child can create and destroy pools whatever the parent's other threads were doing.
void prepare_fork() noexcept {
  registry().mutex.lock();
}
void after_fork() noexcept {
  registry().mutex.unlock();
}

slot_registry& registry() noexcept {
  static slot_registry* r = [] {
    auto* fresh = new slot_registry;  // never destroyed: pools may outlive statics
    (void)::pthread_atfork(prepare_fork, after_fork, after_fork);
    return fresh;
  }();
  return *r;
}

void clear(pool_tls_entry& e) noexcept {
  e = pool_tls_entry{0, nullptr, 0, 0, nullptr};
}

// Gives an entry's slots back to its pool (T2: the pool is alive while count > 0). The entry
// is cleared first: the flush may destroy the pool.
void flush_entry(pool_tls_entry& e) noexcept {
  if (e.count == 0) return;
  pool_cache_key* key = e.key;
  void* head = e.head;
  const std::uint32_t n = e.count;
  const std::uint32_t low = e.low;
  clear(e);
  key->flush(key->owner, head, n, low);
}

// Flushes the entries of closed pools (T3), so a thread that no longer uses them does not keep
// their memory.
void sweep_closed(pool_tls_state& t) noexcept {
  for (std::uint32_t i = 0; i < t.cap; ++i) {
    pool_tls_entry& e = t.table[i];
    if (e.count > 0 && e.key->slot.load(std::memory_order_acquire) == no_pool_slot) flush_entry(e);
  }
}

struct exit_flush {
  bool armed = false;
  exit_flush() = default;
  exit_flush(const exit_flush&) = delete;
  exit_flush& operator=(const exit_flush&) = delete;
  ~exit_flush() {
    pool_tls_state& t = t_pool_cache;
    t.status = 2;  // from now on every pool call of this thread goes to the pool's lock
    for (std::uint32_t i = 0; i < t.cap; ++i) flush_entry(t.table[i]);
    std::free(t.table);
    t.table = nullptr;
    t.cap = 0;
  }
};

thread_local exit_flush t_exit_flush;

}  // namespace

void pool_cache_register(pool_cache_key& key, void* owner, pool_flush_fn flush) noexcept {
  slot_registry& r = registry();
  std::lock_guard<std::mutex> guard(r.mutex);
  std::uint32_t slot;
  if (!r.free.empty()) {
    slot = r.free.back();
    r.free.pop_back();
  } else if (r.next < (std::uint32_t{1} << 24)) {
    slot = r.next++;
  } else {
    return;  // no slot: this pool goes without a thread cache
  }
  key.home = slot;
  key.gen = ++r.gen;
  key.owner = owner;
  key.flush = flush;
  key.slot.store(slot, std::memory_order_relaxed);
}

void pool_cache_unregister(pool_cache_key& key) noexcept {
  if (key.home == no_pool_slot) return;
  slot_registry& r = registry();
  std::lock_guard<std::mutex> guard(r.mutex);
  try {
    r.free.push_back(key.home);
  } catch (...) {
    // the slot is lost (out of memory): harmless, new pools take fresh slots
  }
  key.home = no_pool_slot;
}

pool_tls_entry* pool_cache_entry(pool_cache_key& key) noexcept {
  pool_tls_state& t = t_pool_cache;
  if (t.status == 2) return nullptr;
  const std::uint32_t slot = key.slot.load(std::memory_order_relaxed);
  if (slot == no_pool_slot) return nullptr;
  if (t.status == 0) {
    t_exit_flush.armed = true;  // constructs it: registers the flush at thread exit
    t.status = 1;
  }
  if (slot >= t.cap) {
    sweep_closed(t);
    std::uint32_t cap = t.cap ? t.cap : 8;
    while (cap <= slot) cap *= 2;
    void* grown = std::realloc(t.table, std::size_t{cap} * sizeof(pool_tls_entry));
    if (!grown) return nullptr;
    t.table = static_cast<pool_tls_entry*>(grown);
    for (std::uint32_t i = t.cap; i < cap; ++i) clear(t.table[i]);
    t.cap = cap;
  }
  pool_tls_entry& e = t.table[slot];
  if (e.gen != key.gen) {  // a pool that held this slot before is gone (T2: e.count == 0)
    e.gen = key.gen;
    e.head = nullptr;
    e.count = 0;
    e.low = 0;
    e.key = &key;
  }
  return &e;
}

void pool_cache_flush_thread() noexcept {
  pool_tls_state& t = t_pool_cache;
  for (std::uint32_t i = 0; i < t.cap; ++i) flush_entry(t.table[i]);
}

std::uint64_t pool_cache_thread_slots() noexcept {
  const pool_tls_state& t = t_pool_cache;
  std::uint64_t n = 0;
  for (std::uint32_t i = 0; i < t.cap; ++i) n += t.table[i].count;
  return n;
}

}  // namespace bsalloc::detail
