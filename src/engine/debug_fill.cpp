// SPDX-License-Identifier: Apache-2.0
// The bulk-free hook (see debug_fill.hpp).
#include <bsalloc/debug_fill.hpp>

#include <atomic>

namespace bsalloc {
namespace {

std::atomic<bulk_free_hook> current_hook{nullptr};

}  // namespace

bulk_free_hook set_bulk_free_hook(bulk_free_hook hook) noexcept {
  return current_hook.exchange(hook, std::memory_order_acq_rel);
}

bulk_free_hook get_bulk_free_hook() noexcept {
  return current_hook.load(std::memory_order_acquire);
}

void detail::notify_bulk_free(const bulk_free_event& event) noexcept {
  if (const bulk_free_hook h = current_hook.load(std::memory_order_acquire)) h(event);
}

}  // namespace bsalloc
