// SPDX-License-Identifier: Apache-2.0
// The remote-free inbox of a core cache (src/slab/state.hpp: a Boost.Lockfree queue), driven
// hard and directly: several threads post at once while the owner drains under the core's lock,
// as flush() and drain() do. Through slab_resource the same traffic needs many threads freeing
// into one core at the same moment, which a test reaches only now and then (stop 17's CI failed
// on such a moment: a race report inside the queue's node freelist). Here every run makes the
// queue recycle its nodes thousands of times under contention, so that under ThreadSanitizer
// every race pattern of the queue is met on every run: each is either ours (and fails the test)
// or a documented benign one of the library's, silenced by name in tests/tsan.supp.
// In every build it checks the queue's contract the slab layer relies on: every batch posted is
// received exactly once, intact, and each sender's batches arrive in the order it posted them.
#include "../src/slab/state.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace {

constexpr unsigned senders = 4;
constexpr std::uint32_t per_sender = 20'000;

// A batch's fields carry who sent it and its sequence number; the head is never dereferenced.
bsalloc::detail::remote_batch make_batch(unsigned sender, std::uint32_t seq) {
  auto tag = (static_cast<std::uintptr_t>(sender) << 32) | seq;
  return {reinterpret_cast<void*>(tag), reinterpret_cast<void*>(tag + 1), seq, sender};
}

}  // namespace

TEST_CASE(
    "remote inbox: batches posted by 4 threads at once arrive exactly once, in order per sender") {
  // A small queue, so that it fills and its nodes are recycled constantly.
  bsalloc::detail::core_cache core(64);
  std::vector<std::uint32_t> next_seq(senders, 0);  // owner: the next sequence expected per sender
  std::uint64_t received = 0;
  std::uint64_t bad = 0;
  std::atomic<unsigned> done{0};

  auto drain = [&] {  // as slab_state::drain: under the core's lock
    std::lock_guard lock(core.lock);
    bsalloc::detail::remote_batch m;
    while (core.inbox.pop(m)) {
      auto tag = reinterpret_cast<std::uintptr_t>(m.head);
      auto sender = static_cast<unsigned>(tag >> 32);
      auto seq = static_cast<std::uint32_t>(tag);
      if (sender >= senders || m.cls != sender || m.count != seq || next_seq[sender] != seq ||
          reinterpret_cast<std::uintptr_t>(m.tail) != tag + 1) {
        ++bad;
        continue;
      }
      ++next_seq[sender];
      ++received;
    }
  };

  std::vector<std::thread> threads;
  for (unsigned t = 0; t < senders; ++t) {
    threads.emplace_back([&, t] {
      for (std::uint32_t i = 0; i < per_sender; ++i) {
        // As post(): never blocks on the owner. When the inbox is full the real sender falls
        // back to the overflow stacks; here it drains as an owner would, then posts again.
        while (!core.inbox.bounded_push(make_batch(t, i))) drain();
      }
      done.fetch_add(1);
    });
  }
  while (done.load() < senders) drain();  // the owner, draining while they post
  for (auto& th : threads) th.join();
  drain();

  CHECK(bad == 0);
  CHECK(received == std::uint64_t{senders} * per_sender);
  for (unsigned t = 0; t < senders; ++t) CHECK(next_seq[t] == per_sender);
  bsalloc::detail::remote_batch m;
  CHECK_FALSE(core.inbox.pop(m));
}
