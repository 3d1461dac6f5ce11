// SPDX-License-Identifier: Apache-2.0
#pragma once
// Out-of-memory reports: one process-wide handler, called by every bsalloc resource that is
// about to throw std::bad_alloc.
//
//   bsalloc::set_out_of_memory_handler([](const bsalloc::out_of_memory_info& i) {
//     fmt::print(stderr, "{} '{}' could not serve {} bytes\n{}", i.resource_type, i.name,
//                i.bytes, i.stats);
//     return drop_caches();  // true: something was freed, the request is retried once
//   });
//
// Who reports: page_resource (its buffer or the OS is exhausted), slab_resource (its upstream
// failed, unless that upstream is a bsalloc resource which reported it already), frame_arena
// and budget_resource. A request that crosses several bsalloc layers is reported once, by the
// lowest one that failed (detail::reported_bad_alloc carries that up).
// Protocol (what every resource does, see detail::report_out_of_memory):
//   1. a request fails;
//   2. the handler is called with what was asked, by whom, and a stats snapshot;
//   3. if it returns true the request is tried once more; if that fails too, or the handler
//      returned false, std::bad_alloc is thrown. The handler is not called a second time for
//      the same request.
// The default handler (none installed) does nothing and returns false. A handler may allocate;
// a request that fails while the same thread is inside the handler is not reported again (no
// recursion), it throws std::bad_alloc at once. The handler may be called from any thread,
// concurrently; it must be thread-safe and should not throw (an exception it throws propagates
// out of the allocate call instead of std::bad_alloc).
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <cstddef>
#include <new>
#include <string>
#include <string_view>

namespace bsalloc {

/// What the handler is told.
struct out_of_memory_info {
  std::size_t bytes = 0;
  std::size_t alignment = 0;
  std::string_view resource_type;  ///< "frame_arena", "budget_resource", "slab_resource", ...
  std::string_view name;           ///< the resource's name, empty where it has none
  const void* resource = nullptr;  ///< the resource itself (for identity, not for calls)
  std::string stats;               ///< the resource's stats at the failure, human-readable
};

using out_of_memory_handler = bool (*)(const out_of_memory_info&);

/// Installs `handler` (nullptr: the default, which does nothing); returns the previous one.
out_of_memory_handler set_out_of_memory_handler(out_of_memory_handler handler) noexcept;
out_of_memory_handler get_out_of_memory_handler() noexcept;

namespace detail {

/// The std::bad_alloc a bsalloc resource throws once the request was reported (or nobody was
/// there to report it to): a bsalloc resource above it lets it pass without reporting the same
/// request again. Users catch it as std::bad_alloc.
struct reported_bad_alloc : std::bad_alloc {
  const char* what() const noexcept override { return "bsalloc: out of memory"; }
};

/// True when a handler is installed and this thread is not inside it already: only then is a
/// report worth building (the stats snapshot costs).
bool out_of_memory_reportable() noexcept;

/// Calls the handler with `info`; returns what it returned (false when there is none, or when
/// this thread is inside the handler already). The entry point for every bsalloc resource.
bool report_out_of_memory(const out_of_memory_info& info);

/// The same, building the snapshot only when it will be used: `stats()` returns a std::string.
template <class StatsFn>
bool report_out_of_memory(std::string_view type, std::string_view name, const void* resource,
                          std::size_t bytes, std::size_t alignment, StatsFn&& stats) {
  if (!out_of_memory_reportable()) return false;
  out_of_memory_info info;
  info.bytes = bytes;
  info.alignment = alignment;
  info.resource_type = type;
  info.name = name;
  info.resource = resource;
  info.stats = stats();
  return report_out_of_memory(info);
}

/// The protocol for a resource whose failures come from below (an upstream, the OS): runs
/// `attempt()`; if it throws a std::bad_alloc that nobody reported yet, reports it and, if the
/// handler returns true, runs `attempt()` once more. Every failure leaves as reported_bad_alloc.
/// Call it with no lock held: `stats()` and the handler may need them.
template <class Attempt, class StatsFn>
auto allocate_or_report(std::string_view type, std::string_view name, const void* resource,
                        std::size_t bytes, std::size_t alignment, Attempt&& attempt,
                        StatsFn&& stats) -> decltype(attempt()) {
  try {
    return attempt();
  } catch (const reported_bad_alloc&) {
    throw;
  } catch (const std::bad_alloc&) {
    if (!report_out_of_memory(type, name, resource, bytes, alignment, stats))
      throw reported_bad_alloc();
  }
  try {
    return attempt();
  } catch (const std::bad_alloc&) {
    throw reported_bad_alloc();
  }
}

}  // namespace detail
}  // namespace bsalloc
