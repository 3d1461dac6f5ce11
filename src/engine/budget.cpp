// SPDX-License-Identifier: Apache-2.0
// budget_resource's slow paths, the registry of live budgets and the report's printers.
#include <bsalloc/budget.hpp>
#include <bsalloc/out_of_memory.hpp>

#include <algorithm>
#include <iterator>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <unordered_map>

#include <fmt/format.h>

#include "../format.hpp"
#include "budget_internal.hpp"

namespace bsalloc {

/// Live allocations of a tracking budget (a hash table: O(1) per call; sorted on reading).
struct detail::budget_tracker {
  mutable std::mutex mutex;
  std::unordered_map<const void*, std::size_t> live;  // guarded by mutex
};

namespace {

std::atomic<std::uint64_t> next_budget_id{1};

std::string limit_text(std::size_t limit) {
  return limit == budget_resource::unlimited ? std::string("-") : detail::human_bytes(limit);
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += fmt::format("\\u{:04x}", c);
    } else {
      out += ch;
    }
  }
  out += '"';
  return out;
}

}  // namespace

budget_resource::budget_resource(std::string name, std::size_t limit,
                                 std::pmr::memory_resource* upstream, over_budget_handler handler)
    : limit_(limit),
      upstream_(upstream),
      id_(next_budget_id.fetch_add(1, std::memory_order_relaxed)),
      name_(std::move(name)),
      handler_(std::move(handler)) {
  if (upstream_ == nullptr) throw std::invalid_argument("budget_resource: null upstream");
  const detail::registry_lock lock("budget_resource: constructor");
  detail::the_budget_registry().budgets.insert(this);
}

budget_resource::~budget_resource() {
  if (leak_report_ && count() != 0) {
    fmt::print(stderr, "bsalloc: budget '{}' destroyed with {} allocation(s), {} still in use\n",
               name_, count(), detail::human_bytes(in_use()));
    std::size_t shown = 0;
    for_each_allocation([&](const void* p, std::size_t n) {
      if (shown++ < 10) fmt::print(stderr, "  leaked {} bytes at {}\n", n, p);
    });
  }
  const detail::registry_lock lock("budget_resource: destructor");
  detail::orphan_leases(*this);
  detail::the_budget_registry().budgets.erase(this);
}

std::mutex* detail::budget_lease_access::tracker_mutex(const budget_resource& b) {
  return b.tracker_ ? &b.tracker_->mutex : nullptr;
}

void budget_resource::set_tracking() {
  if (tracker_ != nullptr) return;
  auto t = std::make_unique<detail::budget_tracker>();
  const detail::registry_lock lock("budget_resource::set_tracking");  // the fork handlers read it
  tracker_ = std::move(t);
}

void budget_resource::track(void* p, std::size_t bytes, std::size_t alignment) {
  try {
    const std::lock_guard lock(tracker_->mutex);
    tracker_->live.insert_or_assign(p, bytes);
  } catch (...) {
    upstream_->deallocate(p, bytes, alignment);
    count_.fetch_sub(1, std::memory_order_relaxed);
    reserved_.fetch_sub(bytes, std::memory_order_relaxed);
    throw;
  }
}

void budget_resource::bad_deallocate(const void* p, std::size_t bytes,
                                     const std::string& problem) const {
  throw std::invalid_argument(
      fmt::format("bsalloc::budget_resource '{}': deallocate({}, {} bytes): {}; nothing changed",
                  name_, p, bytes, problem));
}

void budget_resource::unreserve(void* p, std::size_t bytes) {
  constexpr auto relaxed = std::memory_order_relaxed;
  std::size_t cur = reserved_.load(relaxed);
  do {
    if (cur < bytes)
      bad_deallocate(p, bytes,
                     fmt::format("more than the {} bytes in use (a pointer of another resource, "
                                 "or a wrong size)",
                                 cur));
  } while (!reserved_.compare_exchange_weak(cur, cur - bytes, relaxed));
  // Leases hold counts of their own (a thread may free what another allocated): count_ alone
  // is the budget's count only without them.
  const bool exact = max_lease_ == 0 || tracker_ != nullptr;
  std::size_t n = count_.load(relaxed);
  do {
    if (exact && n == 0) {
      reserved_.fetch_add(bytes, relaxed);
      bad_deallocate(p, bytes, "no allocation is live (a pointer of another resource)");
    }
  } while (!count_.compare_exchange_weak(n, n - 1, relaxed));
}

std::size_t budget_resource::unreserve_lease(void* p, std::size_t bytes, std::size_t credit,
                                             std::size_t back) {
  // The shared total holds what is in use plus every lease's credit: a good deallocate of
  // `bytes` finds at least this lease's credit plus `bytes` there. A lower value read may be
  // stale: the check is made on the latest one (a compare-and-swap) before refusing.
  std::size_t cur = reserved_.load(std::memory_order_relaxed);
  for (;;) {
    if (cur < credit || cur - credit < bytes) {
      if (reserved_.compare_exchange_strong(cur, cur, std::memory_order_relaxed))
        bad_deallocate(p, bytes,
                       fmt::format("more than the {} bytes in use (a pointer of another "
                                   "resource, or a wrong size)",
                                   cur - std::min(cur, credit)));
      continue;
    }
    if (reserved_.compare_exchange_weak(cur, cur - back, std::memory_order_relaxed))
      return cur - back;
  }
}

void budget_resource::deallocate_tracked(void* p, std::size_t bytes, std::size_t alignment) {
  using map = std::unordered_map<const void*, std::size_t>;
  map::node_type node;
  std::size_t recorded = 0;
  {
    const std::lock_guard lock(tracker_->mutex);
    const auto it = tracker_->live.find(p);
    if (it != tracker_->live.end()) {
      recorded = it->second;
      if (recorded == bytes) node = tracker_->live.extract(it);  // no allocation: re-insertable
    }
  }
  if (node.empty())
    bad_deallocate(
        p, bytes,
        recorded == 0 && bytes != 0
            ? std::string("not a live allocation of this budget (tracking)")
            : fmt::format("the size does not match the allocation ({} bytes)", recorded));
  try {
    unreserve(p, bytes);
  } catch (...) {
    const std::lock_guard lock(tracker_->mutex);
    tracker_->live.insert(std::move(node));
    throw;
  }
  try {
    upstream_->deallocate(p, bytes, alignment);
  } catch (...) {
    count_.fetch_add(1, std::memory_order_relaxed);
    reserved_.fetch_add(bytes, std::memory_order_relaxed);
    const std::lock_guard lock(tracker_->mutex);
    tracker_->live.insert(std::move(node));
    throw;
  }
}

std::vector<std::pair<const void*, std::size_t>> budget_resource::allocations() const {
  std::vector<std::pair<const void*, std::size_t>> out;
  if (tracker_ == nullptr) return out;
  {
    const std::lock_guard lock(tracker_->mutex);
    out.assign(tracker_->live.begin(), tracker_->live.end());
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return std::less<>{}(a.first, b.first); });
  return out;
}

void budget_resource::raise_peak(std::size_t now) noexcept {
  std::size_t seen = peak_.load(std::memory_order_relaxed);
  while (now > seen && !peak_.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
  }
}

void* budget_resource::allocate_shared(std::size_t bytes, std::size_t alignment) {
  const std::size_t lim = limit();
  std::size_t cur = reserved_.load(std::memory_order_relaxed);
  do {
    if (cur > lim || bytes > lim - cur) return allocate_over(bytes, alignment);
  } while (!reserved_.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
  return allocate_reserved(bytes, alignment, cur + bytes);
}

void* budget_resource::allocate_reserved(std::size_t bytes, std::size_t alignment,
                                         std::size_t now) {
  void* p;
  try {
    p = upstream_->allocate(bytes, alignment);
  } catch (...) {
    reserved_.fetch_sub(bytes, std::memory_order_relaxed);
    throw;
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  raise_peak(now);
  if (tracker_ != nullptr) [[unlikely]]
    track(p, bytes, alignment);
  return p;
}

void* budget_resource::allocate_fitting(std::size_t bytes, std::size_t alignment) {
  const std::size_t lim = limit();
  std::size_t cur = reserved_.load(std::memory_order_relaxed);
  while (cur <= lim && bytes <= lim - cur)
    if (reserved_.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed))
      return allocate_reserved(bytes, alignment, cur + bytes);
  // Refused. If the room is there but in other threads' unspent leases, the lease cap drops to
  // its least: those threads give their excess back on their next deallocate.
  if (max_lease_ != 0 && tracker_ == nullptr) {
    const std::size_t exact = in_use();
    if (exact <= lim && bytes <= lim - exact)
      lease_cap_.store(2 * std::min(std::size_t{4096}, max_lease_), std::memory_order_relaxed);
  }
  return nullptr;
}

void* budget_resource::allocate_over(std::size_t bytes, std::size_t alignment) {
  // Nothing is reserved for this request while the handlers run.
  return_own_lease();
  if (bytes > std::numeric_limits<std::size_t>::max() - reserved_.load(std::memory_order_relaxed)) {
    refused_.fetch_add(1, std::memory_order_relaxed);
    throw detail::reported_bad_alloc();  // more than any address space
  }
  if (void* p = allocate_fitting(bytes, alignment)) return p;
  if (handler_ && handler_(over_budget_info{*this, bytes, alignment, in_use(), limit()})) {
    over_limit_.fetch_add(1, std::memory_order_relaxed);
    const std::size_t now = reserved_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    std::size_t c = ceiling_.load(std::memory_order_relaxed);  // B2: allowed up to here
    while (now > c && !ceiling_.compare_exchange_weak(c, now, std::memory_order_relaxed)) {
    }
    stop_leases();
    return allocate_reserved(bytes, alignment, now);
  }
  if (detail::report_out_of_memory("budget_resource", name_, this, bytes, alignment,
                                   [this] { return to_string(stats()) + "\n"; })) {
    return_own_lease();  // what the handler freed on this thread went to its lease
    if (void* p = allocate_fitting(bytes, alignment)) return p;
  }
  refused_.fetch_add(1, std::memory_order_relaxed);
  throw detail::reported_bad_alloc();
}

budget_stats budget_resource::stats_locked() const {
  budget_stats s;
  s.name = name_;
  s.limit = limit();
  std::size_t credit = 0, count = 0, high = 0;
  for (const detail::budget_lease* l = leases_; l != nullptr; l = l->next) {
    credit += l->credit.load(std::memory_order_relaxed);
    count += l->count.load(std::memory_order_relaxed);
    high = std::max(high, l->high.load(std::memory_order_relaxed));
  }
  const std::size_t reserved = reserved_.load(std::memory_order_relaxed);
  s.in_use = reserved >= credit ? reserved - credit : 0;  // may lag while others allocate
  s.count = count_.load(std::memory_order_relaxed) + count;
  s.peak = std::max({peak_.load(std::memory_order_relaxed), high, s.in_use});
  s.refused = refused_.load(std::memory_order_relaxed);
  s.over_limit = over_limit_.load(std::memory_order_relaxed);
  return s;
}

budget_stats budget_resource::stats() const {
  const detail::registry_lock lock("budget_resource::stats", true);
  return stats_locked();
}

std::size_t budget_resource::in_use() const noexcept {
  return stats().in_use;
}
std::size_t budget_resource::peak() const noexcept {
  return stats().peak;
}
std::size_t budget_resource::count() const noexcept {
  return stats().count;
}

void budget_resource::check_invariants() const {
  const budget_stats s = stats();
  if (s.peak < s.in_use)
    throw std::logic_error("budget_resource '" + name_ + "': B2: peak < in_use");
  const std::size_t ceiling = ceiling_.load(std::memory_order_relaxed);
  if (s.in_use > s.limit && s.in_use > ceiling)
    throw std::logic_error(fmt::format(
        "budget_resource '{}': B2: {} bytes in use, over the limit {} and over the {} reserved "
        "when the limit was lowered or a handler last allowed an excess",
        name_, s.in_use, s.limit, ceiling));
  if (s.in_use != 0 && s.count == 0)
    throw std::logic_error("budget_resource '" + name_ + "': B1: bytes in use but no allocation");
}

budget_snapshot budget_report() {
  budget_snapshot snap;
  detail::budget_registry& r = detail::the_budget_registry();
  const detail::registry_lock lock("budget_report", true);
  snap.budgets.reserve(r.budgets.size());
  for (const budget_resource* b : r.budgets) snap.budgets.push_back(b->stats_locked());
  return snap;
}

budget_snapshot budget_leaks() {
  budget_snapshot snap = budget_report();
  std::erase_if(snap.budgets, [](const budget_stats& b) { return b.in_use == 0 && b.count == 0; });
  return snap;
}

const budget_stats* budget_snapshot::find(std::string_view name) const noexcept {
  for (const auto& b : budgets)
    if (b.name == name) return &b;
  return nullptr;
}

std::string to_string(const budget_stats& s) {
  return fmt::format("{}: {} in use (peak {}) of {}, {} allocations, {} refused, {} over limit",
                     s.name, detail::human_bytes(s.in_use), detail::human_bytes(s.peak),
                     limit_text(s.limit), s.count, s.refused, s.over_limit);
}

std::string to_string(const budget_snapshot& s) {
  std::size_t width = 6;
  std::size_t total = 0;
  for (const auto& b : s.budgets) {
    width = std::max(width, b.name.size());
    total += b.in_use;
  }
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it, "budgets: {} live, {} in use\n", s.budgets.size(), detail::human_bytes(total));
  fmt::format_to(it, "  {:<{}} {:>10} {:>10} {:>10} {:>8} {:>7} {:>5}\n", "budget", width, "in use",
                 "peak", "limit", "allocs", "refused", "over");
  for (const auto& b : s.budgets)
    fmt::format_to(it, "  {:<{}} {:>10} {:>10} {:>10} {:>8} {:>7} {:>5}{}\n", b.name, width,
                   detail::human_bytes(b.in_use), detail::human_bytes(b.peak), limit_text(b.limit),
                   b.count, b.refused, b.over_limit, b.in_use > b.limit ? "  OVER" : "");
  return out;
}

std::string to_json(const budget_stats& s) {
  return fmt::format(
      "{{\"name\":{},\"in_use\":{},\"peak\":{},\"limit\":{},\"count\":{},\"refused\":{},"
      "\"over_limit\":{}}}",
      json_string(s.name), s.in_use, s.peak,
      s.limit == budget_resource::unlimited ? std::string("null") : std::to_string(s.limit),
      s.count, s.refused, s.over_limit);
}

std::string to_json(const budget_snapshot& s) {
  std::string out = "{\"budgets\":[";
  for (std::size_t i = 0; i < s.budgets.size(); ++i) {
    if (i) out += ',';
    out += to_json(s.budgets[i]);
  }
  out += "]}";
  return out;
}

}  // namespace bsalloc
