// A server's memory pattern on one shared slab_resource: worker threads allocate per-request
// objects (a request with its path, headers and body, all on the slab_resource), handle them,
// and hand most of them to other workers, which check and free them — frees that land on
// another core's cache (remote frees). Prints the per-core stats and the remote-free counts.
// Exits non-zero if a request was lost, freed twice or corrupted, or memory is left in use.
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/version.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory_resource>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <sched.h>  // CPU affinity (Linux)

namespace {

constexpr int workers = 4;
constexpr int requests_per_worker = 20000;
constexpr int keep_one_in = 5;  // one request in 5 is freed by the worker that made it

struct request {
  using allocator_type = std::pmr::polymorphic_allocator<>;

  explicit request(const allocator_type& alloc) : path(alloc), headers(alloc), body(alloc) {}

  std::uint64_t id = 0;
  int origin = 0;  // worker that allocated it
  std::pmr::string path;
  std::pmr::vector<std::pmr::string> headers;
  std::pmr::vector<std::uint32_t> body;
  std::uint64_t checksum = 0;
};

std::uint64_t checksum_of(const request& r) {
  std::uint64_t h = 1469598103934665603ULL ^ r.id;
  auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
  for (char c : r.path) mix(static_cast<unsigned char>(c));
  for (const auto& header : r.headers)
    for (char c : header) mix(static_cast<unsigned char>(c));
  for (std::uint32_t v : r.body) mix(v);
  return h;
}

// Parse and "handle" a request: everything it owns is allocated from the slab_resource.
request* make_request(std::pmr::polymorphic_allocator<> alloc, std::uint64_t id, int origin) {
  auto* r = alloc.new_object<request>();
  r->id = id;
  r->origin = origin;
  r->path = fmt::format("/api/v1/users/{}/orders/{}?expand=items", id % 977, id);
  const std::size_t header_count = 3 + id % 6;
  r->headers.reserve(header_count);
  for (std::size_t i = 0; i < header_count; ++i)
    r->headers.emplace_back(fmt::format("x-header-{}: value for request {} number {}", i, id, i));
  r->body.resize(8 + (id * 37) % 250);  // 40 B to 1 KiB: several size classes
  for (std::size_t i = 0; i < r->body.size(); ++i)
    r->body[i] = static_cast<std::uint32_t>(id * 2654435761ULL + i);
  r->checksum = checksum_of(*r);
  return r;
}

// The CPUs this process may run on.
std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  return cpus;
}

// Pins the calling thread to one CPU, so workers sit on different core caches and the frees
// of each other's requests are remote for certain. Returns false if the system refuses.
bool pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

struct mailbox {
  std::mutex mutex;
  std::vector<request*> items;
};

struct counters {
  std::atomic<std::uint64_t> made{0};
  std::atomic<std::uint64_t> freed_by_origin{0};
  std::atomic<std::uint64_t> freed_by_other{0};
  std::atomic<std::uint64_t> corrupted{0};
  std::atomic<int> unpinned{0};
};

void finish(std::pmr::polymorphic_allocator<> alloc, request* r, int me, counters& c) {
  if (checksum_of(*r) != r->checksum) c.corrupted.fetch_add(1, std::memory_order_relaxed);
  (r->origin == me ? c.freed_by_origin : c.freed_by_other).fetch_add(1, std::memory_order_relaxed);
  alloc.delete_object(r);
}

void drain(std::pmr::polymorphic_allocator<> alloc, mailbox& box, int me, counters& c) {
  std::vector<request*> batch;
  {
    std::lock_guard lock(box.mutex);
    batch.swap(box.items);
  }
  for (request* r : batch) finish(alloc, r, me, c);
}

void worker(bsalloc::slab_resource& slab, std::vector<mailbox>& boxes, std::atomic<int>& producing,
            counters& c, int me, int cpu) {
  if (cpu >= 0 && !pin_to(cpu)) c.unpinned.fetch_add(1, std::memory_order_relaxed);
  std::pmr::polymorphic_allocator<> alloc(&slab);
  for (int k = 0; k < requests_per_worker; ++k) {
    const auto id = static_cast<std::uint64_t>(me) * requests_per_worker + static_cast<unsigned>(k);
    request* r = make_request(alloc, id, me);
    c.made.fetch_add(1, std::memory_order_relaxed);
    if (k % keep_one_in == 0) {
      finish(alloc, r, me, c);
    } else {  // hand it to another worker, which frees it
      const int to = (me + 1 + k % (workers - 1)) % workers;
      std::lock_guard lock(boxes[static_cast<std::size_t>(to)].mutex);
      boxes[static_cast<std::size_t>(to)].items.push_back(r);
    }
    if (k % 64 == 63) drain(alloc, boxes[static_cast<std::size_t>(me)], me, c);
  }
  producing.fetch_sub(1, std::memory_order_acq_rel);
  // Keep freeing what others hand over until nobody produces any more, then once more.
  while (producing.load(std::memory_order_acquire) != 0) {
    drain(alloc, boxes[static_cast<std::size_t>(me)], me, c);
    std::this_thread::yield();
  }
  drain(alloc, boxes[static_cast<std::size_t>(me)], me, c);
  slab.trim();  // flush this thread's cache before it goes away
}

}  // namespace

int main() {
  fmt::print("bsalloc {}: {} workers, {} requests each, {} in {} freed by another worker\n",
             BSALLOC_VERSION_STRING, workers, requests_per_worker, keep_one_in - 1, keep_one_in);
  // Workers spread over the CPUs, one core cache each (caches = one per CPU by default).
  const std::vector<int> cpus = allowed_cpus();
  const bool spread = cpus.size() >= 2;
  fmt::print("{} CPUs available: {}\n\n", cpus.size(),
             spread ? "workers pinned round-robin" : "workers not pinned, no remote free expected");

  bsalloc::slab_resource slab;  // shared by every worker; upstream: global_page_resource()
  std::vector<mailbox> boxes(workers);
  std::atomic<int> producing{workers};
  counters c;
  {
    std::vector<std::jthread> threads;
    for (int w = 0; w < workers; ++w) {
      const int cpu = spread ? cpus[static_cast<std::size_t>(w) % cpus.size()] : -1;
      threads.emplace_back(worker, std::ref(slab), std::ref(boxes), std::ref(producing),
                           std::ref(c), w, cpu);
    }
  }
  slab.trim();  // drain every core's remote frees, return the empty slabs
  const auto s = slab.stats();

  std::uint64_t allocations = 0, deallocations = 0, sent = 0, received = 0;
  for (const auto& core : s.cores) {
    allocations += core.allocations;
    deallocations += core.deallocations;
    sent += core.remote_frees_sent;
    received += core.remote_frees_received;
  }
  fmt::print("{}\n", s);
  fmt::print("per core cache:\n");
  for (std::size_t i = 0; i < s.cores.size(); ++i) {
    const auto& core = s.cores[i];
    fmt::print(
        "  core {:2}: {:8} objects out, {:8} back locally, remote frees {:8} sent {:8} received "
        "({} queue overflows), {} slabs in / {} out\n",
        i, core.allocations, core.deallocations, core.remote_frees_sent, core.remote_frees_received,
        core.remote_overflows, core.slab_refills, core.slab_returns);
  }
  fmt::print("requests: {} made, {} freed by their own worker, {} freed by another worker\n",
             c.made.load(), c.freed_by_origin.load(), c.freed_by_other.load());
  fmt::print("remote frees: {} sent, {} received\n", sent, received);

  int failures = 0;
  auto check = [&failures](bool ok, const char* what) {
    if (!ok) {
      fmt::print(stderr, "server: FAILED: {}\n", what);
      ++failures;
    }
  };
  const std::uint64_t total = std::uint64_t{workers} * requests_per_worker;
  check(c.made == total, "every request made");
  check(c.freed_by_origin + c.freed_by_other == total, "every request freed exactly once");
  check(c.freed_by_other > 0, "requests handed to other workers");
  check(c.corrupted == 0, "no request corrupted");
  check(s.objects_in_use == 0 && s.bytes_in_use == 0 && s.large_objects == 0,
        "nothing in use at the end");
  check(s.cached_objects == 0, "thread caches flushed when the workers ended");
  check(allocations >= total, "at least one slab object per request");
  check(sent == received, "every remote free drained by its owner");
  check(allocations == deallocations + received, "every object back in its slab");
  if (spread && c.unpinned == 0) check(sent > 0, "remote frees between pinned workers");
  if (failures != 0) return 1;
  fmt::print("server: ok\n");
  return 0;
}
