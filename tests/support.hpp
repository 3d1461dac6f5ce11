// SPDX-License-Identifier: Apache-2.0
#pragma once
// Helpers shared by the test suites.
#include <bsalloc/page_resource.hpp>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include <doctest/doctest.h>

namespace bsalloc_test {

// Which sanitizer this test binary runs under (GCC defines __SANITIZE_*; clang has
// __has_feature).
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool asan_build = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool asan_build = true;
#else
inline constexpr bool asan_build = false;
#endif
#else
inline constexpr bool asan_build = false;
#endif
#if defined(__SANITIZE_THREAD__)
inline constexpr bool tsan_build = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool tsan_build = true;
#else
inline constexpr bool tsan_build = false;
#endif
#else
inline constexpr bool tsan_build = false;
#endif
inline constexpr bool sanitized_build = asan_build || tsan_build;

/// waitpid(pid, &status, 0), again when a signal interrupts it (a timer, a profiler): the pid, or
/// -1 on a real failure.
inline pid_t wait_child(pid_t pid, int& status) {
  pid_t w;
  while ((w = ::waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
  }
  return w;
}

/// Nothing allocated, and every region tiled by the fewest possible free blocks: what a buddy
/// allocator looks like when everything has merged back.
inline bool fully_coalesced(const bsalloc::page_resource& r) {
  const auto s = r.stats();
  if (s.allocated_bytes != 0) return false;
  std::size_t blocks = 0;
  for (auto n : s.free_blocks) blocks += n;
  std::size_t minimal = 0;
  for (const auto& reg : s.regions) {
    const std::uint64_t pfn = reg.start / bsalloc::page_size;
    for (std::size_t i = 0; i < reg.total_pages;) {
      unsigned k = 0;
      while (k < bsalloc::max_order && ((pfn + i) % (std::uint64_t{2} << k)) == 0 &&
             i + (std::size_t{2} << k) <= reg.total_pages)
        ++k;
      i += std::size_t{1} << k;
      ++minimal;
    }
  }
  return blocks == minimal;
}

/// Keeps the calling thread on the CPU it runs on (per-core caches), restoring the old affinity
/// at the end.
struct pin_to_this_cpu {
  cpu_set_t old;
  pin_to_this_cpu() {
    REQUIRE(::sched_getaffinity(0, sizeof old, &old) == 0);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(::sched_getcpu(), &one);
    REQUIRE(::sched_setaffinity(0, sizeof one, &one) == 0);
  }
  ~pin_to_this_cpu() { ::sched_setaffinity(0, sizeof old, &old); }
  pin_to_this_cpu(const pin_to_this_cpu&) = delete;
  pin_to_this_cpu& operator=(const pin_to_this_cpu&) = delete;
};

/// The first two CPUs this thread may run on (cross-core tests need both: CI has them).
inline std::array<int, 2> two_usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  std::array<int, 2> cpu{-1, -1};
  std::size_t found = 0;
  for (int c = 0; c < CPU_SETSIZE && found < 2; ++c)
    if (CPU_ISSET(c, &set)) cpu[found++] = c;
  REQUIRE_MESSAGE(found == 2, "this test needs two usable CPUs");
  return cpu;
}

/// Moves the calling thread to `cpu` alone; true if it now runs there.
inline bool pin_to_cpu(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return ::sched_setaffinity(0, sizeof one, &one) == 0 && ::sched_getcpu() == cpu;
}

/// The seed of a randomised test: BSALLOC_SEED when set (decimal or 0x hex), else a fresh one per
/// process. Printed at every call with `what` (the test), so that a failure can be replayed:
///   BSALLOC_SEED=<n> ./tests/test_x --test-case='<name>'
/// Derive per-thread or per-round streams from it (seed + t), never from constants.
inline std::uint64_t test_seed(const char* what) {
  static const std::uint64_t seed = [] {
    const char* env = std::getenv("BSALLOC_SEED");
    if (env != nullptr && *env != '\0') return std::uint64_t{std::strtoull(env, nullptr, 0)};
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd();
  }();
  std::printf("%s: BSALLOC_SEED=%llu\n", what, static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  return seed;
}

struct child_result {
  bool aborted = false;  // killed by SIGABRT
  int status = 0;
  std::string err;  // what the child wrote to stderr
};

/// Runs f in a forked child whose stderr goes to a pipe (death tests). Single-threaded callers.
template <class F>
child_result run_in_child(F f) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // The test framework's crash handlers must not report the expected abort.
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE}) ::signal(sig, SIG_DFL);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    f();
    ::_exit(0);  // not reached if f aborts as it should
  }
  ::close(fds[1]);
  child_result r;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;  // libFuzzer's timeout alarm, a profiler's signal
    if (n <= 0) break;
    r.err.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  REQUIRE(wait_child(pid, r.status) == pid);
  r.aborted = WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT;
  return r;
}

}  // namespace bsalloc_test

#include <exception>
#include <type_traits>

namespace bsalloc_test {

/// A forked child's exit code when its body threw (child_body).
inline constexpr int child_exception = 70;

/// The body of a forked child: runs f and _exits with its result (an int-returning f) or 0. No
/// exception may unwind out of a child into the test runner, which would go on running the
/// parent's tests there: one is reported on stderr and exits with child_exception. A child's
/// checks are its exit code, never a doctest assertion (the parent asserts on the code).
template <class F>
[[noreturn]] void child_body(F&& f) noexcept {
  int rc = 0;
  try {
    if constexpr (std::is_void_v<decltype(f())>)
      f();
    else
      rc = static_cast<int>(f());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fork child: exception: %s\n", e.what());
    rc = child_exception;
  } catch (...) {
    std::fprintf(stderr, "fork child: unknown exception\n");
    rc = child_exception;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  ::_exit(rc);
}

}  // namespace bsalloc_test

#include <shared_mutex>

namespace bsalloc_test {

/// fork() from a multi-threaded parent under a sanitizer. clang 14's AddressSanitizer allocator
/// installs no fork handlers (they came in LLVM 18): a child that calls malloc while another
/// parent thread held one of its locks at the fork hangs, whatever bsalloc does. A fork test
/// makes the sanitizer's malloc safe in its children with a fork_gate: its other threads hold the
/// gate (shared) around every stretch that may call the system malloc or free (their own
/// containers, creating and destroying resources, a checked resource's bookkeeping, first uses
/// that create caches), and the forking thread holds it (exclusive) across fork(). What runs
/// outside the gate — bsalloc's allocate and deallocate on warmed-up resources over page
/// resources — is what the fork catches mid-flight, with bsalloc's locks held. In the normal
/// build the gate is off: nothing is held, the threads fork at any point.
class fork_gate {
 public:
  /// A thread's stretch that may call the system malloc (a no-op in the normal build).
  class scope {
   public:
    explicit scope(fork_gate& g) : g_(sanitized_build ? &g : nullptr) {
      if (g_) g_->m_.lock_shared();
    }
    ~scope() {
      if (g_) g_->m_.unlock_shared();
    }
    scope(const scope&) = delete;
    scope& operator=(const scope&) = delete;

   private:
    fork_gate* g_;
  };
  /// fork() with every other thread outside its gated stretches (sanitized builds).
  pid_t fork() {
    if (!sanitized_build) {
      std::fflush(stdout);
      std::fflush(stderr);
      return ::fork();
    }
    std::unique_lock lock(m_);
    std::fflush(stdout);  // nothing buffered is written twice (the child flushes its own)
    std::fflush(stderr);
    return ::fork();  // the child's copy of m_ is never used again (it _exits)
  }

 private:
  std::shared_mutex m_;
};

/// Runs f once on each CPU this thread may run on (pinned to it in turn, then the old affinity
/// back): a resource's per-CPU core caches all exist afterwards, so that no later first use of a
/// CPU allocates one (with the system malloc) while a fork may happen.
template <class F>
void on_every_cpu(F f) {
  cpu_set_t old;
  REQUIRE(::sched_getaffinity(0, sizeof old, &old) == 0);
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &old)) continue;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    if (::sched_setaffinity(0, sizeof one, &one) != 0) continue;
    f();
  }
  ::sched_setaffinity(0, sizeof old, &old);
}

}  // namespace bsalloc_test
