// SPDX-License-Identifier: Apache-2.0
// Core caches: per CPU, per class the partial/full/empty slab lists under the core's lock; take,
// refill and the whole-resource walks over them. The flush is in flush.cpp, remote frees (post,
// drain, the stash) in remote.cpp. See state.hpp.
#include <algorithm>
#include <bit>

#include "../cpu.hpp"
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
  // CPUs at or above ncores (fewer caches asked for, or brought online later) wrap; no division
  // otherwise.
  const std::size_t cpu = current_cpu();
  return cpu < ncores ? cpu : cpu % ncores;
}

// Lock held. An object comes back into its slab (owned by `core`): the slab core's put back
// and empty-slab policy (S4: at most max_empty_slabs_per_class empty slabs are kept, the newest;
// the one empty longest goes upstream).
void slab_state::put_back(core_cache& core, void* p, int c, slab_list& returns) {
  slab* s = slab_of(p, c);
  BSALLOC_ASSERT(s->magic == slab_magic && s->cls == c && s->res == this, "S2 (slab of p)");
  BSALLOC_ASSERT(core_if(s->owner) == &core && s->used > 0, "S1/S2 (put back to its owner)");
  if (hardened) [[unlikely]]
    check_slab(s, c, "put back");
  slab_put(s, p, [this](void* at, void* next) { set_next(at, next); });
  BSALLOC_POISON_FREE(p, geom[static_cast<std::size_t>(c)].size);
  settle(core, core.cls[static_cast<std::size_t>(c)], s, knobs.max_empty_slabs_per_class, returns);
  BSALLOC_ASSERT(s->list != list_full, "S2 (a slab with a free object is not full)");
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
      if (!careful && !s->free) [[likely]] {  // a fresh run, linked in address order
        got += slab_take_fresh(s, size, n - got, chain,
                               [this](void* at, void* link) { set_next(at, link); });
        continue;
      }
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
  auto& out = core.out[static_cast<std::size_t>(c)];
  auto& peak = core.peak[static_cast<std::size_t>(c)];
  out += got;
  if (out > peak) peak = out;
  return got;
}

// Takes up to n objects of class c from one core's slabs (after draining its inbox if
// anything was posted to it since its last drain).
std::uint32_t slab_state::take_from(std::size_t ci, int c, std::uint32_t n, void*& chain,
                                    slab* fresh, std::uint32_t most) {
  core_cache& cc = core(ci);
  slab_list returns;
  std::uint32_t got;
  {
    std::lock_guard lock(cc.lock);
    handoff h{c, n, most, chain, 0};
    if (careful || knobs.checked) {
      drain_posted(cc, returns);
    } else {
      take_stashed(*this, cc, h);
      drain_posted(cc, returns, &h);
    }
    cc.counters.allocations += h.got;
    chain = h.chain;
    if (fresh && h.got >= n) {
      returns.push(fresh);  // chains posted meanwhile served: the new slab goes back unused
    } else if (fresh) {
      auto& l = cc.cls[static_cast<std::size_t>(c)];
      link(l.partial, fresh);
      ++l.slabs;
      ++cc.counters.slab_refills;
    }
    got = h.got + (h.got < n ? take(cc, c, n - h.got, chain) : 0);
  }
  return_slabs(returns);
  return got;
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
    drain_posted(*cc, returns);
    const std::uint32_t got = take(*cc, c, n, chain);
    lock.unlock();
    return_slabs(returns);
    if (got) return got;
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
      unstash_all(*this, *cc, returns);
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
    while (cc->inbox.pop(m)) {  // dropped with their slabs (settled below)
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
    cc->out = {};
    cc->peak = {};
    cc->stash = {};
  }
  return_slabs(returns);
  settle_remote_counts();
}

// A fork copies the other threads' objects out of the child's reach: those in their caches stay
// counted as out (used in their slabs, out of them: S3 holds, the child never frees them). A
// core's `out` changes only under its lock, with the slabs, and the fork handlers hold every core
// lock: it is exact in the child, and recounted here from the slabs all the same. What a fork
// can cut is a post (counted sent, never pushed): the child is alone here, the inboxes are
// drained and the remote counts settled.
void slab_state::recount_after_fork() noexcept {
  const header_window headers(*this);
  for (std::size_t ci = 0; ci < ncores; ++ci) {
    core_cache* cc = core_if(ci);
    if (!cc) continue;
    slab_list returns;
    {
      std::lock_guard lock(cc->lock);
      drain(*cc, returns);
      for (int c = 0; c < classes; ++c) {
        const auto i = static_cast<std::size_t>(c);
        std::int64_t used = 0;
        for (slab* head : {cc->cls[i].partial, cc->cls[i].full, cc->cls[i].empty})
          for (slab* s = head; s; s = s->next) used += s->used;
        cc->out[i] = used;
        cc->peak[i] = std::max(cc->peak[i], used);
      }
    }
    try {
      return_slabs(returns);
    } catch (...) {  // an upstream that throws on deallocate: the slabs stay unreturned
    }
  }
  settle_remote_counts();
}

}  // namespace bsalloc::detail
