// SPDX-License-Identifier: Apache-2.0
// Core caches: per CPU, per class the partial/full/empty slab lists under the core's lock, and
// the lock-free inbox of remote frees. See state.hpp.
#include <sched.h>

#include <bit>

#include "header_window.hpp"
#include "state.hpp"

namespace bsalloc::detail {

core_cache& slab_state::core(std::size_t ci) {
  if (core_cache* c = core_if(ci)) [[likely]]
    return *c;
  // Created on the first use of this CPU, under the registry lock so that the fork handlers,
  // which hold it, see every core whose lock may be taken.
  std::lock_guard lock(registry_mutex());
  if (core_cache* c = core_if(ci)) return *c;
  auto* c = new core_cache(knobs.remote_queue_capacity);
  cores[ci].store(c, std::memory_order_release);
  return *c;
}

std::size_t slab_state::current_core() const {
  const int cpu = ::sched_getcpu();
  return cpu < 0 ? 0 : static_cast<std::size_t>(cpu) % ncores;
}

// Lock held. An object comes back into its slab (owned by `core`): the slab core's put back
// and empty-slab policy (S4: an emptied slab beyond max_empty_slabs_per_class goes upstream).
void slab_state::put_back(core_cache& core, void* p, int c, slab_list& returns) {
  slab* s = slab_of(p, c);
  BSALLOC_ASSERT(s->magic == slab_magic && s->cls == c && s->res == this, "S2 (slab of p)");
  BSALLOC_ASSERT(core_if(s->owner) == &core && s->used > 0, "S1/S2 (put back to its owner)");
  if (hardened) [[unlikely]]
    check_slab(s, c, "put back");
  slab_put(s, p, [this](void* at, void* next) { set_next(at, next); });
  BSALLOC_POISON_FREE(p, geom[static_cast<std::size_t>(c)].size);
  auto& l = core.cls[static_cast<std::size_t>(c)];
  if (slab* gone = slab_settle(l, s, knobs.max_empty_slabs_per_class)) {
    ++core.counters.slab_returns;
    returns.push(gone);
  }
  BSALLOC_ASSERT(s->list != list_full, "S2 (a slab with a free object is not full)");
}

// Lock held. Applies every remote free posted to this core. With a hand-off, a chain of its
// class that fits goes to the refilling thread whole: its objects are free, of this core's
// slabs, counted out of them already (a slab counts the objects in thread caches and in flight
// as used), so they need no put back into their slab and no take out of it again. Not for the
// careful path or checked mode, which account for every object on its way through the slabs.
void slab_state::drain(core_cache& core, slab_list& returns, handoff* to) {
  remote_batch m;
  while (core.inbox.pop(m)) {
    core.counters.remote_frees_received += m.count;
    if (to && static_cast<int>(m.cls) == to->c && to->got < to->want &&
        m.count <= to->most - to->got) {
      set_next(m.tail, to->chain);
      to->chain = m.head;
      to->got += m.count;
      core.counters.remote_handed_on += m.count;
      continue;
    }
    void* p = m.head;
    for (std::uint32_t i = 0; i < m.count; ++i) {
      void* next = next_of(p, static_cast<int>(m.cls));
      put_back(core, p, static_cast<int>(m.cls), returns);
      p = next;
    }
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
        void* next = next_of(p, c);
        put_back(core, p, c, returns);
        ++core.counters.remote_frees_received;
        p = next;
      }
    }
  }
}

// Lock held. Takes up to n objects of class c from the core's slabs (the slab core's take);
// returns them chained.
std::uint32_t slab_state::take(core_cache& core, int c, std::uint32_t n, void*& chain) {
  auto& l = core.cls[static_cast<std::size_t>(c)];
  const std::size_t size = geom[static_cast<std::size_t>(c)].size;
  std::uint32_t got = 0;
  while (got < n) {
    slab* s = slab_to_take(l);
    if (!s) break;
    if (hardened) [[unlikely]]
      check_slab(s, c, "take");
    while (got < n && !slab_exhausted(s)) {
      void* p = slab_take(
          s, size, [&](void* at) { return next_of(at, c, s); },
          [&](void* fresh) {
            if (careful) [[unlikely]]
              mark_fresh(fresh, c);
          });
      set_next(p, chain);
      chain = p;
      ++got;
    }
    BSALLOC_ASSERT(s->used + s->untouched <= s->capacity, "S1 (take)");
    if (slab_exhausted(s)) slab_move(l, s, list_full);
  }
  BSALLOC_ASSERT(l.empty_count <= knobs.max_empty_slabs_per_class, "S4");
  core.counters.allocations += got;
  return got;
}

// Takes up to n objects of class c from one core's slabs (after draining its inbox).
std::uint32_t slab_state::take_from(std::size_t ci, int c, std::uint32_t n, void*& chain,
                                    slab* fresh, std::uint32_t most) {
  core_cache& cc = core(ci);
  slab_list returns;
  std::uint32_t got;
  {
    std::lock_guard lock(cc.lock);
    handoff h{c, n, most, chain, 0};
    drain(cc, returns, careful || knobs.checked ? nullptr : &h);
    cc.counters.allocations += h.got;
    chain = h.chain;
    if (fresh) {
      auto& l = cc.cls[static_cast<std::size_t>(c)];
      link(l.partial, fresh);
      ++l.slabs;
      ++cc.counters.slab_refills;
    }
    got = h.got + (h.got < n ? take(cc, c, n - h.got, chain) : 0);
  }
  return_slabs(returns);
  count_out(c, got);
  return got;
}

void slab_state::count_out(int c, std::uint32_t got) {
  if (got == 0) return;
  const auto now = out[static_cast<std::size_t>(c)].fetch_add(got) + got;
  auto& pk = peak[static_cast<std::size_t>(c)];
  for (auto seen = pk.load(std::memory_order_relaxed);
       now > seen && !pk.compare_exchange_weak(seen, now);) {
  }
}

// A thread that moved to another CPU left partly used (and empty) slabs on the core it ran on;
// they serve before a new slab does, or a migrating thread would hold a set of slabs per CPU it
// visits. Only cores whose lock is free are asked (never a wait), at most steal_probes of them.
std::uint32_t slab_state::take_elsewhere(std::size_t ci, int c, std::uint32_t n, void*& chain) {
  std::size_t asked = 0;
  for (std::size_t k = 1; k < ncores && asked < steal_probes; ++k) {
    core_cache* cc = core_if((ci + k) % ncores);
    if (!cc) continue;
    ++asked;
    std::unique_lock lock(cc->lock, std::try_to_lock);
    if (!lock) continue;
    slab_list returns;
    drain(*cc, returns);
    const std::uint32_t got = take(*cc, c, n, chain);
    lock.unlock();
    return_slabs(returns);
    if (got) {
      count_out(c, got);
      return got;
    }
  }
  return 0;
}

std::uint32_t slab_state::refill(int c, std::uint32_t n, void*& chain, std::uint32_t most) {
  BSALLOC_ASSERT(most >= n, "refill: most >= n");
  const header_window headers(*this);
  const std::size_t ci = current_core();
  if (std::uint32_t got = take_from(ci, c, n, chain, nullptr, most)) return got;
  if (std::uint32_t got = take_elsewhere(ci, c, n, chain)) return got;
  slab* fresh;
  try {
    fresh = new_slab(ci, c);  // no lock held
  } catch (const std::bad_alloc&) {
    // The upstream is out: objects free in other cores' slabs still serve (a thread that
    // migrated left them there). They stay those cores' objects.
    for (std::size_t k = 1; k < ncores; ++k)
      if (core_if((ci + k) % ncores))
        if (std::uint32_t got = take_from((ci + k) % ncores, c, n, chain, nullptr, n)) return got;
    throw;  // nothing changed
  }
  return take_from(ci, c, n, chain, fresh, most);
}

// Gives a chain of n objects of class c back: local ones into this core's slabs under its
// lock, remote ones posted to their owners' inboxes.
std::size_t slab_state::flush(int c, void* chain, std::uint32_t n) {
  if (n == 0) return 0;
  const header_window headers(*this);
  out[static_cast<std::size_t>(c)].fetch_sub(n);
  std::size_t ci = current_core();
  core_cache* target = core_if(ci);
  if (!target) {
    try {
      target = &core(ci);
    } catch (const std::bad_alloc&) {  // no memory for this CPU's core: the owner's serves
      ci = slab_of(chain, c)->owner;
      target = core_if(ci);
    }
  }
  core_cache& cc = *target;
  struct group {
    std::size_t owner;
    void* head;
    void* tail;
    std::uint32_t count;
  };
  std::array<group, 8> groups;
  std::size_t ngroups = 0;
  // Sorted by owner with no lock held (a slab's owner never changes): remote objects are posted
  // to their owners at once, and this core's lock is taken only if some object is its own.
  void* mine = nullptr;
  std::uint32_t local = 0;
  for (void* p = chain; n--;) {
    void* next = next_of(p, c);
    const std::size_t owner = slab_of(p, c)->owner;
    if (owner == ci) {
      set_next(p, mine);
      mine = p;
      ++local;
    } else {
      std::size_t g = 0;
      while (g < ngroups && groups[g].owner != owner) ++g;
      if (g == groups.size()) {  // more owners than groups: post the first one now
        post(cc, groups[0].owner, c, groups[0].head, groups[0].tail, groups[0].count);
        groups[0] = groups[--ngroups];
        g = ngroups;
      }
      if (g == ngroups) groups[ngroups++] = {owner, nullptr, p, 0};
      set_next(p, groups[g].head);
      groups[g].head = p;
      ++groups[g].count;
    }
    p = next;
  }
  for (std::size_t g = 0; g < ngroups; ++g)
    post(cc, groups[g].owner, c, groups[g].head, groups[g].tail, groups[g].count);
  if (local == 0) return 0;
  slab_list returns;
  {
    std::lock_guard lock(cc.lock);
    drain(cc, returns);
    for (void* p = mine; p;) {
      void* next = next_of(p, c);
      put_back(cc, p, c, returns);
      p = next;
    }
    cc.counters.deallocations += local;
  }
  return return_slabs(returns);  // no lock held
}

// Posts a chain to another core's inbox, never taking its lock and never dropping it. The owner
// core exists: it owns a slab.
void slab_state::post(core_cache& from, std::size_t owner, int c, void* head, void* tail,
                      std::uint32_t count) {
  core_cache& to = *core_if(owner);
  from.remote_sent.fetch_add(count, std::memory_order_relaxed);
  if (to.inbox.bounded_push(remote_batch{head, tail, count, static_cast<std::uint32_t>(c)})) return;
  to.overflows.fetch_add(1, std::memory_order_relaxed);
  auto& stack = to.overflow[static_cast<std::size_t>(c)];
  void* old = stack.load(std::memory_order_relaxed);
  do {
    set_next(tail, old);
  } while (!stack.compare_exchange_weak(old, head, std::memory_order_release,
                                        std::memory_order_relaxed));
  to.overflow_mask[static_cast<std::size_t>(c) / 64].fetch_or(
      std::uint64_t{1} << (static_cast<std::size_t>(c) % 64), std::memory_order_release);
}

std::size_t slab_state::drain_and_return_empty() {
  const header_window headers(*this);
  std::size_t bytes = 0;
  for (std::size_t ci = 0; ci < ncores; ++ci) {
    core_cache* cc = core_if(ci);
    if (!cc) continue;
    slab_list returns;
    {
      std::lock_guard lock(cc->lock);
      drain(*cc, returns);
      for (auto& l : cc->cls) {
        while (slab* s = l.empty) {
          unlink(l.empty, s);
          --l.empty_count;
          --l.slabs;
          ++cc->counters.slab_returns;
          returns.push(s);
        }
      }
    }
    bytes += return_slabs(returns);
  }
  return bytes;
}

void slab_state::free_slabs() {
  const header_window headers(*this);
  slab_list returns;
  for (std::size_t ci = 0; ci < ncores; ++ci) {
    core_cache* cc = core_if(ci);
    if (!cc) continue;
    std::lock_guard lock(cc->lock);
    remote_batch m;
    while (cc->inbox.pop(m)) {
    }
    for (auto& o : cc->overflow) o.store(nullptr, std::memory_order_relaxed);
    for (auto& w : cc->overflow_mask) w.store(0, std::memory_order_relaxed);
    for (auto& l : cc->cls) {
      for (slab** head : {&l.partial, &l.full, &l.empty}) {
        while (slab* s = *head) {
          *head = s->next;
          returns.push(s);
        }
      }
      l = {};
    }
  }
  return_slabs(returns);
  for (auto& o : out) o.store(0, std::memory_order_relaxed);
}

// A fork copies the other threads' objects out of the child's reach: those in their caches stay
// counted as out (used in their slabs, out of them: S3 holds, the child never frees them). But a
// thread in the middle of a refill (objects taken, `out` not yet raised) or of a flush (`out`
// lowered, objects not yet back or posted) would leave `out` off for good. The child is alone
// here: the inboxes are drained and `out` is the sum of the slabs' used counts, exactly.
void slab_state::recount_after_fork() noexcept {
  const header_window headers(*this);
  std::array<std::int64_t, class_count> used{};
  for (std::size_t ci = 0; ci < ncores; ++ci) {
    core_cache* cc = core_if(ci);
    if (!cc) continue;
    slab_list returns;
    {
      std::lock_guard lock(cc->lock);
      drain(*cc, returns);
      for (int c = 0; c < classes; ++c) {
        auto& l = cc->cls[static_cast<std::size_t>(c)];
        for (slab* head : {l.partial, l.full, l.empty})
          for (slab* s = head; s; s = s->next) used[static_cast<std::size_t>(c)] += s->used;
      }
    }
    try {
      return_slabs(returns);
    } catch (...) {  // an upstream that throws on deallocate: the slabs stay unreturned
    }
  }
  for (int c = 0; c < classes; ++c)
    out[static_cast<std::size_t>(c)].store(used[static_cast<std::size_t>(c)],
                                           std::memory_order_relaxed);
}

}  // namespace bsalloc::detail
