// SPDX-License-Identifier: Apache-2.0
#pragma once
// Deallocation without a size (free(p)): the request a slab object was allocated with, read from
// its slab header, for a caller that knows every slab of its resource is `slab_bytes` big and
// aligned to it (the malloc layer: one slab size). Used by src/malloc/ only.
//
//   unchecked: the object's class size, with alignment 16 — every class size that a request of
//              alignment >= 16 can get is a multiple of 16, and maps back to the same class.
//   checked:   the request record (bytes, alignment as asked), so that slab_resource's checks
//              compare like with like; a pointer whose header or offset is not an object's gets
//              a request the checks reject, naming the pointer (foreign, double free).
#include <array>
#include <cstddef>
#include <cstdint>

#include "state.hpp"

namespace bsalloc::detail {

struct unsized_request {
  std::size_t bytes;
  std::size_t alignment;
};

/// class_size_of() as a table: one load on free()'s path instead of the arithmetic.
inline constexpr auto class_size_table = [] {
  std::array<std::uint32_t, class_count> t{};
  for (int c = 0; c < class_count; ++c)
    t[static_cast<std::size_t>(c)] = static_cast<std::uint32_t>(class_size_of(c));
  return t;
}();

/// Class size of the object at p (unchecked resources): one load from the header.
inline std::size_t unsized_class_bytes(const void* p, std::size_t slab_bytes,
                                       std::uintptr_t colour_mask) noexcept {
  return class_size_table[slab_at<slab>(p, slab_bytes, colour_mask)->cls];
}

/// What the object at p was allocated with, for a deallocate that the checked mode verifies.
/// `self` is the resource p is expected to belong to; a slab of another resource, a freed slab
/// or an offset inside the header gives {0, 0}: the caller reports the pointer as foreign.
inline unsized_request unsized_checked_request(const void* p, std::size_t slab_bytes,
                                               const slab_resource* self) noexcept {
  const slab* s = slab_at<slab>(p, slab_bytes);  // checked: headers at the slab start
  if (s->magic != slab_magic || s->res == nullptr || s->res->self != self ||
      s->cls >= static_cast<std::uint16_t>(s->res->classes))
    return {0, 0};
  const slab_state& st = *s->res;
  const auto& g = st.geom[s->cls];
  const auto off =
      static_cast<std::size_t>(static_cast<const char*>(p) - reinterpret_cast<const char*>(s));
  if (off < g.offset || (off - g.offset) % g.size != 0 || (off - g.offset) / g.size >= g.capacity)
    return {0, 0};
  const std::size_t i = (off - g.offset) / g.size;
  const std::uint32_t r =
      st.records(const_cast<slab*>(s))[i].load(std::memory_order_relaxed);  // see checked.cpp
  const std::size_t bytes = r & 0xffffffu;
  const std::size_t alignment = std::size_t{1} << (r >> 24);
  if (r == 0) return {g.size, 16};  // never handed out: the bitmap check reports it
  return {bytes, alignment};
}

}  // namespace bsalloc::detail
