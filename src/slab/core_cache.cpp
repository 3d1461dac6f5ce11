// SPDX-License-Identifier: Apache-2.0
// Core caches: per CPU, per class the partial/full/empty slab lists under the core's lock; take,
// refill, flush and the whole-resource walks over them. Remote frees (post, drain, the stash)
// are in remote.cpp. See state.hpp.
#include <algorithm>
#include <bit>

#include "../cpu.hpp"
#include "header_window.hpp"
#include "state.hpp"

namespace bsalloc::detail {

namespace {
// Lock held. After objects went back into s: s settles in its class's lists (the slab core's
// empty-slab policy, S4); a slab that leaves them is counted and queued for return_slabs, which
// gives it upstream once no lock is held.
void settle(core_cache& core, core_cache::lists& l, slab* s, std::size_t max_empty,
            slab_list& returns) {
  if (slab* gone = slab_settle(l, s, max_empty)) {
    ++core.counters.slab_returns;
    returns.push(gone);
  }
}
}  // namespace

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

namespace {
// A flush walk's position: p the first object of the next run, s its slab, n the objects left
// (p's included); local counts the objects put back into this core's slabs so far.
struct run_walk {
  void* p;
  slab* s;
  std::uint32_t n;
  std::uint32_t local;
};

// Lock of core `ci` held; a resource that is not careful (neither hardened nor under memcheck:
// links unchecked; checked mode comes here). Puts back the runs from w.p on while their
// slab is owned by ci (l: its class's lists there; a full slab becomes partial). Returns the
// slab of the last run put back if it is empty now (the caller settles it, S4), else null: the
// chain ended (w.n == 0) or its next run, which w then starts at, is another core's. Out of line
// and call-free, so that the walk's values stay in registers (in flush_walk, the calls on its
// rare paths spilled them at every run).
// res and c are for the debug builds' checks.
[[gnu::noinline]] slab* put_owned_runs(run_walk& w, core_cache::lists& l, std::size_t slab_bytes,
                                       std::size_t ci, [[maybe_unused]] const slab_state* res,
                                       [[maybe_unused]] int c) noexcept {
  void* p = w.p;
  slab* s = w.s;
  std::uint32_t n = w.n;
  std::uint32_t local = w.local;
  slab* unsettled = nullptr;
  for (;;) {
    void* const head = p;
    std::uint32_t count = 1;
    void* next = nullptr;
    slab* next_slab = nullptr;
    while (--n) {
      next = link_get(p, 0);
      next_slab = slab_at<slab>(next, slab_bytes);
      if (next_slab != s) break;
      p = next;
      ++count;
    }
    if (s->owner != ci) [[unlikely]] {  // n + count objects left, from head on
      n += count;
      p = head;
      break;
    }
    BSALLOC_ASSERT(s->magic == slab_magic && s->cls == c && s->res == res, "S2 (slab of p)");
    BSALLOC_ASSERT(s->used >= count, "S1 (put back to its owner)");
    slab_put_chain(s, head, p, count, [](void* at, const void* link) { link_set(at, link, 0); });
    local += count;
    if (s->list == list_full) [[unlikely]]
      slab_move(l, s, list_partial);
    if (s->used == 0) [[unlikely]] {
      unsettled = s;
      p = next;
      s = next_slab;
      break;
    }
    if (n == 0) break;
    p = next;
    s = next_slab;
  }
  w = {p, s, n, local};
  return unsettled;
}
}  // namespace

// Gives a chain of n objects of class c back: local ones into this core's slabs under its
// lock, remote ones posted to their owners' inboxes. One walk: the chain is cut into runs of
// objects of one slab (a bin frees in runs: objects freed together were mostly allocated
// together); a run goes back whole — its links already chain it, only its last one is
// rewritten — and its slab's header is read once for it (careful resources put each object
// back, every link checked). The core's lock is taken at the first local run and held to the
// end of the walk: a chain of remote objects never takes it.
template <bool Careful>
std::size_t slab_state::flush_walk(int c, void* chain, std::uint32_t n) {
  if (n == 0) return 0;
  const header_window headers(*this);
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
  std::unique_lock lock(cc.lock, std::defer_lock);
  slab_list returns;
  std::uint32_t local = 0;
  auto& l = cc.cls[static_cast<std::size_t>(c)];
  // Loop invariants in locals: the walk writes through pointers the compiler cannot tell apart
  // from this resource's fields.
  const std::size_t slab_bytes = geom[static_cast<std::size_t>(c)].slab_bytes;
  const std::size_t max_empty = knobs.max_empty_slabs_per_class;
  const auto link_of = [&](const void* at) {
    if constexpr (Careful)
      return next_of(at, c);
    else
      return link_get(at, 0);
  };
  const auto link_to = [&](void* at, const void* link) {
    if constexpr (Careful)
      set_next(at, link);
    else
      link_set(at, link, 0);
  };
  void* p = chain;
  slab* s = slab_at<slab>(p, slab_bytes);
  bool owned = false;  // the last run went back to this core: put_owned_runs goes on from it
  for (;;) {
    if constexpr (!Careful) {
      while (owned) {
        run_walk w{p, s, n, local};
        slab* const unsettled = put_owned_runs(w, l, slab_bytes, ci, this, c);
        p = w.p;
        s = w.s;
        n = w.n;
        local = w.local;
        if (unsettled) settle(cc, l, unsettled, max_empty, returns);
        owned = unsettled && n != 0;
      }
      if (n == 0) break;
    }
    // The run: head .. p, count objects of slab s, chained in order by their own links.
    void* const head = p;
    std::uint32_t count = 1;
    void* next = nullptr;
    slab* next_slab = nullptr;
    while (--n) {
      next = link_of(p);
      next_slab = slab_at<slab>(next, slab_bytes);
      if (next_slab != s) break;
      p = next;
      ++count;
    }
    const std::size_t owner = s->owner;  // never changes while s is live
    owned = owner == ci;
    if (owner != ci) {
      std::size_t g = 0;
      while (g < ngroups && groups[g].owner != owner) ++g;
      if (g == groups.size()) {  // more owners than groups: post the first one now
        post(cc, groups[0].owner, c, groups[0].head, groups[0].tail, groups[0].count);
        groups[0] = groups[--ngroups];
        g = ngroups;
      }
      if (g == ngroups) groups[ngroups++] = {owner, nullptr, p, 0};
      link_to(p, groups[g].head);
      groups[g].head = head;
      groups[g].count += count;
    } else {
      if (!lock.owns_lock()) {
        lock.lock();
        handoff none{-1, 0, 0, nullptr, 0};  // no refill: what is drained may be stashed
        drain_posted(cc, returns, Careful || knobs.checked ? nullptr : &none);
      }
      local += count;
      if constexpr (Careful) {  // each link checked and rewritten
        for (void* q = head; count--;) {
          void* after = count ? next_of(q, c, s) : nullptr;
          put_back(cc, q, c, returns);
          q = after;
        }
      } else {
        BSALLOC_ASSERT(s->magic == slab_magic && s->cls == c && s->res == this, "S2 (slab of p)");
        BSALLOC_ASSERT(s->used >= count, "S1 (put back to its owner)");
        slab_put_chain(s, head, p, count, link_to);
        settle(cc, l, s, max_empty, returns);
      }
    }
    if (n == 0) break;
    p = next;
    s = next_slab;
  }
  if (lock.owns_lock()) {
    cc.out[static_cast<std::size_t>(c)] -= local;
    cc.counters.deallocations += local;
    lock.unlock();
  }
  for (std::size_t g = 0; g < ngroups; ++g)
    post(cc, groups[g].owner, c, groups[g].head, groups[g].tail, groups[g].count);
  if (local == 0) return 0;
  return return_slabs(returns);  // no lock held
}

template std::size_t slab_state::flush_walk<false>(int, void*, std::uint32_t);
template std::size_t slab_state::flush_walk<true>(int, void*, std::uint32_t);

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
