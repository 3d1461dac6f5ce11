// SPDX-License-Identifier: Apache-2.0
// Slabs and the upstream: new slabs (carved by the slab core), slabs given back. See state.hpp;
// the header, the lists and take/put back are the slab core's (detail/slab_core.hpp).
#include <new>

#include "state.hpp"

namespace bsalloc::detail {

// Calls to an upstream that is not known to be thread-safe are serialised (a
// std::pmr::monotonic_buffer_resource, an unsynchronized_pool_resource, a user's arena).
void* slab_state::up_allocate(std::size_t bytes, std::size_t alignment) {
  if (!upstream_serial) return upstream->allocate(bytes, alignment);
  std::lock_guard lock(upstream_lock);
  return upstream->allocate(bytes, alignment);
}
void slab_state::up_deallocate(void* p, std::size_t bytes, std::size_t alignment) {
  if (!upstream_serial) return upstream->deallocate(p, bytes, alignment);
  std::lock_guard lock(upstream_lock);
  upstream->deallocate(p, bytes, alignment);
}

// No lock held: the slab is not published until take_from links it.
slab* slab_state::new_slab(std::size_t core, int c) {
  const auto& g = geom[static_cast<std::size_t>(c)];
  void* mem = up_allocate(g.slab_bytes, g.slab_bytes);
  auto addr = reinterpret_cast<std::uintptr_t>(mem);
  __asm__("" : "+r"(addr));  // allocate promises the alignment: check it all the same
  if (addr & (g.slab_bytes - 1)) {
    up_deallocate(mem, g.slab_bytes, g.slab_bytes);
    throw std::bad_alloc();  // an upstream that does not honour alignment cannot serve slabs
  }
  // Coloured (slab_core.hpp), except where the hardened and memcheck checks read `tail` as the
  // end of what was handed out.
  const std::uint16_t start = careful ? 0 : slab_colour(mem, g.slab_bytes, g.capacity);
  slab* s = slab_carve(mem, slab_magic, static_cast<std::uint16_t>(c),
                       static_cast<std::uint16_t>(core), g.capacity, g.offset, this, start, g.size,
                       slab_header_offset(addr, g.colour_mask));
  if (knobs.checked) {
    try {
      init_checked(s);  // registers the slab: may throw std::bad_alloc
    } catch (...) {
      s->magic = 0;
      up_deallocate(mem, g.slab_bytes, g.slab_bytes);
      throw;
    }
  }
  if (careful) slab_born(s);
  slab_bytes_reserved.fetch_add(g.slab_bytes, std::memory_order_relaxed);
  return s;
}

std::size_t slab_state::return_slabs(slab_list& l) {
  std::size_t total = 0;
  while (slab* s = l.head) {
    l.head = s->next;
    const std::size_t bytes = geom[s->cls].slab_bytes;
    if (knobs.checked) forget_checked(s);
    if (careful) slab_dies(s);
    void* const mem = reinterpret_cast<void*>(slab_base(s));
    BSALLOC_UNPOISON(mem, bytes);
    s->magic = 0;
    slab_bytes_reserved.fetch_sub(bytes, std::memory_order_relaxed);
    up_deallocate(mem, bytes, bytes);
    total += bytes;
  }
  return total;
}

}  // namespace bsalloc::detail
