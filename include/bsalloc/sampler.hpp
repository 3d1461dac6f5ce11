// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::memory_sampler — memory over time, one JSON line per frame (or interval), for
// scripts/memchart.sh to draw: one line per budget, its limit dashed.
//
//   bsalloc::memory_sampler sampler{"memory.jsonl"};
//   sampler.add_series("slab reserved", [&] { return pool.stats().bytes_reserved; });
//   for (frame ...) { ...; sampler.sample(frame); }
//   // then: scripts/memchart.sh memory.jsonl memory.png
//
// Each line:
//   {"frame":12,"t":0.2013,"budgets":[<budget_report() entries, as {:j}>],
//    "series":{"slab reserved":1048576,...}}
// Not thread-safe: sample from one thread (the series functions run on it).
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <bsalloc/budget.hpp>

namespace bsalloc {

class memory_sampler {
 public:
  /// Creates (truncates) `path`. Throws std::system_error when it cannot be opened.
  explicit memory_sampler(std::string path);
  ~memory_sampler();
  memory_sampler(const memory_sampler&) = delete;
  memory_sampler& operator=(const memory_sampler&) = delete;

  /// A value written with every line besides the budgets (bytes): the slab/page totals.
  void add_series(std::string name, std::function<std::size_t()> bytes);
  /// Appends one line: budget_report() and every series. Flushed at once (a crash keeps it).
  void sample(std::uint64_t frame);
  /// The line sample() would write, for a given snapshot (and the series' current values).
  std::string line(std::uint64_t frame, double seconds, const budget_snapshot& report) const;

  std::size_t lines() const noexcept { return lines_; }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
  std::vector<std::pair<std::string, std::function<std::size_t()>>> series_;
  std::size_t lines_ = 0;
  double start_ = 0;
};

}  // namespace bsalloc
