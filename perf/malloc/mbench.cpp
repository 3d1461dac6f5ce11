// SPDX-License-Identifier: Apache-2.0
// Malloc-level workloads (perf/malloc/README.md): plain malloc/free/realloc calls, no bsalloc
// API, so that any malloc can be compared by LD_PRELOAD. One workload per process:
//   bsalloc_mbench --workload W [--smoke] [--expect PEER] [--seed N]
//   bsalloc_mbench --list | --header
//   bsalloc_mbench --spawn FILE -- PROG ARGS...   (PROG's peak RSS into FILE; see spawn())
// prints one CSV line: workload,peer,threads,ops,ns_per_op,peak_rss_kib,rss_base_kib,
// shared_line_pct
// ns_per_op is wall-clock over the timed part divided by all threads' ops; peak RSS is the
// process's VmHWM at the end (program, libraries and the allocator's own metadata), and
// rss_base_kib its VmRSS before the workload started.
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

// Every call goes through these out-of-line probes, so that callgrind can count the
// instructions of the malloc alone: --toggle-collect=mb_malloc (and mb_free, mb_realloc)
// collects inside them only (run.py --callgrind). The empty asm keeps the call a call (no tail
// jump); the cost is a call and a return, the same for every peer.
extern "C" {
[[gnu::noinline]] void* mb_malloc(std::size_t n) {
  void* p = std::malloc(n);
  asm volatile("" : : "r"(p) : "memory");
  return p;
}
[[gnu::noinline]] void mb_free(void* p) {
  std::free(p);
  asm volatile("" ::: "memory");
}
[[gnu::noinline]] void* mb_realloc(void* p, std::size_t n) {
  void* q = std::realloc(p, n);
  asm volatile("" : : "r"(q) : "memory");
  return q;
}
}

namespace {

using clk = std::chrono::steady_clock;

bool smoke = false;
std::uint64_t seed = 1;

/// splitmix64: small, fast, and the same sequence for every peer.
struct rng {
  std::uint64_t s;
  explicit rng(std::uint64_t x) : s(x * 0x9E3779B97F4A7C15ULL + 1) {}
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
  std::size_t between(std::size_t lo, std::size_t hi) { return lo + below(hi - lo + 1); }
  /// Log-uniform in [lo, hi].
  std::size_t log_uniform(std::size_t lo, std::size_t hi) {
    double l = std::log(static_cast<double>(lo)), h = std::log(static_cast<double>(hi));
    double u = static_cast<double>(next() >> 11) * 0x1.0p-53;
    auto v = static_cast<std::size_t>(std::exp(l + u * (h - l)));
    return v < lo ? lo : v > hi ? hi : v;
  }
};

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "bsalloc_mbench: %s\n", what);
  std::exit(1);
}

void* xmalloc(std::size_t n) {
  void* p = mb_malloc(n);
  if (p == nullptr) die("malloc returned null");
  return p;
}

/// Writes a tag into the first bytes (up to 64) of a block; check() reads it back.
void stamp(void* p, std::size_t n, std::uint64_t tag) {
  std::memset(p, static_cast<int>(tag & 0xff), n < 64 ? n : 64);
  if (n >= sizeof tag) std::memcpy(p, &tag, sizeof tag);
}
void check(const void* p, std::size_t n, std::uint64_t tag) {
  if (n >= sizeof tag) {
    std::uint64_t t;
    std::memcpy(&t, p, sizeof t);
    if (t != tag) die("a block's contents changed while it was live");
  } else if (*static_cast<const unsigned char*>(p) != (tag & 0xff)) {
    die("a block's contents changed while it was live");
  }
}

/// A field of /proc/self/status in KiB: VmHWM (peak RSS), VmRSS (RSS now).
long status_kib(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long kib = -1;
  std::size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::strncmp(line, field, n) == 0 && line[n] == ':')
      kib = std::strtol(line + n + 1, nullptr, 10);
  std::fclose(f);
  return kib;
}

/// Which malloc this process runs with: the file of the library that defines the malloc this
/// process calls (the preloaded one, or libc).
const char* loaded_malloc() {
  Dl_info info{};
  void* m = dlsym(RTLD_DEFAULT, "malloc");
  if (m != nullptr && dladdr(m, &info) != 0 && info.dli_fname != nullptr) {
    for (const char* name : {"bsalloc", "jemalloc", "mimalloc", "tcmalloc"})
      if (std::strstr(info.dli_fname, name) != nullptr) return name;
  }
  return "glibc";
}

/// The CPUs this process may run on, in order.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

/// Pins the calling thread to one CPU, or (cpus > 1) the first `count` allowed ones.
void pin(const std::vector<int>& cpus, std::size_t first, std::size_t count) {
  if (cpus.empty()) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (std::size_t i = 0; i < count && i < cpus.size(); ++i)
    CPU_SET(cpus[(first + i) % cpus.size()], &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);  // best effort
}

struct result {
  unsigned threads = 1;
  std::uint64_t ops = 0;
  double seconds = 0;
  double shared_line_pct = -1;  // false-sharing workloads only
};

double since(clk::time_point t0) {
  return std::chrono::duration<double>(clk::now() - t0).count();
}

// ---- larson: a server mix. Each of 4 lineages holds 1000 blocks of 8-1000 B and replaces a
// random one per op; after a round it hands its blocks to a new thread and exits, so the
// successor frees what a dead thread allocated (Larson & Krishnan's benchmark, as in
// mimalloc-bench).
struct larson_state {
  std::vector<void*> slots;
  std::vector<std::size_t> sizes;
  rng r{0};
  unsigned rounds_left = 0;
  std::uint64_t ops_per_round = 0;
};

std::atomic<unsigned> larson_done{0};

void larson_round(larson_state* s) {
  for (std::uint64_t i = 0; i < s->ops_per_round; ++i) {
    std::size_t k = s->r.below(s->slots.size());
    check(s->slots[k], s->sizes[k], s->sizes[k]);
    mb_free(s->slots[k]);
    std::size_t n = s->r.between(8, 1000);
    s->slots[k] = xmalloc(n);
    s->sizes[k] = n;
    stamp(s->slots[k], n, n);
  }
  if (--s->rounds_left > 0) {
    std::thread(larson_round, s).detach();  // the successor frees this thread's blocks
  } else {
    larson_done.fetch_add(1, std::memory_order_release);
    larson_done.notify_all();
  }
}

result larson() {
  const unsigned lineages = 4, slots = 1000, rounds = smoke ? 3 : 20;
  const std::uint64_t per_round = smoke ? 5000 : 50000;
  std::vector<larson_state> st(lineages);
  for (unsigned t = 0; t < lineages; ++t) {
    st[t].r = rng(seed * 131 + t);
    st[t].rounds_left = rounds;
    st[t].ops_per_round = per_round;
    for (unsigned k = 0; k < slots; ++k) {
      std::size_t n = st[t].r.between(8, 1000);
      st[t].slots.push_back(xmalloc(n));
      st[t].sizes.push_back(n);
      stamp(st[t].slots.back(), n, n);
    }
  }
  auto t0 = clk::now();
  for (auto& s : st) std::thread(larson_round, &s).detach();
  for (unsigned d; (d = larson_done.load(std::memory_order_acquire)) != lineages;)
    larson_done.wait(d);
  result res{lineages, std::uint64_t{lineages} * rounds * per_round, since(t0)};
  for (auto& s : st)
    for (void* p : s.slots) mb_free(p);
  return res;
}

// ---- prodcons: one thread allocates 16-256 B blocks and passes them through a ring, the
// other checks and frees them: every free is remote.
result prodcons() {
  const std::uint64_t n = smoke ? 100000 : 4000000;
  constexpr std::size_t ring = 4096;
  std::vector<std::atomic<void*>> slot(ring);
  for (auto& s : slot) s.store(nullptr);
  auto t0 = clk::now();
  std::thread consumer([&] {
    for (std::uint64_t i = 0; i < n; ++i) {
      auto& s = slot[i % ring];
      void* p;
      while ((p = s.load(std::memory_order_acquire)) == nullptr) std::this_thread::yield();
      s.store(nullptr, std::memory_order_relaxed);
      std::uint64_t len;
      std::memcpy(&len, p, sizeof len);
      check(p, len, len);
      mb_free(p);
    }
  });
  rng r(seed);
  for (std::uint64_t i = 0; i < n; ++i) {
    std::size_t len = r.between(16, 256);
    void* p = xmalloc(len);
    stamp(p, len, len);
    auto& s = slot[i % ring];
    while (s.load(std::memory_order_acquire) != nullptr) std::this_thread::yield();
    s.store(p, std::memory_order_release);
  }
  consumer.join();
  return {2, n, since(t0)};
}

// ---- false sharing. 4 threads, each pinned to a core in turn, take 16 blocks of 8 B each;
// "active": the threads allocate in turns (0,1,2,3,0,1,...); "passive": the main thread
// allocates 64 blocks in a row and hands 16 to each thread, which frees them and allocates its
// own 16. Then each thread writes its blocks, timed. shared_line_pct: of all blocks, how many
// share a 64-byte line with another thread's block.
result false_sharing(bool passive) {
  const unsigned threads = 4, per = 16;
  const std::uint64_t writes = smoke ? 1000000 : 50000000;  // per thread, over its blocks
  std::vector<void*> block(threads * per);
  std::vector<void*> given(threads * per);
  if (passive)
    for (auto& p : given) p = xmalloc(8);
  std::atomic<unsigned> turn{0}, ready{0}, go{0};
  std::vector<std::thread> ts;
  clk::time_point t0;
  const std::vector<int> cpus = allowed_cpus();
  for (unsigned t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      pin(cpus, t, 1);  // neighbours on different cores, so that a shared line costs
      for (unsigned k = 0; k < per; ++k) {
        if (passive) {
          mb_free(given[t * per + k]);
          block[t * per + k] = xmalloc(8);
        } else {
          while (turn.load(std::memory_order_acquire) != k * threads + t) std::this_thread::yield();
          block[t * per + k] = xmalloc(8);
          turn.fetch_add(1, std::memory_order_release);
        }
      }
      ready.fetch_add(1);
      while (go.load(std::memory_order_acquire) == 0) std::this_thread::yield();
      volatile std::uint64_t* mine[per];
      for (unsigned k = 0; k < per; ++k)
        mine[k] = static_cast<volatile std::uint64_t*>(block[t * per + k]);
      for (std::uint64_t i = 0; i < writes; ++i) *mine[i % per] = *mine[i % per] + i;
    });
  }
  while (ready.load() != threads) std::this_thread::yield();
  t0 = clk::now();
  go.store(1, std::memory_order_release);
  for (auto& th : ts) th.join();
  double secs = since(t0);
  unsigned shared = 0;
  for (unsigned i = 0; i < block.size(); ++i) {
    auto line = reinterpret_cast<std::uintptr_t>(block[i]) / 64;
    auto end_line = (reinterpret_cast<std::uintptr_t>(block[i]) + 7) / 64;
    for (unsigned j = 0; j < block.size(); ++j) {
      if (j / per == i / per) continue;
      auto a = reinterpret_cast<std::uintptr_t>(block[j]);
      if (a / 64 == line || a / 64 == end_line || (a + 7) / 64 == line) {
        ++shared;
        break;
      }
    }
  }
  for (void* p : block) mb_free(p);
  return {threads, std::uint64_t{threads} * writes, secs,
          100.0 * shared / static_cast<double>(block.size())};
}

// ---- many threads on 2 cores (the first 2 allowed): N threads, each a FIFO window of 1000
// blocks of 16-256 B, the oldest freed and a new one allocated per op; 4 M ops in all.
result many_threads(unsigned threads) {
  const std::uint64_t total = smoke ? 200000 : 4000000;
  const std::uint64_t per = total / threads;
  const std::size_t window = 1000;
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  const std::vector<int> cpus = allowed_cpus();
  for (unsigned t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      pin(cpus, 0, 2);  // many threads on 2 cores, whatever the machine has
      rng r(seed * 977 + t);
      std::vector<void*> ring(window);
      std::vector<std::size_t> size(window);
      for (std::size_t k = 0; k < window; ++k) {
        size[k] = r.between(16, 256);
        ring[k] = xmalloc(size[k]);
        stamp(ring[k], size[k], size[k]);
      }
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (std::uint64_t i = 0; i < per; ++i) {
        std::size_t k = i % window;
        check(ring[k], size[k], size[k]);
        mb_free(ring[k]);
        size[k] = r.between(16, 256);
        ring[k] = xmalloc(size[k]);
        stamp(ring[k], size[k], size[k]);
      }
      for (void* p : ring) mb_free(p);
    });
  }
  while (ready.load() != threads) std::this_thread::yield();
  auto t0 = clk::now();
  go.store(true, std::memory_order_release);
  for (auto& th : ts) th.join();
  return {threads, per * threads, since(t0)};
}

// ---- realloc growth: 8 buffers grown round-robin by realloc, each by 1 to size/2+16 bytes
// (appends to strings, growth of vectors), up to a cap log-uniform in 64 B-1 MiB, then freed
// and started again at 16 B. The new tail (up to 64 B) is written; the head is checked.
result realloc_growth() {
  const std::uint64_t n = smoke ? 20000 : 1000000;
  constexpr unsigned bufs = 8;
  rng r(seed);
  void* p[bufs];
  std::size_t size[bufs], cap[bufs];
  for (unsigned b = 0; b < bufs; ++b) {
    size[b] = 16;
    cap[b] = r.log_uniform(64, std::size_t{1} << 20);
    p[b] = xmalloc(16);
    stamp(p[b], 16, b + 1);
  }
  auto t0 = clk::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    unsigned b = static_cast<unsigned>(i % bufs);
    if (size[b] >= cap[b]) {
      mb_free(p[b]);
      size[b] = 16;
      cap[b] = r.log_uniform(64, std::size_t{1} << 20);
      p[b] = xmalloc(16);
      stamp(p[b], 16, b + 1);
      continue;  // not counted: the op is a realloc
    }
    std::size_t grown = size[b] + r.between(1, size[b] / 2 + 16);
    if (grown > cap[b]) grown = cap[b];
    void* q = mb_realloc(p[b], grown);
    if (q == nullptr) die("realloc returned null");
    check(q, 16, b + 1);
    std::size_t tail = grown - size[b] < 64 ? grown - size[b] : 64;
    std::memset(static_cast<char*>(q) + grown - tail, 0x5a, tail);
    p[b] = q;
    size[b] = grown;
  }
  double secs = since(t0);
  for (void* q : p) mb_free(q);
  return {1, n, secs};  // the restarts are a few per cent of n; counted as ops too
}

// ---- large blocks: 256 live blocks of 4 KiB-256 KiB (log-uniform, ~15 MiB), a random one
// replaced per op, its first 64 B written.
result large() {
  const std::uint64_t n = smoke ? 20000 : 1000000;
  constexpr std::size_t live = 256;
  rng r(seed);
  std::vector<void*> slot(live);
  std::vector<std::size_t> size(live);
  for (std::size_t k = 0; k < live; ++k) {
    size[k] = r.log_uniform(4096, 262144);
    slot[k] = xmalloc(size[k]);
    stamp(slot[k], size[k], size[k]);
  }
  auto t0 = clk::now();
  for (std::uint64_t i = 0; i < n; ++i) {
    std::size_t k = r.below(live);
    check(slot[k], size[k], size[k]);
    mb_free(slot[k]);
    size[k] = r.log_uniform(4096, 262144);
    slot[k] = xmalloc(size[k]);
    stamp(slot[k], size[k], size[k]);
  }
  double secs = since(t0);
  for (void* q : slot) mb_free(q);
  return {1, n, secs};
}

struct workload {
  const char* name;
  result (*run)();
  const char* what;
};

const workload workloads[] = {
    {"larson", larson, "4 lineages of threads replacing 8-1000 B blocks, handed on per round"},
    {"prodcons", prodcons, "one thread allocates 16-256 B, another frees: all frees remote"},
    {"false_active", [] { return false_sharing(false); }, "4 threads allocate 8 B in turns"},
    {"false_passive", [] { return false_sharing(true); }, "blocks of one thread, freed by 4"},
    {"threads16", [] { return many_threads(16); }, "16 threads, FIFO of 16-256 B each"},
    {"threads64", [] { return many_threads(64); }, "64 threads, FIFO of 16-256 B each"},
    {"realloc", realloc_growth, "8 buffers grown by realloc, 16 B to <= 1 MiB"},
    {"large", large, "256 live blocks of 4-256 KiB replaced at random"},
};

}  // namespace

/// --spawn FILE -- PROG ARGS...: runs PROG as a child and writes its peak RSS in KiB (wait4's
/// ru_maxrss) to FILE; exits as the child did. run.py measures the real programs through this:
/// a process keeps the peak RSS of the process it was forked from across exec, and a child of
/// the (large) Python runner would report at least the runner's RSS.
int spawn(const char* file, char** argv) {
  pid_t pid = fork();
  if (pid < 0) die("fork failed");
  if (pid == 0) {
    execvp(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  rusage ru{};
  if (wait4(pid, &status, 0, &ru) != pid) die("wait4 failed");
  FILE* f = std::fopen(file, "w");
  if (f == nullptr) die("cannot write the --spawn file");
  std::fprintf(f, "%ld\n", ru.ru_maxrss);
  std::fclose(f);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char** argv) {
  if (argc > 4 && std::strcmp(argv[1], "--spawn") == 0 && std::strcmp(argv[3], "--") == 0)
    return spawn(argv[2], argv + 4);
  std::string name, expect;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--list") {
      for (const auto& w : workloads) std::printf("%s\t%s\n", w.name, w.what);
      return 0;
    }
    if (a == "--header") {
      std::puts("workload,peer,threads,ops,ns_per_op,peak_rss_kib,rss_base_kib,shared_line_pct");
      return 0;
    }
    if (a == "--smoke") {
      smoke = true;
    } else if (a == "--workload" && i + 1 < argc) {
      name = argv[++i];
    } else if (a == "--expect" && i + 1 < argc) {
      expect = argv[++i];
    } else if (a == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else {
      std::fprintf(stderr,
                   "usage: %s --workload W [--smoke] [--expect PEER] [--seed N] | --list | "
                   "--header\n",
                   argv[0]);
      return 2;
    }
  }
  const char* peer = loaded_malloc();
  if (!expect.empty() && expect != peer) {
    std::fprintf(stderr, "bsalloc_mbench: expected malloc %s but runs with %s (LD_PRELOAD?)\n",
                 expect.c_str(), peer);
    return 1;
  }
  for (const auto& w : workloads) {
    if (name != w.name) continue;
    long base = status_kib("VmRSS");  // before the workload: program, libraries, allocator
    result r = w.run();
    std::printf("%s,%s,%u,%llu,%.3f,%ld,%ld,", w.name, peer, r.threads,
                static_cast<unsigned long long>(r.ops),
                r.seconds * 1e9 / static_cast<double>(r.ops), status_kib("VmHWM"), base);
    if (r.shared_line_pct >= 0) std::printf("%.1f", r.shared_line_pct);
    std::printf("\n");
    return 0;
  }
  std::fprintf(stderr, "bsalloc_mbench: no workload '%s' (--list)\n", name.c_str());
  return 2;
}
