// SPDX-License-Identifier: Apache-2.0
#pragma once
// What the fuzz targets share: the known-defect switches, the shadow model of live blocks, a
// checking upstream (counts, verifies and can fail on demand) and a forked child for the cases
// that must abort. See docs/fuzzing.md.
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory_resource>
#include <new>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <fuzzer/FuzzedDataProvider.h>

namespace bsalloc_fuzz {

// A failed check: message on stderr, then abort (libFuzzer saves the input as crash-*).
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "bsalloc fuzz: CHECK FAILED: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}
#define FUZZ_CHECK(cond, ...)                                                     \
  do {                                                                            \
    if (!(cond)) ::bsalloc_fuzz::fail(std::string(#cond " :: ") + (__VA_ARGS__)); \
  } while (0)

inline std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}
inline std::string num(std::size_t v) {
  return std::to_string(v);
}

// ---------------------------------------------------------------------------------------------
// The shadow model: every live block with its size, alignment and fill byte.
// ---------------------------------------------------------------------------------------------
struct live_block {
  std::size_t size = 0;   // bytes the user may touch
  std::size_t align = 1;  // alignment asked for
  std::uint8_t fill = 0;  // every checked byte holds fill ^ (offset / 4096)
  std::size_t tag = 0;    // target-specific (e.g. page count, class)
};

// Which bytes carry the pattern: all of a block up to 64 KiB; beyond, the first and last
// 4 KiB and one byte per page in between (fast enough for multi-megabyte page runs).
template <class F>
void for_checked_bytes(std::size_t size, F f) {
  constexpr std::size_t whole = std::size_t{64} << 10, edge = 4096;
  if (size <= whole) {
    for (std::size_t i = 0; i < size; ++i) f(i);
    return;
  }
  for (std::size_t i = 0; i < edge; ++i) f(i);
  for (std::size_t i = edge; i < size - edge; i += 4096) f(i);
  for (std::size_t i = size - edge; i < size; ++i) f(i);
}

inline std::uint8_t pattern_at(std::uint8_t fill, std::size_t i) {
  return static_cast<std::uint8_t>(fill ^ (i >> 12) ^ (i & 7));
}

class shadow {
 public:
  // Records a new block after checking it: not null, aligned, overlapping no live block. Then
  // fills it.
  void add(void* p, std::size_t size, std::size_t align, std::uint8_t fill, std::size_t tag = 0) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    FUZZ_CHECK(p != nullptr, "allocation returned nullptr");
    FUZZ_CHECK(align == 0 || a % align == 0,
               hex(p) + " is not aligned to " + num(align) + " (size " + num(size) + ")");
    const std::size_t extent = size ? size : 1;
    auto next = blocks_.lower_bound(a);
    if (next != blocks_.end())
      FUZZ_CHECK(a + extent <= next->first, "new block " + hex(p) + "+" + num(size) +
                                                " overlaps live block " +
                                                hex(reinterpret_cast<void*>(next->first)));
    if (next != blocks_.begin()) {
      auto prev = std::prev(next);
      const std::size_t pext = prev->second.size ? prev->second.size : 1;
      FUZZ_CHECK(prev->first + pext <= a, "new block " + hex(p) + " overlaps live block " +
                                              hex(reinterpret_cast<void*>(prev->first)) + "+" +
                                              num(prev->second.size));
    }
    auto* b = static_cast<std::uint8_t*>(p);
    for_checked_bytes(size, [&](std::size_t i) { b[i] = pattern_at(fill, i); });
    blocks_[a] = live_block{size, align, fill, tag};
    bytes_ += size;
  }

  // Checks the pattern of a live block (nothing wrote into it behind the user's back).
  void verify(std::uintptr_t a, const live_block& lb) const {
    const auto* b = reinterpret_cast<const std::uint8_t*>(a);
    for_checked_bytes(lb.size, [&](std::size_t i) {
      if (b[i] != pattern_at(lb.fill, i))
        fail("block " + hex(b) + "+" + num(lb.size) + ": byte " + num(i) + " overwritten (" +
             num(b[i]) + " != " + num(pattern_at(lb.fill, i)) + ")");
    });
  }

  // Removes (and verifies) the block; returns its record.
  live_block remove(std::uintptr_t a) {
    auto it = blocks_.find(a);
    FUZZ_CHECK(it != blocks_.end(), "model: no live block at " + hex(reinterpret_cast<void*>(a)));
    verify(a, it->second);
    live_block lb = it->second;
    blocks_.erase(it);
    bytes_ -= lb.size;
    return lb;
  }

  // Drops the block's record without reading it (its memory is gone: realloc moved it).
  void forget(std::uintptr_t a) {
    auto it = blocks_.find(a);
    FUZZ_CHECK(it != blocks_.end(), "model: no live block at " + hex(reinterpret_cast<void*>(a)));
    bytes_ -= it->second.size;
    blocks_.erase(it);
  }

  // The n-th live block (n taken modulo the count); blocks_ must not be empty.
  std::map<std::uintptr_t, live_block>::iterator pick(std::size_t n) {
    auto it = blocks_.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(n % blocks_.size()));
    return it;
  }

  void verify_all() const {
    for (const auto& [a, lb] : blocks_) verify(a, lb);
  }
  void forget_all() {
    blocks_.clear();
    bytes_ = 0;
  }
  bool empty() const { return blocks_.empty(); }
  std::size_t count() const { return blocks_.size(); }
  std::size_t bytes() const { return bytes_; }
  const std::map<std::uintptr_t, live_block>& blocks() const { return blocks_; }

 private:
  std::map<std::uintptr_t, live_block> blocks_;
  std::size_t bytes_ = 0;
};

// ---------------------------------------------------------------------------------------------
// An upstream that checks what its user does with it: every deallocate must give back exactly a
// live (pointer, bytes, alignment) it handed out; it counts what is live (leak check at the end)
// and fails with std::bad_alloc on the calls the input chooses.
// ---------------------------------------------------------------------------------------------
class checking_upstream : public std::pmr::memory_resource {
 public:
  explicit checking_upstream(std::pmr::memory_resource* under) : under_(under) {}
  ~checking_upstream() override = default;

  // Fail the allocate calls whose number (from 0) has its bit set in `mask` (64 calls), then
  // every call from `fail_from` on.
  std::uint64_t fail_mask = 0;
  std::size_t fail_from = SIZE_MAX;

  std::size_t live_bytes() const { return live_bytes_; }
  std::size_t live_count() const { return live_.size(); }
  std::size_t calls() const { return calls_; }
  std::size_t failures() const { return failures_; }  ///< refusals, injected or not
  bool failing() const { return fail_mask != 0 || fail_from != SIZE_MAX; }

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    const std::size_t n = calls_++;
    if ((n < 64 && (fail_mask >> n & 1)) || n >= fail_from) {
      ++failures_;
      throw std::bad_alloc();
    }
    void* p;
    try {
      p = under_->allocate(bytes, alignment);
    } catch (const std::bad_alloc&) {
      ++failures_;  // the resource underneath is full: a refusal too
      throw;
    }
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    FUZZ_CHECK(live_.count(a) == 0, "upstream handed out " + hex(p) + " twice");
    live_[a] = {bytes, alignment};
    live_bytes_ += bytes;
    return p;
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    auto it = live_.find(reinterpret_cast<std::uintptr_t>(p));
    FUZZ_CHECK(it != live_.end(),
               "upstream: deallocate(" + hex(p) + ", " + num(bytes) + ") of nothing it handed out");
    FUZZ_CHECK(it->second.first == bytes && it->second.second == alignment,
               "upstream: deallocate(" + hex(p) + ", " + num(bytes) + ", " + num(alignment) +
                   ") of a block allocated as (" + num(it->second.first) + ", " +
                   num(it->second.second) + ")");
    live_bytes_ -= bytes;
    live_.erase(it);
    under_->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }

 private:
  std::pmr::memory_resource* under_;
  std::map<std::uintptr_t, std::pair<std::size_t, std::size_t>> live_;
  std::size_t live_bytes_ = 0;
  std::size_t calls_ = 0;
  std::size_t failures_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The cases that must abort run in a forked child (single-threaded callers only).
// ---------------------------------------------------------------------------------------------
struct child_result {
  bool aborted = false;  // killed by SIGABRT
  bool exited_zero = false;
  int status = 0;
  std::string err;
};

template <class F>
child_result run_in_child(F f) {
  int fds[2];
  if (::pipe(fds) != 0) fail("pipe failed");
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) fail("fork failed");
  if (pid == 0) {
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    // No core dumps, no sanitizer report for the expected abort: plain SIGABRT.
    ::signal(SIGABRT, SIG_DFL);
    f();
    ::_exit(0);
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
  pid_t w;
  while ((w = ::waitpid(pid, &r.status, 0)) < 0 && errno == EINTR) {
  }
  if (w != pid) fail("waitpid failed");
  r.aborted = WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGABRT;
  r.exited_zero = WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0;
  return r;
}

// Moves the calling thread between CPUs, so that one thread exercises per-core caches and remote
// frees; restores the affinity it found when destroyed.
class cpu_hopper {
 public:
  cpu_hopper() { ok_ = ::sched_getaffinity(0, sizeof saved_, &saved_) == 0; }
  ~cpu_hopper() {
    if (ok_ && moved_) ::sched_setaffinity(0, sizeof saved_, &saved_);
  }
  cpu_hopper(const cpu_hopper&) = delete;
  cpu_hopper& operator=(const cpu_hopper&) = delete;
  // Pins the thread to the n-th allowed CPU (n modulo their count).
  void hop(std::size_t n) {
    if (!ok_) return;
    const int count = CPU_COUNT(&saved_);
    if (count < 2) return;
    int want = static_cast<int>(n % static_cast<std::size_t>(count));
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &saved_)) continue;
      if (want-- == 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        moved_ = ::sched_setaffinity(0, sizeof one, &one) == 0 || moved_;
        return;
      }
    }
  }

 private:
  cpu_set_t saved_{};
  bool ok_ = false;
  bool moved_ = false;
};

// The stats printed both ways, as a user would: neither may throw, JSON is one object.
template <class Stats>
void print_stats(const Stats& s) {
  const std::string text = fmt::format("{}", s), json = fmt::format("{:j}", s);
  FUZZ_CHECK(!text.empty(), "empty stats text");
  FUZZ_CHECK(json.size() >= 2 && json.front() == '{' && json.back() == '}', "stats JSON: " + json);
}

// A power of two from 2^lo to 2^hi.
inline std::size_t pow2(FuzzedDataProvider& in, unsigned lo, unsigned hi) {
  return std::size_t{1} << in.ConsumeIntegralInRange<unsigned>(lo, hi);
}

}  // namespace bsalloc_fuzz
