// SPDX-License-Identifier: Apache-2.0
// slab_resource's slow path: every call the inline path (src/slab_resource.cpp) does not serve —
// a thread-cache miss or a full bin, no thread cache, checked mode, the careful path (hardened
// mode beyond its hit path, memcheck), an alignment that is not a power of two, a request no
// class serves. Classifies once with the overflow-safe size_class() and dispatches: checked mode's
// verdicts (checked.cpp), the careful path's hand-out and take-back checks (hardened.cpp), the
// thread cache (thread_cache.cpp), the core caches (core_cache.cpp), the large path (large.cpp).
#include <bsalloc/out_of_memory.hpp>
#include <bsalloc/slab_resource.hpp>

#include <algorithm>
#include <limits>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

#include "state.hpp"

namespace bsalloc {

using detail::slab_state;

namespace {

[[noreturn]] void throw_bad_alignment(std::size_t alignment) {
  throw std::invalid_argument(
      fmt::format("bsalloc: slab_resource: alignment {} is not a power of two", alignment));
}
[[noreturn]] void throw_bad_alignment(const void* res, const void* p, std::size_t bytes,
                                      std::size_t alignment) {
  throw std::invalid_argument(
      fmt::format("bsalloc: slab_resource {}: deallocate({}, {}, {}): alignment {} is not a power "
                  "of two",
                  res, p, bytes, alignment, alignment));
}

}  // namespace

void* slab_resource::allocate_slow(std::size_t bytes, std::size_t alignment) {
  return detail::allocate_or_report(
      "slab_resource", "", this, bytes, alignment,
      [&] { return allocate_attempt(bytes, alignment); }, [this] { return to_string(stats()); });
}

void* slab_resource::allocate_attempt(std::size_t bytes, std::size_t alignment) {
  slab_state& st = *state_;
  if (!detail::power_of_two(alignment)) throw_bad_alignment(alignment);
  int c = detail::size_class(bytes, alignment);
  if (c >= st.classes) c = -1;
  if (c == 0 && hardened_) c = 1;  // room for a link and a tag
  if (c < 0) {
    // A size that overflows when rounded up to its alignment fits no address space: refused
    // here (some upstreams would wrap it to a tiny block). Anything else: the upstream decides.
    if (bytes > std::numeric_limits<std::size_t>::max() - alignment) throw std::bad_alloc();
    return st.allocate_large(bytes, alignment);
  }
  void* p;
  if (detail::thread_cache* tc = detail::cache_for(st)) {
    st.tick(*tc);
    detail::bin& b = tc->bins[static_cast<std::size_t>(c)];
    b.flags |= detail::bin_active;  // in checked mode every call comes here
    if (b.head) {
      p = b.head;
      b.head = st.next_of(p, c);
      b.count.store(b.count.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
    } else {
      void* chain = nullptr;
      const std::uint32_t got =
          st.refill(c, detail::refill_want(b), chain, std::max<std::uint32_t>(1, b.limit));
      b.flags |= detail::bin_refilled;
      p = chain;
      b.head = st.next_of(chain, c);
      b.count.store(got - 1, std::memory_order_relaxed);
    }
  } else {
    void* chain = nullptr;
    st.refill(c, 1, chain, 1);
    p = chain;
  }
  if (checked_) st.mark_allocated(p, c, bytes, alignment);
  BSALLOC_UNPOISON(p, st.geom[static_cast<std::size_t>(c)].size);
  if (st.careful) st.hand_out(p, c, bytes);
  return p;
}

void slab_resource::deallocate_slow(void* p, std::size_t bytes, std::size_t alignment) {
  slab_state& st = *state_;
  if (!detail::power_of_two(alignment)) throw_bad_alignment(this, p, bytes, alignment);
  int c = detail::size_class(bytes, alignment);
  if (c >= st.classes) c = -1;
  if (c == 0 && hardened_) c = 1;
  const bool unlinked = checked_ && st.check_deallocate(p, bytes, alignment, c);
  if (unlinked) {  // a large block, checked and unlinked: bytes and alignment are its own
    st.up_deallocate(p, bytes, alignment);
    return;
  }
  if (c < 0) {
    st.deallocate_large(p, bytes, alignment);
    return;
  }
  if (st.careful) st.take_back(p, c, bytes, alignment);
  BSALLOC_POISON_FREE(p, st.geom[static_cast<std::size_t>(c)].size);
  if (detail::thread_cache* tc = detail::cache_for(st)) {
    st.tick(*tc);
    detail::bin& b = tc->bins[static_cast<std::size_t>(c)];
    b.flags |= detail::bin_active;
    st.set_next(p, b.head);
    b.head = p;
    const std::uint32_t n = b.count.load(std::memory_order_relaxed) + 1;
    if (n <= b.limit) {
      b.count.store(n, std::memory_order_relaxed);
      return;
    }
    const auto& g = st.geom[static_cast<std::size_t>(c)];
    if (b.limit < g.cache_max && (b.flags & detail::bin_refilled)) {
      // A bin that overflows and that its thread also refills (it allocates this class too)
      // grows first, so bursts of the same objects stay in the thread cache — within the
      // thread cache's growth budget. A thread that only frees keeps the small limit and hands
      // objects back promptly.
      const std::uint32_t grown = std::min<std::uint32_t>(g.cache_max, b.limit * 2u);
      const std::size_t added = (grown - b.limit) * g.size;
      if (tc->grown_bytes.load(std::memory_order_relaxed) + added <= st.knobs.thread_cache_bytes) {
        tc->grown_bytes.fetch_add(added, std::memory_order_relaxed);
        b.limit = static_cast<std::uint16_t>(grown);
        b.flags = static_cast<std::uint16_t>(b.flags & ~detail::bin_refilled);
        b.count.store(n, std::memory_order_relaxed);
        return;
      }
    }
    // Over the limit: keep the newest half, give back the older rest.
    b.count.store(n, std::memory_order_relaxed);
    st.trim_bin(*tc, c, std::max<std::uint32_t>(1, b.limit / 2u));
    return;
  }
  st.set_next(p, nullptr);  // a chain of one
  st.flush(c, p, 1);
}

}  // namespace bsalloc
