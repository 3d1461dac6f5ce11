// SPDX-License-Identifier: Apache-2.0
// Remote frees (remote.hpp): post sends a chain to its owner core's inbox without its lock; drain,
// under the owner's lock, hands chains on to a refill, keeps them in the core's stash, or puts
// their objects back into their slabs. See state.hpp for the lock order.
#include <bit>

#include "state.hpp"

namespace bsalloc::detail {

namespace {

// Lock held. Chain m, of the core's slabs, goes back into them object by object.
void put_back_chain(slab_state& st, core_cache& core, const remote_batch& m, slab_list& returns) {
  void* p = m.head;
  for (std::uint32_t i = 0; i < m.count; ++i) {
    void* next = st.next_of(p, static_cast<int>(m.cls));
    st.put_back(core, p, static_cast<int>(m.cls), returns);
    p = next;
  }
  core.out[m.cls] -= m.count;
}

// Lock held. The chain in stash slot i goes back into its slabs.
void unstash(slab_state& st, core_cache& core, std::uint32_t i, slab_list& returns) {
  remote_stash& s = core.stash;
  const remote_batch m = s.chain[i];
  s.used &= ~(std::uint32_t{1} << i);
  s.bytes -= m.count * st.geom[m.cls].size;
  put_back_chain(st, core, m, returns);
}

// Lock held. Keeps chain m in the core's stash if its bounds allow (remote.hpp), putting the
// oldest chains back to make room; false if m may not be kept.
bool keep(slab_state& st, core_cache& core, const remote_batch& m, slab_list& returns) {
  const class_geom& g = st.geom[m.cls];
  if (!st.knobs.thread_cache || m.count > g.cache_limit) return false;
  remote_stash& s = core.stash;
  std::uint32_t same = m.count;  // objects of its class in the stash, m included
  for (std::uint32_t bits = s.used; bits; bits &= bits - 1) {
    const remote_batch& k = s.chain[static_cast<std::size_t>(std::countr_zero(bits))];
    if (k.cls == m.cls) same += k.count;
  }
  if (same > g.cache_max) return false;
  const std::size_t bytes = m.count * g.size;  // <= 128 KiB < stash_bytes_max
  while (s.used == ~std::uint32_t{0} || s.bytes + bytes > stash_bytes_max) {
    if ((s.used >> s.oldest) & 1u) unstash(st, core, s.oldest, returns);
    s.oldest = (s.oldest + 1) % stash_slots;
  }
  const auto i = static_cast<std::uint32_t>(std::countr_zero(~s.used));
  s.chain[i] = m;
  s.used |= std::uint32_t{1} << i;
  s.bytes += bytes;
  core.counters.remote_kept += m.count;
  return true;
}

}  // namespace

void take_stashed(slab_state& st, core_cache& core, handoff& h) {
  remote_stash& s = core.stash;
  for (std::uint32_t bits = s.used; bits && h.got < h.want; bits &= bits - 1) {
    const auto i = static_cast<std::uint32_t>(std::countr_zero(bits));
    const remote_batch& m = s.chain[i];
    if (static_cast<int>(m.cls) != h.c || m.count > h.most - h.got) continue;
    st.set_next(m.tail, h.chain);
    h.chain = m.head;
    h.got += m.count;
    core.counters.remote_handed_on += m.count;
    s.used &= ~(std::uint32_t{1} << i);
    s.bytes -= m.count * st.geom[m.cls].size;
  }
}

void unstash_all(slab_state& st, core_cache& core, slab_list& returns) {
  for (std::uint32_t bits = core.stash.used; bits; bits &= bits - 1)
    unstash(st, core, static_cast<std::uint32_t>(std::countr_zero(bits)), returns);
}

// Lock held. Applies every remote free posted to this core. With a hand-off, a chain of its
// class that fits goes to the refilling thread whole: its objects are free, of this core's
// slabs, counted out of them already (a slab counts the objects in thread caches and in flight
// as used), so they need no put back into their slab and no take out of it again; other chains
// go to the core's stash, whole, for the next refills of their class (remote.hpp). Not for the
// careful path or checked mode, which account for every object on its way through the slabs.
void slab_state::drain(core_cache& core, slab_list& returns, handoff* to) {
  // Read before the pops: every chain counted in it was pushed before, and is popped below.
  core.posts_drained = core.posted.load(std::memory_order_acquire);
  remote_batch m;
  while (core.inbox.pop(m)) {
    core.counters.remote_frees_received += m.count;
    core.remote_in[m.cls] += m.count;
    if (to) {
      if (static_cast<int>(m.cls) == to->c && to->got < to->want && m.count <= to->most - to->got) {
        set_next(m.tail, to->chain);
        to->chain = m.head;
        to->got += m.count;
        core.counters.remote_handed_on += m.count;
        continue;
      }
      if (keep(*this, core, m, returns)) continue;
    }
    put_back_chain(*this, core, m, returns);
  }
  for (std::size_t w = 0; w < core.overflow_mask.size(); ++w) {
    if (core.overflow_mask[w].load(std::memory_order_relaxed) == 0) continue;
    std::uint64_t bits = core.overflow_mask[w].exchange(0, std::memory_order_acquire);
    while (bits) {
      const int c = static_cast<int>(w * 64) + std::countr_zero(bits);
      bits &= bits - 1;
      void* p =
          core.overflow[static_cast<std::size_t>(c)].exchange(nullptr, std::memory_order_acquire);
      std::size_t n = 0;
      for (; p; ++n) {
        void* next = next_of(p, c);
        put_back(core, p, c, returns);
        p = next;
      }
      core.counters.remote_frees_received += n;
      core.remote_in[static_cast<std::size_t>(c)] += n;
      core.out[static_cast<std::size_t>(c)] -= static_cast<std::int64_t>(n);
    }
  }
}

// Posts a chain to another core's inbox, never taking its lock and never dropping it. The owner
// core exists: it owns a slab.
void slab_state::post(core_cache& from, std::size_t owner, int c, void* head, void* tail,
                      std::uint32_t count) {
  core_cache& to = *core_if(owner);
  from.remote_sent[static_cast<std::size_t>(c)].fetch_add(count, std::memory_order_relaxed);
  if (to.inbox.bounded_push(remote_batch{head, tail, count, static_cast<std::uint32_t>(c)})) {
    to.posted.fetch_add(1, std::memory_order_release);
    return;
  }
  to.overflows.fetch_add(1, std::memory_order_relaxed);
  auto& stack = to.overflow[static_cast<std::size_t>(c)];
  void* old = stack.load(std::memory_order_relaxed);
  do {
    set_next(tail, old);
  } while (!stack.compare_exchange_weak(old, head, std::memory_order_release,
                                        std::memory_order_relaxed));
  to.overflow_mask[static_cast<std::size_t>(c) / 64].fetch_or(
      std::uint64_t{1} << (static_cast<std::size_t>(c) % 64), std::memory_order_release);
  to.posted.fetch_add(1, std::memory_order_release);
}

// No concurrent use. A post is counted sent by its sender before it is pushed, received by the
// owner when drained: once every inbox is empty, what is still apart was dropped (release()) or
// cut off by a fork. The difference counts as received by the first core, so that stats() sees
// nothing in flight.
void slab_state::settle_remote_counts() {
  core_cache* first = nullptr;
  std::array<std::size_t, class_count> sent{}, received{};
  for (std::size_t ci = 0; ci < ncores; ++ci) {
    core_cache* cc = core_if(ci);
    if (!cc) continue;
    if (!first) first = cc;
    for (std::size_t c = 0; c < class_count; ++c) {
      sent[c] += cc->remote_sent[c].load(std::memory_order_relaxed);
      received[c] += cc->remote_in[c];
    }
  }
  for (std::size_t c = 0; c < class_count; ++c)
    if (sent[c] != received[c]) first->remote_in[c] += sent[c] - received[c];
}

}  // namespace bsalloc::detail
