// SPDX-License-Identifier: Apache-2.0
// A server on bsalloc's engine kit. Four workers handle requests:
//   - each worker has its own frame_arena for per-request scratch (parsed path, headers, the
//     response being built), reset after every response in O(1);
//   - per-subsystem budgets over one shared slab_resource: "sessions" (a session cache) and
//     "uploads" (request bodies held while slow clients send them), plus "scratch" under the
//     workers' arenas;
//   - one out-of-memory handler, told whenever a budget refuses: for "sessions" it evicts the
//     calling worker's oldest sessions and asks for a retry; for "uploads" it logs and declines,
//     and the worker sheds load: it answers 503 and finishes its oldest upload first.
// Exits non-zero if a request is lost or answered wrongly, a budget is exceeded, nothing was
// shed or evicted (the example would prove nothing), or memory is left in use at the end.
#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/out_of_memory.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/version.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <iterator>
#include <memory_resource>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace {

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;
constexpr int workers = 4;
constexpr int requests_per_worker = 5000;
constexpr std::size_t max_uploads_in_flight = 48;  // per worker: 48 x ~72 KiB > the budget
constexpr std::size_t uploads_limit = 3 * MiB;
constexpr std::size_t sessions_limit = 1 * MiB;

using pmr_bytes = std::pmr::vector<std::uint8_t>;

/// A worker's session cache shard: only its worker touches it (no lock). The payloads are on
/// the "sessions" budget; the deque itself on the default heap, so that evicting from it never
/// runs inside one of its own allocations.
struct session_shard {
  std::deque<pmr_bytes> sessions;
  std::size_t evicted = 0;
};
thread_local session_shard* current_shard = nullptr;

std::atomic<int> oom_calls{0}, oom_logged{0};
std::mutex log_mutex;

bool on_out_of_memory(const bsalloc::out_of_memory_info& i) {
  ++oom_calls;
  if (i.name == "sessions" && current_shard != nullptr && !current_shard->sessions.empty()) {
    // Free the oldest half of this worker's sessions, then let the request be retried.
    const std::size_t n = (current_shard->sessions.size() + 1) / 2;
    for (std::size_t k = 0; k < n; ++k) current_shard->sessions.pop_front();
    current_shard->evicted += n;
    return true;
  }
  if (oom_logged.fetch_add(1) < 3) {
    const std::lock_guard lock(log_mutex);
    fmt::print("  [oom] {} '{}' refused {} KiB: shedding load\n", i.resource_type, i.name,
               i.bytes / KiB);
  }
  return false;
}

struct worker_result {
  std::size_t served = 0, shed = 0, wrong = 0, uploads_done = 0;
  std::size_t evicted = 0, arena_chunks = 0, arena_peak = 0;
  std::size_t session_retries = 0, session_failures = 0;
  bool arena_reset_ok = true;
};

std::uint64_t fnv(std::string_view s, std::uint64_t h = 1469598103934665603ull) {
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

void worker(int w, bsalloc::budget_resource& scratch, bsalloc::budget_resource& sessions,
            bsalloc::budget_resource& uploads, worker_result& out) {
  bsalloc::frame_arena_options o;
  o.name = fmt::format("request[{}]", w);
  bsalloc::frame_arena arena{&scratch, o};  // per-request scratch
  session_shard shard;
  current_shard = &shard;
  std::deque<pmr_bytes> in_flight;  // uploads still being received

  for (int n = 0; n < requests_per_worker; ++n) {
    const std::uint64_t id =
        static_cast<std::uint64_t>(w) * 1'000'000 + static_cast<std::uint64_t>(n);
    const bool upload = id % 10 < 3;
    // Parse: everything lives in the request's arena.
    std::pmr::string path{&arena};
    fmt::format_to(std::back_inserter(path), "/api/v2/{}/{}/items/{}", upload ? "upload" : "get",
                   id % 977, id);
    std::pmr::vector<std::string_view> segments{&arena};
    for (std::size_t b = 1, e; b < path.size(); b = e + 1) {
      e = path.find('/', b);
      if (e == std::string::npos) e = path.size();
      segments.emplace_back(path.data() + b, e - b);
    }
    std::pmr::string response{&arena};
    try {
      if (upload) {
        if (in_flight.size() >= max_uploads_in_flight) {
          in_flight.pop_front();  // that client finished: its body is processed and freed
          ++out.uploads_done;
        }
        const std::size_t bytes = 16 * KiB + (id * 7919 % 113) * KiB;  // 16 … 128 KiB
        in_flight.emplace_back(bytes, static_cast<std::uint8_t>(id), &uploads);
        fmt::format_to(std::back_inserter(response), "201 {} bytes for {}", bytes, segments[3]);
      } else {
        for (;;) {
          try {
            shard.sessions.emplace_back(2 * KiB + id % 2048, static_cast<std::uint8_t>(id),
                                        &sessions);
            break;
          } catch (const std::bad_alloc&) {
            // The handler evicted and the retry was refused all the same: other workers took
            // the room first. Evict more and try again; with nothing left to evict (the other
            // workers' shards hold the budget), shed this request.
            if (shard.sessions.empty()) {
              ++out.session_failures;
              throw;
            }
            const std::size_t k = (shard.sessions.size() + 1) / 2;
            for (std::size_t j = 0; j < k; ++j) shard.sessions.pop_front();
            shard.evicted += k;
            ++out.session_retries;
          }
        }
        fmt::format_to(std::back_inserter(response), "200 {} session(s) for {}",
                       shard.sessions.size(), segments[3]);
      }
      ++out.served;
    } catch (const std::bad_alloc&) {
      // Over the upload budget: shed — answer 503 and finish the oldest upload first.
      response.assign("503 busy");
      ++out.shed;
      if (!in_flight.empty()) {
        in_flight.pop_front();
        ++out.uploads_done;
      }
    }
    // Check the response against the request, then drop everything the request allocated.
    const bool ok =
        response.starts_with("503") || response.ends_with(fmt::format("for {}", id % 977));
    if (!ok || segments.size() != 6 || fnv(segments[5]) != fnv(std::to_string(id))) ++out.wrong;
    out.arena_peak = std::max(out.arena_peak, arena.used_bytes());
    arena.reset();
    if (arena.used_bytes() != 0) out.arena_reset_ok = false;
  }
  out.uploads_done += in_flight.size();
  out.evicted = shard.evicted;
  out.arena_chunks = arena.stats().chunks;
  current_shard = nullptr;
}

}  // namespace

int main() {
  fmt::print("bsalloc {}: {} workers x {} requests, per-request frame arenas, budgets\n\n",
             BSALLOC_VERSION_STRING, workers, requests_per_worker);
  int failures = 0;
  auto check = [&failures](bool ok, const std::string& what) {
    if (!ok) {
      fmt::print(stderr, "server: FAILED: {}\n", what);
      ++failures;
    }
  };

  bsalloc::slab_resource heap;  // shared by every worker and subsystem
  bsalloc::budget_resource scratch{"scratch", 4 * MiB, &heap};
  bsalloc::budget_resource sessions{"sessions", sessions_limit, &heap};
  bsalloc::budget_resource uploads{"uploads", uploads_limit, &heap};
  bsalloc::set_out_of_memory_handler(on_out_of_memory);

  std::vector<worker_result> results(workers);
  {
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w)
      threads.emplace_back(worker, w, std::ref(scratch), std::ref(sessions), std::ref(uploads),
                           std::ref(results[static_cast<std::size_t>(w)]));
    for (auto& t : threads) t.join();
  }
  bsalloc::set_out_of_memory_handler(nullptr);

  worker_result total;
  for (const auto& r : results) {
    total.served += r.served;
    total.shed += r.shed;
    total.wrong += r.wrong;
    total.evicted += r.evicted;
    total.session_retries += r.session_retries;
    total.session_failures += r.session_failures;
    total.uploads_done += r.uploads_done;
    check(r.arena_reset_ok, "every reset() emptied the request arena");
    check(r.arena_chunks <= 2,
          fmt::format("a request arena holds {} chunks (<= 2)", r.arena_chunks));
    total.arena_peak = std::max(total.arena_peak, r.arena_peak);
  }
  fmt::print("served {}, shed {} (503), sessions evicted {}, out-of-memory reports {}\n",
             total.served, total.shed, total.evicted, oom_calls.load());
  fmt::print("largest request scratch: {} bytes\n\n{}\n", total.arena_peak,
             bsalloc::budget_report());

  const std::size_t all = static_cast<std::size_t>(workers) * requests_per_worker;
  check(total.served + total.shed == all, "every request answered exactly once");
  check(total.wrong == 0, "every response matches its request");
  check(total.shed > 0, "the upload budget made the server shed load");
  check(total.evicted > 0, "the session budget made workers evict sessions");
  check(sessions.stats().refused == total.session_retries + total.session_failures,
        "every session refusal was retried after an eviction, or shed with nothing to evict");
  check(uploads.stats().refused + total.session_failures == total.shed,
        "one refusal per shed request");
  check(sessions.peak() <= sessions_limit && uploads.peak() <= uploads_limit,
        "no budget went over its limit");
  check(sessions.in_use() == 0 && uploads.in_use() == 0 && scratch.in_use() == 0,
        "every budget back at zero (the workers' memory is all freed)");
  check(oom_calls.load() >= static_cast<int>(total.shed), "the handler heard of every refusal");
  if (failures != 0) return 1;
  fmt::print("server: ok\n");
  return 0;
}
