// SPDX-License-Identifier: Apache-2.0
#pragma once
// The registry of live budgets and the leases' internals, shared by budget.cpp (counters,
// report) and budget_lease.cpp (per-thread leases, thread exit, fork).
//
// Lock order: registry mutex -> a budget's tracker mutex. Leases (creation, folding, the
// budgets' lists) and stats() sums are all under the registry mutex.
//
// Handlers and the registry lock: no bsalloc resource is called under the registry lock, but
// the standard containers used under it (the flat_set, a new lease, the report's strings) call
// operator new — bsalloc's own when the malloc replacement is in use, which reports an
// exhausted heap to the out-of-memory handler on the same thread, with the lock held. So the
// readers (stats(), in_use(), budget_report(), leak_report()) do not lock again when this thread
// holds the lock already (t_registry_held): the registry is consistent at every allocation made
// under it. A writer (a budget created or destroyed there) aborts with a message instead of
// deadlocking; lease() falls back to the shared counters.
#include <bsalloc/budget.hpp>

#include <functional>
#include <mutex>

#include <boost/container/flat_set.hpp>

namespace bsalloc::detail {

struct budget_by_name {
  bool operator()(const budget_resource* a, const budget_resource* b) const noexcept {
    if (a->name() != b->name()) return a->name() < b->name();
    return std::less<>{}(a, b);
  }
};

/// Live budgets, sorted as the report prints them. Never destroyed: budgets with static
/// storage duration may outlive any other static.
struct budget_registry {
  std::mutex mutex;
  boost::container::flat_set<const budget_resource*, budget_by_name> budgets;  // mutex
};

/// The registry; the first call installs the fork handlers.
budget_registry& the_budget_registry();

/// True while this thread holds the registry lock (through registry_lock).
extern thread_local constinit bool t_registry_held;

/// The registry lock, held by this thread for the scope. A reader (`reader` true) that finds the
/// lock held by this thread already reads under that hold (see the header comment); a writer
/// aborts with a message naming the call instead of deadlocking.
class registry_lock {
 public:
  explicit registry_lock(const char* what, bool reader = false);
  ~registry_lock();
  registry_lock(const registry_lock&) = delete;
  registry_lock& operator=(const registry_lock&) = delete;

 private:
  bool owns_;
};

/// What budget.cpp needs of a budget's private state while it owns the registry lock.
struct budget_lease_access {
  static std::atomic<std::size_t>& reserved(budget_resource& b) { return b.reserved_; }
  static std::atomic<std::size_t>& count(budget_resource& b) { return b.count_; }
  static detail::budget_lease*& leases(budget_resource& b) { return b.leases_; }
  static std::uint64_t id(const budget_resource& b) { return b.id_; }
  static void raise_peak(budget_resource& b, std::size_t now) { b.raise_peak(now); }
  static std::mutex* tracker_mutex(const budget_resource& b);
  static budget_stats stats(const budget_resource& b) { return b.stats_locked(); }
};

/// Calls f(budget, its stats) for every live budget, in report order, under the registry lock
/// (f must not create or destroy budgets, nor ask one for its counters).
template <class F>
void for_each_live_budget(F f) {
  budget_registry& r = the_budget_registry();
  const registry_lock lock("for_each_live_budget", true);
  for (const budget_resource* b : r.budgets) f(*b, budget_lease_access::stats(*b));
}

/// Gives a lease's credit back to its budget and moves its count and high mark there (registry
/// lock held, the budget alive). The lease stays linked, empty.
void fold_lease(budget_lease& l) noexcept;
/// Unlinks every lease from the dying budget b (registry lock held): their threads free them.
void orphan_leases(budget_resource& b) noexcept;

}  // namespace bsalloc::detail
