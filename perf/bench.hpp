// SPDX-License-Identifier: Apache-2.0
#pragma once
// The benchmark program's parts: peers (the allocators measured, each behind one
// std::pmr::memory_resource*) and workloads (what is measured). bsalloc_bench.cpp runs one
// (peer, workload) pair per process and prints one CSV line; perf/run.py drives it.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

/// How a peer is reached. Every workload goes through resource(), except `objects`, which
/// uses each peer's typed interface: new/delete for the malloc family, polymorphic_allocator
/// for the pmr resources, object_pool<T>::make for the object pool.
enum class peer_kind { malloc_family, pmr, object_pool, baseline };

/// One allocator under test. Created once per process, used by every thread of the workload.
class peer {
 public:
  virtual ~peer() = default;
  virtual std::pmr::memory_resource* resource() = 0;
  virtual peer_kind kind() const = 0;
  /// Gives free memory back as far as the allocator can (run after everything was freed).
  virtual void trim() = 0;
  /// The allocator's own statistics, readable (bsalloc peers), or empty.
  virtual std::string stats() { return {}; }
};

/// A peer by name, or an error message in `error` (unknown name, or the malloc family member
/// asked for is not the malloc this process runs with: check LD_PRELOAD).
std::unique_ptr<peer> make_peer(std::string_view name, std::string& error);
/// Every peer name this build knows, in report order.
std::vector<std::string> peer_names();

/// Small, fast, deterministic random numbers (xorshift64*), the same stream for every peer.
struct rng {
  std::uint64_t s;
  explicit rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  std::uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
};

struct params {
  std::size_t ops = 0;  ///< operations to run (the driver fills in the default)
  bool quick = false;   ///< small working sets (smoke test)
  std::uint64_t seed = 1;
  std::size_t size = 64;  ///< fastpath: request size
  /// Alignment of the untyped workloads' requests: memory_resource::allocate's default, as
  /// malloc guarantees. Typed ones (containers, objects) use alignof(T).
  std::size_t align = alignof(std::max_align_t);
};

struct workload_result {
  std::size_t ops = 0;
  unsigned threads = 1;
  double seconds = 0;                    ///< timed part only
  std::size_t peak_requested_bytes = 0;  ///< most bytes live at once, where tracked (else 0)
  std::uint64_t checksum = 0;            ///< keeps the compiler from dropping the work
};

struct workload {
  const char* name;
  const char* group;    ///< chart group
  bool small;           ///< a small-object workload (the goals' "every small-object workload")
  bool multi_threaded;  ///< excludes single-thread-only peers
  bool page_sized;      ///< includes the page_resource peer
  std::size_t default_ops;
  workload_result (*run)(peer&, const params&);
};

std::span<const workload> workloads();
/// Whether `peer_name` takes part in `w` (the matrix run.py drives).
bool applies(const workload& w, std::string_view peer_name);

}  // namespace bench
