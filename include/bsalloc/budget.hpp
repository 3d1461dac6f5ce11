// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::budget_resource — a named byte budget over any upstream; bsalloc::budget_report()
// shows every live budget.
//
//   bsalloc::slab_resource heap;
//   bsalloc::budget_resource physics{"physics", 8 << 20, &heap};
//   bsalloc::slab_resource physics_pool{&physics};          // the subsystem's allocator
//   fmt::print("{}", bsalloc::budget_report());              // table
//   fmt::print("{:j}", bsalloc::budget_report());            // JSON
//
// A request that would take the bytes in use past the limit calls the budget's over-budget
// handler: if it returns true the request goes ahead anyway (say, after logging it), otherwise
// — or with no handler — the global out-of-memory handler (out_of_memory.hpp) is told; if that
// returns true the request is tried once more, and then std::bad_alloc is thrown. Nothing is
// counted for a refused request. Budgets nest by composition: a budget over a budget counts a
// request in both, and either may refuse it.
//
// Accounting is per thread: each thread that uses a budget holds a lease — bytes reserved in the
// budget's shared total ahead of use (at most max_lease(), 64 KiB by default, and never more than
// an eighth of the room left under the limit). Allocate and deallocate spend and refill the
// calling thread's lease with plain loads and stores: no lock, no atomic read-modify-write; only
// when a lease runs dry (or fills up on deallocate) does the thread touch the shared counters
// (one atomic compare-and-swap). So:
//   - the limit is never exceeded (what leases hold counts against it), unless a handler allows;
//   - a request may be refused while up to the other threads' unspent leases are still free
//     (each at most 2 x max_lease(); a lease takes at most an eighth of the room left, and a
//     refusal that finds room in other leases makes their threads give the excess back on
//     their next deallocate);
//   - in_use()/count() sum the leases (under the registry lock): exact when no other thread is
//     allocating, otherwise within the other threads' leases of the truth;
//   - peak is exact when one thread allocates at a time; with several, it is at least the true
//     peak and at most the unspent leases of the other threads above it.
// set_max_lease(0) before use gives exact shared accounting instead (two atomic read-modify-
// writes per call). Registration in the process-wide list (constructor, destructor) takes a
// lock; budget_report() takes it too and reads each budget in turn (each value as above, the set
// not one atomic snapshot). fork(): the registry lock is held across it (pthread_atfork), and in
// the child the leases of the threads that did not survive the fork are folded back.
//
// Invariants (check_invariants(), when no other thread uses the budget)
//   B1  in_use == sum of the sizes of live allocations; count == their number.
//   B2  peak >= in_use; in_use <= max(limit, ceiling), where ceiling is what was reserved (in use
//       plus the leases) when set_limit() last put the limit below it, or when a handler last let
//       a request through over the limit: no new allocation is served while over the limit
//       unless a handler allows it (other threads may still spend their leases).
//
// Bad deallocations (deallocate must be given a live allocation of this budget and its size, as
// every memory_resource requires). A deallocate that would take the budget's bytes in use below
// zero — a pointer of another resource, a wrong size — is refused with std::invalid_argument
// naming the budget, the pointer and the size, and changes nothing (the upstream is not called):
//   - exactly, with shared counters (set_max_lease(0)) and in tracking mode; tracking mode also
//     refuses a pointer it has no record of, or a size other than the recorded one, and erases
//     the record only once the upstream accepted the call;
//   - with leases (the default), only when the call takes the slow path (no lease yet, or the
//     lease fills past its cap): the check needs the shared total. A bad deallocate on the fast
//     path (a few KiB at most) goes into the thread's lease unchecked; the bytes in use then read
//     low (never below 0), and the excess is caught by a later slow-path deallocate, which is
//     refused although it may be a good one. The upstream judges the pointer either way.
// If the upstream throws from deallocate, the budget's counters (and its record) are as before.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <memory_resource>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <bsalloc/stats.hpp>

namespace bsalloc {

class budget_resource;
namespace detail {
struct budget_tracker;
struct budget_lease_access;

/// One thread's lease on one budget (budget.hpp's header comment). credit/count/high are
/// written by the owner thread only (relaxed stores) and read by stats() from any thread.
struct alignas(64) budget_lease {
  std::atomic<std::size_t> credit{0};  ///< reserved in the budget's total, not handed out yet
  std::atomic<std::size_t> count{0};   ///< allocations minus deallocations here (mod 2^64)
  std::atomic<std::size_t> high{0};    ///< highest estimate of in_use seen by this thread
  std::size_t floor = 0;  ///< owner: the budget's total at the last sync; estimate = floor-credit
  // Guarded by the registry lock:
  budget_resource* budget = nullptr;  ///< null once the budget is destroyed
  std::uint64_t id = 0;               ///< the budget's id
  const void* owner = nullptr;        ///< the owner thread's token
  budget_lease* prev = nullptr;       ///< the budget's list of leases
  budget_lease* next = nullptr;
};
struct budget_tls_entry {
  std::uint64_t id;  ///< the budget's id (0: none)
  budget_lease* lease;
};
inline constexpr std::size_t budget_tls_ways = 8;  // direct-mapped by id
extern thread_local constinit budget_tls_entry t_budget_leases[budget_tls_ways];
}  // namespace detail

/// What an over-budget handler is told.
struct over_budget_info {
  const budget_resource& budget;
  std::size_t bytes;  ///< asked for
  std::size_t alignment;
  std::size_t in_use;  ///< before this request
  std::size_t limit;
};

/// Returns true to let the request through although it is over the limit.
using over_budget_handler = std::function<bool(const over_budget_info&)>;

struct budget_stats {
  std::string name;
  std::size_t limit = 0;       ///< budget_resource::unlimited for none
  std::size_t in_use = 0;      ///< bytes allocated and not freed
  std::size_t peak = 0;        ///< highest in_use
  std::size_t count = 0;       ///< live allocations
  std::size_t refused = 0;     ///< requests refused (std::bad_alloc) for the limit
  std::size_t over_limit = 0;  ///< requests the handler let through over the limit
};

/// Every live budget, sorted by name (then by address).
struct budget_snapshot {
  std::vector<budget_stats> budgets;
  /// The entry named `name`, or nullptr.
  const budget_stats* find(std::string_view name) const noexcept;
};

std::string to_string(const budget_stats& s);  // one table row, no newline
std::string to_string(const budget_snapshot& s);
std::string to_json(const budget_stats& s);
std::string to_json(const budget_snapshot& s);

budget_snapshot budget_report();
/// The budgets of budget_report() that still have memory in use: call it at shutdown, after
/// everything should have been freed, for a leak report per budget.
budget_snapshot budget_leaks();

class budget_resource : public std::pmr::memory_resource {
 public:
  static constexpr std::size_t unlimited = std::numeric_limits<std::size_t>::max();
  static constexpr std::size_t default_max_lease = std::size_t{64} << 10;

  /// `upstream` defaults to std::pmr::get_default_resource() (at construction).
  budget_resource(std::string name, std::size_t limit,
                  std::pmr::memory_resource* upstream = std::pmr::get_default_resource(),
                  over_budget_handler handler = {});
  ~budget_resource() override;
  budget_resource(const budget_resource&) = delete;
  budget_resource& operator=(const budget_resource&) = delete;

  const std::string& name() const noexcept { return name_; }
  std::size_t limit() const noexcept { return limit_.load(std::memory_order_relaxed); }
  /// A new limit; allocations already made stay (in_use may be above it until they are freed,
  /// and no new one is served meanwhile unless a handler allows it: B2).
  /// The calling thread's lease goes back at once; other threads may spend what their leases
  /// hold (each at most max_lease()) before they see a lower limit.
  void set_limit(std::size_t limit) noexcept;
  /// Not to be called while other threads allocate from this budget.
  void set_over_budget_handler(over_budget_handler handler) { handler_ = std::move(handler); }
  std::pmr::memory_resource* upstream_resource() const noexcept { return upstream_; }
  /// On: the destructor writes one line to stderr if allocations are still live (a leak).
  void set_leak_report(bool on) noexcept { leak_report_ = on; }
  /// Tracking (off by default; switch it on before the budget is used, never off again): every
  /// live allocation is recorded (pointer, bytes) in a table under a lock — a debugging mode:
  /// allocate and deallocate then take that lock. It makes for_each_allocation() and the
  /// destructor's leak line list the allocations themselves.
  void set_tracking();
  bool tracking() const noexcept { return tracker_ != nullptr; }
  /// The live allocations (tracking on; empty otherwise), sorted by address: a snapshot taken
  /// under the lock, safe while other threads allocate (what they allocate or free meanwhile
  /// may or may not be in it).
  std::vector<std::pair<const void*, std::size_t>> allocations() const;
  /// Calls f(const void* p, std::size_t bytes) for each entry of allocations(), outside the
  /// lock (f may allocate from this budget). Returns how many.
  template <class F>
  std::size_t for_each_allocation(F&& f) const {
    const auto all = allocations();
    for (const auto& [p, n] : all) f(p, n);
    return all.size();
  }

  /// Leases: at most `bytes` per thread (0: none, exact shared counters). Before use only.
  void set_max_lease(std::size_t bytes) noexcept {
    max_lease_ = bytes;
    lease_cap_.store(2 * std::min(bytes, std::size_t{4096}), std::memory_order_relaxed);
  }
  std::size_t max_lease() const noexcept { return max_lease_; }

  // Sums over the leases, under the registry lock (see the header comment for their accuracy).
  std::size_t in_use() const noexcept;
  std::size_t peak() const noexcept;
  std::size_t count() const noexcept;
  budget_stats stats() const;
  /// Verifies B2 (B1 needs the caller's own bookkeeping); throws std::logic_error.
  /// in_use(), stats(), budget_report() may be called from any handler (over-budget or
  /// out-of-memory), even one called from an allocation made under the registry lock.
  void check_invariants() const;

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    const detail::budget_tls_entry& e = detail::t_budget_leases[id_ % detail::budget_tls_ways];
    if (e.id == id_) [[likely]] {
      detail::budget_lease& l = *e.lease;
      const std::size_t credit = l.credit.load(std::memory_order_relaxed);
      // bytes in 1..credit (a 0-byte request over the limit must meet it on the slow path).
      if (bytes - 1 < credit) [[likely]] {
        // The lease is updated before the upstream call, which may re-enter a budget on this
        // thread (a nested budget's slow path may move this lease's credit back).
        l.credit.store(credit - bytes, std::memory_order_relaxed);
        l.count.store(l.count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        const std::size_t estimate = l.floor - (credit - bytes);
        void* p;
        try {
          p = upstream_->allocate(bytes, alignment);
        } catch (...) {
          refund(l, bytes);
          throw;
        }
        // The high mark once served: a request the upstream refused is no peak.
        if (estimate > l.high.load(std::memory_order_relaxed)) [[unlikely]]
          l.high.store(estimate, std::memory_order_relaxed);
        return p;
      }
    }
    return allocate_slow(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    const detail::budget_tls_entry& e = detail::t_budget_leases[id_ % detail::budget_tls_ways];
    if (e.id == id_) [[likely]] {
      detail::budget_lease& l = *e.lease;
      const std::size_t credit = l.credit.load(std::memory_order_relaxed);
      if (credit + bytes <= lease_cap_.load(std::memory_order_relaxed) && credit + bytes >= bytes)
          [[likely]] {
        l.credit.store(credit + bytes, std::memory_order_relaxed);
        l.count.store(l.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
        try {
          upstream_->deallocate(p, bytes, alignment);
        } catch (...) {
          unrefund(l, bytes);
          throw;
        }
        return;
      }
    }
    deallocate_slow(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

 private:
  friend struct detail::budget_lease_access;
  friend budget_snapshot budget_report();
  [[gnu::noinline]] void* allocate_slow(std::size_t bytes, std::size_t alignment);
  [[gnu::noinline]] void deallocate_slow(void* p, std::size_t bytes, std::size_t alignment);
  /// The upstream threw: the lease gets back what was taken from it.
  [[gnu::noinline]] static void refund(detail::budget_lease& l, std::size_t bytes) noexcept;
  /// Over the limit: the lease cap drops to 0 (see budget_lease.cpp).
  void stop_leases() noexcept;
  /// The upstream refused a deallocate: the bytes given to the lease are in use again.
  [[gnu::noinline]] void unrefund(detail::budget_lease& l, std::size_t bytes) noexcept;
  /// Tracking mode: the record is checked, then erased once the upstream accepted the call.
  void deallocate_tracked(void* p, std::size_t bytes, std::size_t alignment);
  /// Shared counters: takes `bytes` and one allocation off, or refuses (nothing changed).
  void unreserve(void* p, std::size_t bytes);
  /// Takes `bytes` off the shared total (a lease giving back what exceeds `keep`), or refuses
  /// when the total holds less than the lease's credit plus `bytes`; returns the new total.
  std::size_t unreserve_lease(void* p, std::size_t bytes, std::size_t credit, std::size_t back);
  [[noreturn, gnu::noinline]] void bad_deallocate(const void* p, std::size_t bytes,
                                                  const std::string& problem) const;
  /// Shared-counter path (no lease): reserves, calls the upstream, counts.
  void* allocate_shared(std::size_t bytes, std::size_t alignment);
  /// `bytes` are reserved in reserved_ (now == reserved_ after the reservation).
  void* allocate_reserved(std::size_t bytes, std::size_t alignment, std::size_t now);
  void* allocate_over(std::size_t bytes, std::size_t alignment);
  /// Serves the request if the shared total leaves room for it under the limit; nullptr
  /// otherwise (then, if other threads' leases hold the room, the lease cap drops).
  void* allocate_fitting(std::size_t bytes, std::size_t alignment);
  void raise_peak(std::size_t now) noexcept;
  void track(void* p, std::size_t bytes, std::size_t alignment);
  /// The calling thread's lease, installed in its TLS table; nullptr when leases are off.
  detail::budget_lease* lease();
  /// The calling thread's unspent lease goes back to the shared total (over the limit, before
  /// a handler's verdict is checked: what the handler freed on this thread counts at once).
  void return_own_lease() noexcept;
  /// Adds up the leases; registry lock held.
  budget_stats stats_locked() const;

  // The shared counters, touched when a lease is taken or given back (or with no lease).
  alignas(64) std::atomic<std::size_t> reserved_{0};  ///< in use + every lease's credit
  std::atomic<std::size_t> count_{0};                 ///< plus the leases' counts
  std::atomic<std::size_t> peak_{0};
  // Read on every deallocate, written when it changes: a line of its own.
  /// Most credit a lease keeps on deallocate (the excess goes back): twice the last lease
  /// granted, so it shrinks for every thread as the budget nears its limit.
  alignas(64) std::atomic<std::size_t> lease_cap_{2 * 4096};
  std::atomic<std::size_t> limit_;
  /// B2: reserved_ when set_limit() last put the limit below it, or when a handler last let a
  /// request through (0: none since the limit was last set above what was reserved).
  std::atomic<std::size_t> ceiling_{0};
  // Slow path only.
  std::atomic<std::size_t> refused_{0};
  std::atomic<std::size_t> over_limit_{0};
  std::pmr::memory_resource* upstream_;
  std::uint64_t id_;                           ///< unique, never 0: the key of the TLS lease table
  std::size_t max_lease_ = default_max_lease;  ///< 0: no leases
  detail::budget_lease* leases_ = nullptr;     ///< registry lock
  std::string name_;
  over_budget_handler handler_;
  bool leak_report_ = false;
  std::unique_ptr<detail::budget_tracker> tracker_;  // set before use, then constant
};

}  // namespace bsalloc

template <>
struct fmt::formatter<bsalloc::budget_snapshot>
    : bsalloc::detail::stats_formatter<bsalloc::budget_snapshot> {};
template <>
struct fmt::formatter<bsalloc::budget_stats>
    : bsalloc::detail::stats_formatter<bsalloc::budget_stats> {};
