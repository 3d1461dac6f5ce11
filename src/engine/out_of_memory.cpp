// SPDX-License-Identifier: Apache-2.0
// The process-wide out-of-memory handler (see out_of_memory.hpp).
#include <bsalloc/out_of_memory.hpp>

#include <atomic>

namespace bsalloc {
namespace {

std::atomic<out_of_memory_handler> current_handler{nullptr};
thread_local bool inside_handler = false;

}  // namespace

out_of_memory_handler set_out_of_memory_handler(out_of_memory_handler handler) noexcept {
  return current_handler.exchange(handler, std::memory_order_acq_rel);
}

out_of_memory_handler get_out_of_memory_handler() noexcept {
  return current_handler.load(std::memory_order_acquire);
}

bool detail::out_of_memory_reportable() noexcept {
  return !inside_handler && current_handler.load(std::memory_order_acquire) != nullptr;
}

bool detail::report_out_of_memory(const out_of_memory_info& info) {
  if (inside_handler) return false;
  const out_of_memory_handler h = current_handler.load(std::memory_order_acquire);
  if (h == nullptr) return false;
  struct guard {
    guard() { inside_handler = true; }
    ~guard() { inside_handler = false; }
    guard(const guard&) = delete;
    guard& operator=(const guard&) = delete;
  } g;
  return h(info);
}

}  // namespace bsalloc
