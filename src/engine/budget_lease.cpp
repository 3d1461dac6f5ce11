// SPDX-License-Identifier: Apache-2.0
// budget_resource's per-thread leases: the TLS table, the slow paths that take a lease and give
// one back, thread exit and fork. See budget.hpp's header comment for what leases guarantee.
#include <pthread.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <vector>

#include "budget_internal.hpp"

namespace bsalloc {
namespace detail {

thread_local constinit budget_tls_entry t_budget_leases[budget_tls_ways] = {};
thread_local constinit bool t_registry_held = false;

registry_lock::registry_lock(const char* what, bool reader) : owns_(!t_registry_held) {
  if (!owns_) {
    if (reader) return;
    std::fprintf(stderr,
                 "bsalloc: %s: the budget registry's lock is held by this thread (a handler "
                 "called from an allocation under it may read budgets, not create or destroy "
                 "them)\n",
                 what);
    std::abort();
  }
  the_budget_registry().mutex.lock();
  t_registry_held = true;
}

registry_lock::~registry_lock() {
  if (!owns_) return;
  t_registry_held = false;
  the_budget_registry().mutex.unlock();
}

namespace {

constexpr std::size_t min_lease = 4096;

thread_local constinit bool t_exiting = false;  // leases are off once the thread's are folded
thread_local constinit char t_token = 0;        // its address names the thread

/// Every lease this thread holds; folded back into their budgets and freed when it exits.
struct thread_leases {
  std::vector<budget_lease*> all;
  thread_leases() = default;
  thread_leases(const thread_leases&) = delete;
  thread_leases& operator=(const thread_leases&) = delete;
  ~thread_leases();
};

thread_leases& my_leases() {
  thread_local thread_leases t;
  return t;
}

void unlink(budget_lease& l) noexcept {
  budget_lease*& head = budget_lease_access::leases(*l.budget);
  if (l.prev)
    l.prev->next = l.next;
  else
    head = l.next;
  if (l.next) l.next->prev = l.prev;
  l.prev = l.next = nullptr;
}

thread_leases::~thread_leases() {
  t_exiting = true;
  const registry_lock lock("thread exit");
  for (budget_lease* l : all) {
    if (l->budget != nullptr) {
      fold_lease(*l);
      unlink(*l);
    }
    delete l;
  }
  all.clear();
  for (auto& e : t_budget_leases) e = {};
}

}  // namespace

void fold_lease(budget_lease& l) noexcept {
  budget_resource& b = *l.budget;
  const std::size_t credit = l.credit.load(std::memory_order_relaxed);
  l.credit.store(0, std::memory_order_relaxed);
  if (credit != 0) budget_lease_access::reserved(b).fetch_sub(credit, std::memory_order_relaxed);
  const std::size_t count = l.count.load(std::memory_order_relaxed);
  l.count.store(0, std::memory_order_relaxed);
  if (count != 0) budget_lease_access::count(b).fetch_add(count, std::memory_order_relaxed);
  budget_lease_access::raise_peak(b, l.high.load(std::memory_order_relaxed));
}

void orphan_leases(budget_resource& b) noexcept {
  budget_lease*& head = budget_lease_access::leases(b);
  for (budget_lease* l = head; l != nullptr; l = l->next) l->budget = nullptr;
  head = nullptr;  // the owner threads free them (their lists keep them)
}

// -- fork: the registry lock (and every tracking budget's lock) is held across fork(); the child
// folds back the leases of the threads that did not come along.
namespace {

void fork_prepare() noexcept {
  budget_registry& r = the_budget_registry();
  r.mutex.lock();
  for (const budget_resource* b : r.budgets)
    if (std::mutex* m = budget_lease_access::tracker_mutex(*b)) m->lock();
}

void fork_unlock() noexcept {
  budget_registry& r = the_budget_registry();
  for (const budget_resource* b : r.budgets)
    if (std::mutex* m = budget_lease_access::tracker_mutex(*b)) m->unlock();
  r.mutex.unlock();
}

void fork_child() noexcept {
  budget_registry& r = the_budget_registry();
  for (const budget_resource* cb : r.budgets) {
    auto& b = const_cast<budget_resource&>(*cb);
    budget_lease* l = budget_lease_access::leases(b);
    while (l != nullptr) {
      budget_lease* next = l->next;
      if (l->owner != &t_token) {  // its thread is gone in the child
        fold_lease(*l);
        unlink(*l);
        delete l;
      }
      l = next;
    }
  }
  fork_unlock();
}

}  // namespace

budget_registry& the_budget_registry() {
  static budget_registry* r = [] {
    auto* reg = new budget_registry;
    (void)::pthread_atfork(fork_prepare, fork_unlock, fork_child);
    return reg;
  }();
  return *r;
}

}  // namespace detail

detail::budget_lease* budget_resource::lease() {
  using namespace detail;
  // Under the registry lock already (an out-of-memory handler called from an allocation made
  // under it): no lease, the shared counters.
  if (max_lease_ == 0 || tracker_ != nullptr || t_exiting || t_registry_held) return nullptr;
  budget_tls_entry& e = t_budget_leases[id_ % budget_tls_ways];
  if (e.id == id_) return e.lease;
  thread_leases& mine = my_leases();
  const registry_lock lock("budget_resource: a new lease");
  // Leases of budgets destroyed since: freed here (their TLS entries can never match again, but
  // are cleared all the same).
  std::erase_if(mine.all, [](budget_lease* l) {
    if (l->budget != nullptr) return false;
    for (auto& te : t_budget_leases)
      if (te.lease == l) te = {};
    delete l;
    return true;
  });
  budget_lease* l = nullptr;
  for (budget_lease* c : mine.all)
    if (c->budget == this) l = c;
  if (l == nullptr) {
    mine.all.reserve(mine.all.size() + 1);  // may throw: nothing has changed
    l = new budget_lease;
    l->budget = this;
    l->id = id_;
    l->owner = &t_token;
    l->next = leases_;
    if (leases_) leases_->prev = l;
    leases_ = l;
    mine.all.push_back(l);
  }
  if (e.id != 0 && e.lease->budget != nullptr) fold_lease(*e.lease);  // evicted: credit back
  e = {id_, l};
  return l;
}

void budget_resource::set_limit(std::size_t limit) noexcept {
  limit_.store(limit, std::memory_order_relaxed);
  return_own_lease();
  // B2: what is reserved now (in use, and what other threads' leases may still spend) may stay
  // over the new limit; nothing more.
  const std::size_t now = reserved_.load(std::memory_order_relaxed);
  ceiling_.store(now > limit ? now : 0, std::memory_order_relaxed);
  if (now > limit) stop_leases();
}

void budget_resource::stop_leases() noexcept {
  // Over the limit, what a thread frees must not stay in its lease (where the next allocation
  // would spend it unchecked): every deallocate gives its bytes back to the shared total until
  // a lease is granted again, which needs room under the limit.
  lease_cap_.store(0, std::memory_order_relaxed);
}

void budget_resource::return_own_lease() noexcept {
  const detail::budget_tls_entry& e = detail::t_budget_leases[id_ % detail::budget_tls_ways];
  if (e.id != id_) return;
  detail::budget_lease& l = *e.lease;
  const std::size_t credit = l.credit.load(std::memory_order_relaxed);
  if (credit == 0) return;
  l.credit.store(0, std::memory_order_relaxed);
  l.floor = reserved_.fetch_sub(credit, std::memory_order_relaxed) - credit;
}

void* budget_resource::allocate_slow(std::size_t bytes, std::size_t alignment) {
  detail::budget_lease* l =
      bytes <= (std::numeric_limits<std::size_t>::max() >> 2) ? lease() : nullptr;
  if (l == nullptr) return allocate_shared(bytes, alignment);
  constexpr auto relaxed = std::memory_order_relaxed;
  const std::size_t credit = l->credit.load(relaxed);
  const std::size_t lease_min = std::min(detail::min_lease, max_lease_);
  std::size_t extra = 0, now = 0;
  // Take a new lease: the missing bytes and some credit ahead (with none left, a 0-byte
  // request too: over the limit it is refused or goes to the handler like any other).
  if (bytes > credit || credit == 0) {
    const std::size_t need = bytes - credit;
    const std::size_t lim = limit();
    std::size_t cur = reserved_.load(relaxed);
    for (;;) {
      if (cur > lim || need > lim - cur) {  // over, as far as the shared total knows
        if (credit != 0) {
          l->credit.store(0, relaxed);
          l->floor = reserved_.fetch_sub(credit, relaxed) - credit;
        }
        return allocate_shared(bytes, alignment);
      }
      extra = std::min(std::clamp(cur / 8, lease_min, max_lease_), (lim - cur - need) / 8);
      now = cur + need + extra;
      if (reserved_.compare_exchange_weak(cur, now, relaxed)) break;
    }
    l->credit.store(bytes + extra, relaxed);
    l->floor = now;
    const std::size_t cap = std::max(2 * lease_min, 2 * extra);
    if (lease_cap_.load(relaxed) != cap) lease_cap_.store(cap, relaxed);
  }
  // As on the fast path: the lease first, then the upstream call (which may re-enter).
  const std::size_t left = l->credit.load(relaxed) - bytes;
  l->credit.store(left, relaxed);
  l->count.store(l->count.load(relaxed) + 1, relaxed);
  const std::size_t estimate = l->floor - left;
  void* p;
  try {
    p = upstream_->allocate(bytes, alignment);
  } catch (...) {
    refund(*l, bytes);
    throw;
  }
  if (estimate > l->high.load(relaxed)) l->high.store(estimate, relaxed);  // once served
  return p;
}

void budget_resource::refund(detail::budget_lease& l, std::size_t bytes) noexcept {
  constexpr auto relaxed = std::memory_order_relaxed;
  l.credit.store(l.credit.load(relaxed) + bytes, relaxed);
  l.count.store(l.count.load(relaxed) - 1, relaxed);
}

void budget_resource::deallocate_slow(void* p, std::size_t bytes, std::size_t alignment) {
  if (tracker_ != nullptr) [[unlikely]]
    return deallocate_tracked(p, bytes, alignment);
  detail::budget_lease* l = nullptr;
  try {
    l = lease();
  } catch (...) {  // no memory for a lease: the shared counters then
  }
  constexpr auto relaxed = std::memory_order_relaxed;
  if (l == nullptr) {
    unreserve(p, bytes);  // or refuses, nothing changed
    try {
      upstream_->deallocate(p, bytes, alignment);
    } catch (...) {
      count_.fetch_add(1, relaxed);
      reserved_.fetch_add(bytes, relaxed);
      throw;
    }
    return;
  }
  // Checked against the shared total (or refused, nothing changed); then the lease, then the
  // upstream call (which may re-enter a budget on this thread).
  const std::size_t old = l->credit.load(relaxed);
  const std::size_t cap = lease_cap_.load(relaxed);
  const std::size_t keep = cap / 2;  // past the cap, the rest goes back to the shared total
  const bool back = old + bytes > cap || old + bytes < bytes;
  const std::size_t now = unreserve_lease(p, bytes, old, back ? old + bytes - keep : 0);
  l->count.store(l->count.load(relaxed) - 1, relaxed);
  if (back) {
    l->credit.store(keep, relaxed);
    l->floor = now;
  } else {
    l->credit.store(old + bytes, relaxed);
  }
  try {
    upstream_->deallocate(p, bytes, alignment);
  } catch (...) {
    unrefund(*l, bytes);
    throw;
  }
}

void budget_resource::unrefund(detail::budget_lease& l, std::size_t bytes) noexcept {
  constexpr auto relaxed = std::memory_order_relaxed;
  l.count.store(l.count.load(relaxed) + 1, relaxed);
  const std::size_t credit = l.credit.load(relaxed);
  if (credit >= bytes) {
    l.credit.store(credit - bytes, relaxed);
  } else {  // part went back to the shared total: in use again there
    l.credit.store(0, relaxed);
    l.floor = reserved_.fetch_add(bytes - credit, relaxed) + (bytes - credit);
  }
}

}  // namespace bsalloc
