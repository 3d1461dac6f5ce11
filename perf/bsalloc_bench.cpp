// SPDX-License-Identifier: Apache-2.0
// bsalloc_bench: runs one workload through one peer and prints one CSV line.
//
//   bsalloc_bench --peer NAME --workload NAME [--ops N] [--quick] [--seed S] [--size BYTES]
//   [--align A] bsalloc_bench --list      # the matrix: "workload group small|other peer..." per
//   line bsalloc_bench --header    # the CSV header
//
// The malloc family (glibc, jemalloc, mimalloc, tcmalloc) is chosen by LD_PRELOAD; the program
// refuses a peer name that does not match the malloc it runs with. perf/run.py drives it.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>

#include "bench.hpp"

namespace {

constexpr const char* header =
    "peer,workload,group,threads,ops,seconds,ns_per_op,rss_base_kib,peak_rss_kib,"
    "rss_freed_kib,rss_trimmed_kib,peak_requested_kib,footprint,checksum";

/// A "Vm...:" line of /proc/self/status, in KiB (0 if unreadable).
std::size_t status_kib(std::string_view key) {
  std::ifstream in{"/proc/self/status"};
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(key) && line.size() > key.size() && line[key.size()] == ':') {
      return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10);
    }
  }
  return 0;
}

/// Resets VmHWM (the peak RSS) to the current RSS (Linux: "5" > /proc/self/clear_refs).
void reset_peak_rss() {
  int fd = ::open("/proc/self/clear_refs", O_WRONLY);
  if (fd < 0) return;
  [[maybe_unused]] ssize_t n = ::write(fd, "5", 1);
  ::close(fd);
}

int usage(const char* why) {
  std::fprintf(stderr,
               "bsalloc_bench: %s\nusage: bsalloc_bench --peer NAME --workload NAME [--ops N] "
               "[--quick] [--seed S] [--size BYTES] [--align A] [--stats] | --list | --header\n",
               why);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string peer_name, workload_name;
  bench::params pa;
  bool stats = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--list") {
      for (const auto& w : bench::workloads()) {
        if (std::string_view{w.name} == "fastpath") continue;  // callgrind.sh only
        std::printf("%s %s %s", w.name, w.group, w.small ? "small" : "other");
        for (const auto& p : bench::peer_names()) {
          if (bench::applies(w, p)) std::printf(" %s", p.c_str());
        }
        std::printf("\n");
      }
      return 0;
    } else if (a == "--header") {
      std::printf("%s\n", header);
      return 0;
    } else if (a == "--stats") {
      stats = true;
    } else if (a == "--quick") {
      pa.quick = true;
    } else if (a == "--peer" && (v = value())) {
      peer_name = v;
    } else if (a == "--workload" && (v = value())) {
      workload_name = v;
    } else if (a == "--ops" && (v = value())) {
      pa.ops = std::strtoull(v, nullptr, 10);
    } else if (a == "--seed" && (v = value())) {
      pa.seed = std::strtoull(v, nullptr, 10);
    } else if (a == "--align" && (v = value())) {
      pa.align = std::strtoull(v, nullptr, 10);
    } else if (a == "--size" && (v = value())) {
      pa.size = std::strtoull(v, nullptr, 10);
    } else {
      return usage(("bad argument " + std::string(a)).c_str());
    }
  }
  const bench::workload* w = nullptr;
  for (const auto& x : bench::workloads()) {
    if (workload_name == x.name) w = &x;
  }
  if (w == nullptr) return usage(("unknown workload '" + workload_name + "'").c_str());
  if (!bench::applies(*w, peer_name)) {
    return usage(("peer " + peer_name + " does not take part in " + workload_name).c_str());
  }
  if (pa.ops == 0)
    pa.ops = pa.quick ? std::max<std::size_t>(w->default_ops / 2000, 1000) : w->default_ops;

  std::string error;
  auto pe = bench::make_peer(peer_name, error);
  if (!pe) return usage(error.c_str());

  const std::size_t base = status_kib("VmRSS");
  reset_peak_rss();
  const bench::workload_result r = w->run(*pe, pa);
  const std::size_t peak = status_kib("VmHWM");
  const std::size_t freed = status_kib("VmRSS");
  if (stats) std::fprintf(stderr, "after the workload:\n%s\n", pe->stats().c_str());
  pe->trim();
  if (stats) std::fprintf(stderr, "after trim:\n%s\n", pe->stats().c_str());
  const std::size_t trimmed = status_kib("VmRSS");

  const std::size_t requested_kib = r.peak_requested_bytes / 1024;
  char footprint[32] = "";
  if (requested_kib > 0) {
    std::snprintf(
        footprint, sizeof footprint, "%.3f",
        static_cast<double>(peak > base ? peak - base : 0) / static_cast<double>(requested_kib));
  }
  std::printf("%s,%s,%s,%u,%zu,%.6f,%.3f,%zu,%zu,%zu,%zu,%zu,%s,%llu\n", peer_name.c_str(), w->name,
              w->group, r.threads, r.ops, r.seconds,
              r.ops ? r.seconds * 1e9 / static_cast<double>(r.ops) : 0.0, base, peak, freed,
              trimmed, requested_kib, footprint, static_cast<unsigned long long>(r.checksum));
  return 0;
}
