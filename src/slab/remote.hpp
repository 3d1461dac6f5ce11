// SPDX-License-Identifier: Apache-2.0
#pragma once
// Remote frees: objects freed on a CPU other than their slab's owner core travel back to it as
// chains, linked through the objects themselves (link_set / link_get, state.hpp), never taking
// the owner's lock on the way (core_cache.cpp: flush groups a chain's runs by owner, post sends
// each part, drain applies what arrived under the owner's lock).
//
//   post   a chain of one class goes into the owner's inbox (a fixed-capacity lock-free queue of
//          remote_batch messages); when that is full, onto the owner's overflow stack of that
//          class (a Treiber stack of objects) and its bit in overflow_mask.
//   drain  the owner, holding its lock, empties both: a chain goes whole to the thread refilling
//          its class (handoff), or into the core's stash for the next refills of its class, or
//          each object goes back into its slab. The refill and flush paths drain only when the
//          core's `posted` count moved since its last drain (drain_posted).
//
// core_remote's fields are atomics, written by any thread; the owner reads them under its lock.
// The stash is the owner's, under its lock.
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include <boost/lockfree/queue.hpp>

#include "size_classes.hpp"

namespace bsalloc::detail {

struct remote_batch {  // a chain of `count` objects of one class, linked through their first word
  void* head;
  void* tail;  // the chain's last object (its link is null): a refill splices the whole chain
  std::uint32_t count;
  std::uint32_t cls;
};

// A refill's hand-off (drain): chains of class `c` posted to the core go to the refilling thread
// whole, while they fit in `room` objects, instead of one put back and one take per object.
// Chains are taken while fewer than `want` objects are on hand and the chain fits in `most`.
struct handoff {
  int c;
  std::uint32_t want;
  std::uint32_t most;
  void* chain;
  std::uint32_t got;
};

// A core cache's part in remote frees (core_cache derives from it): what other cores' threads
// posted to it, drained under its lock, and what its own threads posted elsewhere.
struct core_remote {
  explicit core_remote(std::size_t capacity) : inbox(capacity) {}
  boost::lockfree::queue<remote_batch, boost::lockfree::fixed_sized<true>> inbox;
  std::array<std::atomic<void*>, class_count> overflow{};  // Treiber stacks of objects
  std::array<std::atomic<std::uint64_t>, 2> overflow_mask{};
  std::atomic<std::size_t> overflows{0};
  // Chains posted, counted after each one is pushed (release). A drain reads it before it pops
  // (drain_posted skips the pops when it has not moved since the last drain: the refill and
  // flush paths of a core nobody posts to). Pushed but not yet counted is as not yet pushed.
  std::atomic<std::uint64_t> posted{0};
  // Per class, objects this core's threads posted elsewhere (only they write it). With the
  // owners' remote_in (under their locks): sent - received, summed over cores, is what is in
  // flight (stats()).
  alignas(64) std::array<std::atomic<std::size_t>, class_count> remote_sent{};
};

// A core's stash (under its lock): drained chains that no refill in progress could take, kept
// whole for the next refills of their class (taken before any slab is touched) instead of being
// put back object by object now and taken out again then. Their objects are free, of this core's
// slabs, and still counted out of them (`used`, core_cache::out): S3 counts them with the
// objects out; stats() and the heap walk count them as free. Bounds: stash_slots chains, each of
// at most its class's cache_limit objects (any refill of an empty bin takes it whole), at most
// cache_max objects of one class, stash_bytes_max bytes in all; a chain that finds no room puts
// back the oldest first. Checked mode, the careful path (they account for every object on its
// way through its slab) and resources without thread caches (a refill takes one object) keep no
// stash; trim() puts it all back.
constexpr std::size_t stash_slots = 32;
constexpr std::size_t stash_bytes_max = std::size_t{512} << 10;
struct remote_stash {
  std::array<remote_batch, stash_slots> chain{};
  std::uint32_t used = 0;    // bit i: chain[i] holds a chain
  std::uint32_t oldest = 0;  // the slot a chain that finds no room puts back first (round robin)
  std::size_t bytes = 0;
};

struct slab_state;
struct core_cache;
struct slab_list;
/// Lock held. A refill takes stashed chains of class h.c whole (counted in h), before anything
/// else, while it has fewer than h.want objects and a chain fits in h.most.
void take_stashed(slab_state& st, core_cache& core, handoff& h);
/// Lock held. Every stashed object goes back into its slab (trim()).
void unstash_all(slab_state& st, core_cache& core, slab_list& returns);

}  // namespace bsalloc::detail
