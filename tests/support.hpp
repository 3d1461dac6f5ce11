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

/// The bytes of the run that serves a large request of `bytes` (<= 256 KiB) from a
/// slab_resource's large bins (src/slab/large_bins.hpp): exact pages up to 8, then four run
/// classes per doubling. What stats() and the heap walk count for such a block.
inline std::size_t large_run_bytes(std::size_t bytes) {
  std::size_t pages = bsalloc::page_resource::pages_for(bytes);
  if (pages > 8) {
    std::size_t pow = 8;
    while (pow * 2 < pages) pow *= 2;  // pow < pages <= 2 pow
    const std::size_t step = pow / 4;
    pages = (pages + step - 1) / step * step;
  }
  return pages * bsalloc::page_size;
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
#include <utility>

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

/// Forks (this thread alone: no other may be running), runs f as the child's body (child_body)
/// and waits for it: the child's exit code, or 128 + the signal that ended it.
template <class F>
int child_exit_code(F&& f) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) child_body(std::forward<F>(f));
  int status = 0;
  REQUIRE(wait_child(pid, status) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace bsalloc_test

#include <atomic>
#include <shared_mutex>
#include <thread>

// The sanitizers' malloc hooks (both runtimes export them; g++ 12 ships no header declaring the
// installer, so it is declared here).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BSALLOC_TEST_MALLOC_HOOKS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define BSALLOC_TEST_MALLOC_HOOKS 1
#endif
#endif
#ifdef BSALLOC_TEST_MALLOC_HOOKS
#include <sanitizer/common_interface_defs.h>
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void*,
                                                                             std::size_t),
                                                         void (*free_hook)(const volatile void*));
#endif

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
///
/// The gate's premise is checked, not assumed: a thread marks what it runs outside the gate with
/// fork_gate::ungated, and under a sanitizer a system malloc or free inside such a stretch is
/// counted (ungated_calls()) and its stack printed (the first three). A test CHECKs the count,
/// so a stretch that calls malloc fails every run, not one fork child in fifty (the way a core
/// cache created by a refill after the warm-up once showed: a child hung in ASan's allocator).
class fork_gate {
 public:
  fork_gate() { install_hooks(); }

  /// A stretch of this thread that must not call the system malloc or free (checked under the
  /// sanitizers; a no-op otherwise). Given the gate that this thread holds (a scope), it lets go
  /// of it for the stretch: a worker holds its gate all the time (its start, its loop, its own
  /// containers) but in its ungated stretches, so that a fork meets it nowhere else.
  class ungated {
   public:
    /// `report`: print the stacks of the first three calls (off for a test of the check).
    explicit ungated(fork_gate* held = nullptr, bool report = true)
        : g_(sanitized_build ? held : nullptr), was_(flag()) {
      if (g_) g_->m_.unlock_shared();
      flag() = report ? 1 : 2;
    }
    ~ungated() {
      flag() = was_;
      if (g_) g_->m_.lock_shared();
    }
    ungated(const ungated&) = delete;
    ungated& operator=(const ungated&) = delete;

   private:
    fork_gate* g_;
    int was_;
  };
  /// System malloc and free calls seen inside ungated stretches, by any thread, so far.
  static std::size_t ungated_calls() { return calls().load(); }

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
  static int& flag() {  // 0: not in an ungated stretch; 1: in one; 2: in one, quiet
    static thread_local int in_ungated = 0;
    return in_ungated;
  }
  static std::atomic<std::size_t>& calls() {
    static std::atomic<std::size_t> n{0};
    return n;
  }
#ifdef BSALLOC_TEST_MALLOC_HOOKS
  static void seen(const char* what) {
    if (flag() == 0) return;
    calls().fetch_add(1);
    static std::atomic<int> printed{0};
    if (flag() == 1 && printed.fetch_add(1) < 3) {
      std::fprintf(stderr, "fork_gate: system %s inside an ungated stretch:\n", what);
      __sanitizer_print_stack_trace();
    }
  }
  static void on_malloc(const volatile void*, std::size_t) {
    seen("malloc");
  }
  static void on_free(const volatile void*) {
    seen("free");
  }
#endif
  static void install_hooks() {
#ifdef BSALLOC_TEST_MALLOC_HOOKS
    if (!sanitized_build) return;
    // Also at static initialisation (a gate at namespace scope): no doctest assertion here.
    static const bool once = __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free) != 0;
    if (!once) {
      std::fprintf(stderr, "fork_gate: the sanitizer took no malloc hooks\n");
      std::abort();
    }
#endif
  }

  std::shared_mutex m_;
};

/// Runs f once on each CPU this thread may run on, each time on a new thread pinned to that CPU:
/// a resource's per-CPU core caches all exist afterwards (a new thread's caches are empty, so its
/// first allocation refills from the core of its CPU), and no later first use of a CPU
/// allocates one (with the system malloc) while a fork may happen. (On one thread pinned in
/// turn, the second CPU's allocations came out of the thread cache the first had filled.)
template <class F>
void on_every_cpu(F f) {
  cpu_set_t allowed;
  REQUIRE(::sched_getaffinity(0, sizeof allowed, &allowed) == 0);
  int pinned = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    bool ok = false;
    std::thread([&] {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      if (::sched_setaffinity(0, sizeof one, &one) != 0) return;
      ok = true;
      f();
    }).join();
    pinned += ok ? 1 : 0;
  }
  REQUIRE(pinned > 0);
}

}  // namespace bsalloc_test
