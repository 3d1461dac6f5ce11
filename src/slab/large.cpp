// SPDX-License-Identifier: Apache-2.0
// The large path: requests no class can serve go to the upstream, which decides (it throws what
// it throws, std::bad_alloc for sizes it cannot serve). Nothing is written into the block: its
// record (pointer, bytes, alignment) lives in large_table, out of band, so release() frees it and
// checked mode checks size and alignment.
#include <new>

#include "state.hpp"

namespace bsalloc::detail {

void* slab_state::allocate_large(std::size_t bytes, std::size_t alignment) {
  void* p = up_allocate(bytes, alignment);
  {
    std::lock_guard lock(large_lock);
    if (large.insert(large_record{reinterpret_cast<std::uintptr_t>(p), bytes, alignment})) {
      ++large_objects;
      large_bytes += bytes;
      return p;
    }
  }
  up_deallocate(p, bytes, alignment);  // no memory for its record
  throw std::bad_alloc();
}

void slab_state::deallocate_large(void* p, std::size_t bytes, std::size_t alignment) {
  large_record r;
  {
    std::lock_guard lock(large_lock);
    if (large.erase(reinterpret_cast<std::uintptr_t>(p), r)) {
      --large_objects;
      large_bytes -= r.bytes;
      bytes = r.bytes;  // what the upstream handed out, whatever the caller says
      alignment = r.alignment;
    }
  }
  // A pointer without a record is not this resource's: the upstream decides (checked mode
  // stopped it before).
  up_deallocate(p, bytes, alignment);
}

void slab_state::free_large() {
  large_table blocks;  // taken out under the lock, freed outside it; no allocation (noexcept)
  {
    std::lock_guard lock(large_lock);
    blocks.swap(large);
    large_objects = large_bytes = 0;
  }
  blocks.for_each([&](const large_record& r) {
    up_deallocate(reinterpret_cast<void*>(r.p), r.bytes, r.alignment);
  });
}

}  // namespace bsalloc::detail
