// SPDX-License-Identifier: Apache-2.0
#pragma once
// Internal: the CPU the calling thread runs on, for the per-core caches of both layers (the
// page layer's run cache, src/page/run_cache.cpp; the slab layer's core caches,
// src/slab/core_cache.cpp).
#include <sched.h>
#if __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#endif

#include <cstddef>

namespace bsalloc::detail {

/// The kernel keeps the CPU number in the thread's rseq area (glibc 2.35 and later register
/// one): a load. sched_getcpu() where no rseq area is registered; 0 if that fails too.
inline std::size_t current_cpu() noexcept {
#if defined(__x86_64__) && defined(RSEQ_SIG)
  if (__rseq_size != 0) {
    const char* tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    const auto* rs = reinterpret_cast<const volatile struct rseq*>(tp + __rseq_offset);
    const auto c = static_cast<int>(rs->cpu_id);
    if (c >= 0) return static_cast<std::size_t>(c);
  }
#endif
  const int c = ::sched_getcpu();
  return c < 0 ? 0 : static_cast<std::size_t>(c);
}

}  // namespace bsalloc::detail
