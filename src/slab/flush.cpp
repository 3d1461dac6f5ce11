// SPDX-License-Identifier: Apache-2.0
// The flush: a chain of one class's objects from a thread cache goes back, cut into runs of one
// slab: this core's runs into their slabs under its lock, other cores' posted to their inboxes
// (remote.cpp). See state.hpp.
#include <array>
#include <mutex>

#include "header_window.hpp"
#include "state.hpp"

namespace bsalloc::detail {

namespace {
// A flush walk's position: p the first object of the next run, s its slab, n the objects left
// (p's included); local counts the objects put back into this core's slabs so far.
struct run_walk {
  void* p;
  slab* s;
  std::uint32_t n;
  std::uint32_t local;
};

// Cuts the run that starts at p (of slab s): p moves to its last object, n (objects left, p's
// included) drops by its count, which is returned; when n is left above 0, next is the object
// after the run and next_slab its slab. link_of reads a link.
template <class LinkOf>
[[gnu::always_inline]] inline std::uint32_t cut_run(void*& p, [[maybe_unused]] const slab* s,
                                                    std::uint32_t& n, void*& next, slab*& next_slab,
                                                    std::size_t slab_bytes, std::uintptr_t colours,
                                                    LinkOf&& link_of) {
  std::uint32_t count = 1;
  next = nullptr;
  next_slab = nullptr;
  // Slabs compared by their starts: the header's colour is worked out once a run, at its end.
  const std::uintptr_t mask = ~(slab_bytes - 1);
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(p) & mask;
  while (--n) {
    next = link_of(p);
    const std::uintptr_t next_base = reinterpret_cast<std::uintptr_t>(next) & mask;
    if (next_base != base) {
      next_slab = slab_at<slab>(next, slab_bytes, colours);
      break;
    }
    p = next;
    ++count;
  }
  BSALLOC_ASSERT(base == slab_base(s), "the run starts in s");
  return count;
}

// Lock of core `ci` held; a resource that is not careful (neither hardened nor under memcheck:
// links unchecked; checked mode comes here). Puts back the runs from w.p on while their
// slab is owned by ci (l: its class's lists there; a full slab becomes partial). Returns the
// slab of the last run put back if it is empty now (the caller settles it, S4), else null: the
// chain ended (w.n == 0) or its next run, which w then starts at, is another core's. Out of line
// and call-free, so that the walk's values stay in registers (in flush_walk, the calls on its
// rare paths spilled them at every run).
// res and c are for the debug builds' checks.
[[gnu::noinline]] slab* put_owned_runs(run_walk& w, core_cache::lists& l, std::size_t slab_bytes,
                                       std::uintptr_t colours, std::size_t ci,
                                       [[maybe_unused]] const slab_state* res,
                                       [[maybe_unused]] int c) noexcept {
  void* p = w.p;
  slab* s = w.s;
  std::uint32_t n = w.n;
  std::uint32_t local = w.local;
  slab* unsettled = nullptr;
  for (;;) {
    void* const head = p;
    void* next;
    slab* next_slab;
    const std::uint32_t count = cut_run(p, s, n, next, next_slab, slab_bytes, colours,
                                        [](const void* at) { return link_get(at, 0); });
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
  const std::uintptr_t colours = geom[static_cast<std::size_t>(c)].colour_mask;
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
  slab* s = slab_at<slab>(p, slab_bytes, colours);
  bool owned = false;  // the last run went back to this core: put_owned_runs goes on from it
  for (;;) {
    if constexpr (!Careful) {
      while (owned) {
        run_walk w{p, s, n, local};
        slab* const unsettled = put_owned_runs(w, l, slab_bytes, colours, ci, this, c);
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
    void* next;
    slab* next_slab;
    std::uint32_t count = cut_run(p, s, n, next, next_slab, slab_bytes, colours, link_of);
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

}  // namespace bsalloc::detail
