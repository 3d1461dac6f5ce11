// SPDX-License-Identifier: Apache-2.0
#pragma once
// Lock policies for bsalloc's typed pools (object_pool<T, Lock>).
//
// A lock policy is any BasicLockable type (lock() and unlock()): bsalloc::yield_lock (the
// default), std::mutex, or bsalloc::null_lock. A policy may declare
// `static constexpr bool thread_safe`; one that does not is taken to be thread-safe.
//
//   yield_lock  one byte; test-and-test-and-set. Uncontended it costs one atomic exchange to
//               lock and one release store to unlock. Contended it spins a bounded number of
//               times, then yields the CPU, then sleeps for growing (bounded) intervals: a
//               thread never spins indefinitely on a lock whose holder was preempted, which is
//               what happens when there are more threads than cores.
//   std::mutex  the platform mutex (futex): fair enough, heavier when uncontended.
//   null_lock   no synchronisation at all, zero bytes, zero instructions. Whatever it guards
//               may then be used by one thread at a time only; types built on it say so with
//               `thread_safe == false`.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <atomic>
#include <chrono>
#include <thread>

namespace bsalloc {

/// A lock that spins briefly, then yields, then sleeps: never a busy wait without end.
class yield_lock {
 public:
  static constexpr bool thread_safe = true;
  /// Busy-wait probes (with a CPU pause hint) before the first yield.
  static constexpr unsigned spin_limit = 64;
  /// Yields before the first sleep.
  static constexpr unsigned yield_limit = 16;
  /// Sleeps start at min_sleep and double up to max_sleep.
  static constexpr std::chrono::microseconds min_sleep{20};
  static constexpr std::chrono::microseconds max_sleep{1000};

  constexpr yield_lock() noexcept = default;
  yield_lock(const yield_lock&) = delete;
  yield_lock& operator=(const yield_lock&) = delete;

  void lock() noexcept {
    if (!locked_.exchange(true, std::memory_order_acquire)) [[likely]]
      return;
    lock_contended();
  }
  bool try_lock() noexcept {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
  }

  [[gnu::noinline]] void lock_contended() noexcept {
    unsigned spins = 0, yields = 0;
    auto sleep = min_sleep;
    for (;;) {
      // Test, then test-and-set: wait on a plain load so the cache line stays shared.
      while (locked_.load(std::memory_order_relaxed)) {
        if (spins < spin_limit) {
          ++spins;
          cpu_relax();
        } else if (yields < yield_limit) {
          ++yields;
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(sleep);
          if (sleep < max_sleep) sleep *= 2;
        }
      }
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
    }
  }

  std::atomic<bool> locked_{false};
};

/// No lock at all. Whatever uses it is single-threaded: `thread_safe == false`.
struct null_lock {
  static constexpr bool thread_safe = false;
  constexpr void lock() noexcept {}
  constexpr bool try_lock() noexcept { return true; }
  constexpr void unlock() noexcept {}
};

/// A lock policy: BasicLockable.
template <class L>
concept lock_policy = requires(L& l) {
  l.lock();
  l.unlock();
};

/// Whether a lock policy synchronises threads (false only if it says so).
template <lock_policy L>
inline constexpr bool is_thread_safe_lock_v = [] {
  if constexpr (requires { L::thread_safe; })
    return static_cast<bool>(L::thread_safe);
  else
    return true;
}();

static_assert(is_thread_safe_lock_v<yield_lock>);
static_assert(!is_thread_safe_lock_v<null_lock>);

}  // namespace bsalloc
