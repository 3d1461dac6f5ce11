// SPDX-License-Identifier: Apache-2.0
// memory_sampler: JSON lines of budget_report() and extra series.
#include <bsalloc/sampler.hpp>

#include <cerrno>
#include <chrono>
#include <system_error>

#include <fmt/format.h>

namespace bsalloc {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string json_key(const std::string& s) {
  // Series names are the caller's: keep them printable and quote-free.
  std::string out;
  for (const char c : s)
    out += (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) ? '_' : c;
  return out;
}

}  // namespace

memory_sampler::memory_sampler(std::string path) : path_(std::move(path)), start_(now_seconds()) {
  file_ = std::fopen(path_.c_str(), "w");
  if (file_ == nullptr)
    throw std::system_error(errno, std::generic_category(), "memory_sampler: cannot open " + path_);
}

memory_sampler::~memory_sampler() {
  if (file_ != nullptr) std::fclose(file_);
}

void memory_sampler::add_series(std::string name, std::function<std::size_t()> bytes) {
  series_.emplace_back(json_key(name), std::move(bytes));
}

std::string memory_sampler::line(std::uint64_t frame, double seconds,
                                 const budget_snapshot& report) const {
  std::string out = fmt::format("{{\"frame\":{},\"t\":{:.4f},\"budgets\":[", frame, seconds);
  for (std::size_t i = 0; i < report.budgets.size(); ++i) {
    if (i) out += ',';
    out += to_json(report.budgets[i]);
  }
  out += "],\"series\":{";
  for (std::size_t i = 0; i < series_.size(); ++i)
    out += fmt::format("{}\"{}\":{}", i ? "," : "", series_[i].first, series_[i].second());
  out += "}}";
  return out;
}

void memory_sampler::sample(std::uint64_t frame) {
  const std::string l = line(frame, now_seconds() - start_, budget_report());
  std::fputs(l.c_str(), file_);
  std::fputc('\n', file_);
  std::fflush(file_);
  ++lines_;
}

}  // namespace bsalloc
