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
// Counters (in use, peak, live allocations) are atomics updated without a lock: allocate and
// deallocate take no lock; in_use is reserved before the upstream call (so the limit holds under
// concurrency) and given back if the upstream throws. Registration in the process-wide list
// (constructor, destructor) takes a lock; budget_report() takes it too, and reads each budget's
// counters one by one (each value exact, the set not one atomic snapshot).
//
// Invariants (check_invariants(), when no other thread uses the budget)
//   B1  in_use == sum of the sizes of live allocations; count == their number.
//   B2  peak >= in_use; in_use <= limit unless the handler allowed an excess.
// deallocate must be given the size that was allocated (as every memory_resource requires).
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <atomic>
#include <cstddef>
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
}

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

  /// `upstream` defaults to std::pmr::get_default_resource() (at construction).
  budget_resource(std::string name, std::size_t limit,
                  std::pmr::memory_resource* upstream = std::pmr::get_default_resource(),
                  over_budget_handler handler = {});
  ~budget_resource() override;
  budget_resource(const budget_resource&) = delete;
  budget_resource& operator=(const budget_resource&) = delete;

  const std::string& name() const noexcept { return name_; }
  std::size_t limit() const noexcept { return limit_.load(std::memory_order_relaxed); }
  /// A new limit; allocations already made stay (in_use may be above it until they are freed).
  void set_limit(std::size_t limit) noexcept { limit_.store(limit, std::memory_order_relaxed); }
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

  std::size_t in_use() const noexcept { return in_use_.load(std::memory_order_relaxed); }
  std::size_t peak() const noexcept { return peak_.load(std::memory_order_relaxed); }
  std::size_t count() const noexcept { return count_.load(std::memory_order_relaxed); }
  budget_stats stats() const;
  /// Verifies B2 (B1 needs the caller's own bookkeeping); throws std::logic_error.
  void check_invariants() const;

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    if (bytes > (std::numeric_limits<std::size_t>::max() >> 2)) [[unlikely]]
      return allocate_huge(bytes, alignment);  // a blind fetch_add could wrap in_use_
    const std::size_t now = in_use_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    if (now > limit_.load(std::memory_order_relaxed) || now < bytes) [[unlikely]]
      return allocate_over(bytes, alignment);
    return allocate_reserved(bytes, alignment, now);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    if (tracker_ != nullptr) [[unlikely]]
      untrack(p);
    upstream_->deallocate(p, bytes, alignment);
    count_.fetch_sub(1, std::memory_order_relaxed);
    in_use_.fetch_sub(bytes, std::memory_order_relaxed);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

 private:
  /// `bytes` are reserved in in_use_ (now == in_use_ after the reservation).
  void* allocate_reserved(std::size_t bytes, std::size_t alignment, std::size_t now) {
    void* p;
    try {
      p = upstream_->allocate(bytes, alignment);
    } catch (...) {
      in_use_.fetch_sub(bytes, std::memory_order_relaxed);
      throw;
    }
    count_.fetch_add(1, std::memory_order_relaxed);
    if (now > peak_.load(std::memory_order_relaxed)) [[unlikely]]
      raise_peak(now);
    if (tracker_ != nullptr) [[unlikely]]
      track(p, bytes, alignment);
    return p;
  }
  [[gnu::noinline]] void* allocate_over(std::size_t bytes, std::size_t alignment);
  [[gnu::noinline]] void* allocate_huge(std::size_t bytes, std::size_t alignment);
  [[gnu::noinline]] void raise_peak(std::size_t now) noexcept;
  [[gnu::noinline]] void track(void* p, std::size_t bytes, std::size_t alignment);
  [[gnu::noinline]] void untrack(void* p) noexcept;

  // Hot, written by every thread that allocates: together on one line.
  alignas(64) std::atomic<std::size_t> in_use_{0};
  std::atomic<std::size_t> count_{0};
  std::atomic<std::size_t> peak_{0};
  std::atomic<std::size_t> limit_;
  // Slow path only.
  std::atomic<std::size_t> refused_{0};
  std::atomic<std::size_t> over_limit_{0};
  std::pmr::memory_resource* upstream_;
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
