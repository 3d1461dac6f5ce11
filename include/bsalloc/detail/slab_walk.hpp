// SPDX-License-Identifier: Apache-2.0
#pragma once
// The slab core's invariant walk (S1, S2, S4 and, in checked mode, S5 of detail/slab_core.hpp):
// both fronts' check_invariants() walk their lists with it.
#include <bsalloc/detail/slab_core.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bsalloc::detail {

// -- the invariant walk ---------------------------------------------------------------------------

struct slab_walk_geom {
  std::size_t size = 0;
  std::size_t first_object = 0;
  std::size_t slab_bytes = 0;
  std::uintptr_t colour_mask = 0;  // the front's header colours for these slabs (slab_core.hpp)
  std::uint32_t capacity = 0;
  std::size_t max_empty = 0;
  bool checked = false;     // S5 applies
  bool exact_bits = false;  // S5: no thread cache, set bits == used
};

/// Verifies S1, S2, S4 and S5 for every slab of l (lock held, or no concurrent use).
/// header_ok(s): the front's check of the header; next_of(p, s): a free object's link;
/// fail(what, s) throws (or aborts). Returns the sum of used (for S3).
template <class Owner, class HeaderOk, class NextOf, class Fail>
std::size_t slab_check_lists(const slab_lists<Owner>& l, const slab_walk_geom& g,
                             HeaderOk&& header_ok, NextOf&& next_of, Fail&& fail) {
  using slab = slab_header<Owner>;
  std::size_t used = 0;
  std::uint32_t count = 0, empties = 0;
  std::vector<bool> is_free(g.capacity);
  for (std::uint8_t which : {list_partial, list_full, list_empty}) {
    const slab* prev = nullptr;
    for (slab* s = l.head(which); s; prev = s, s = s->next) {
      ++count;
      const auto a = reinterpret_cast<std::uintptr_t>(s);
      const std::uintptr_t base = a & ~(g.slab_bytes - 1);
      if (a != base + slab_header_offset(base, g.colour_mask) || slab_base(s) != base)
        fail("S2: header not at its colour in a slab aligned to its size", s);
      if (!header_ok(s)) fail("S2: foreign slab on a list (bad header)", s);
      if (s->prev != prev) fail("S2: list back link broken", s);
      if (s->list != which) fail("S2: slab tagged with another list", s);
      if (s->capacity != g.capacity || s->untouched > g.capacity ||
          (s->start != 0 && s->start >= g.capacity))
        fail("S1: capacity, untouched or colour wrong", s);
      std::size_t at = std::size_t{s->start} + (g.capacity - s->untouched);
      if (s->start != 0 && at >= g.capacity) at -= g.capacity;
      if (s->tail != reinterpret_cast<char*>(base + g.first_object + at * g.size))
        fail("S1: untouched tail wrong", s);
      std::uint32_t free_len = 0;
      for (void* p = s->free; p; p = next_of(p, s)) {
        const std::size_t i = slab_handed_index(s, p, g.first_object, g.size);
        if (i >= g.capacity)
          fail("S1: free list holds something not a touched object of the slab", s);
        if (is_free[i]) fail("S1: an object twice on the free list", s);
        is_free[i] = true;
        ++free_len;
      }
      if (s->used + free_len + s->untouched != s->capacity)
        fail("S1: used + free + untouched != capacity", s);
      if (g.checked) {
        std::size_t bits = 0;
        for (std::size_t i = 0; i < g.capacity; ++i) {
          if (!slab_bit(s, i)) continue;
          ++bits;
          if (is_free[i] || !slab_handed_out(s, i))
            fail("S5: an object free or untouched is marked allocated", s);
        }
        if (g.exact_bits ? bits != s->used : bits > s->used)
          fail("S5: allocation bits do not match used", s);
      }
      for (void* p = s->free; p; p = next_of(p, s))
        is_free[slab_index(s, p, g.first_object, g.size)] = false;
      if ((which == list_full) != slab_exhausted(s)) fail("S2: full list iff no free object", s);
      if ((which == list_empty) != (s->used == 0)) fail("S2: empty list iff nothing used", s);
      used += s->used;
      if (which == list_empty) ++empties;
    }
  }
  if (count != l.slabs) fail("S2: slab count wrong", nullptr);
  if (empties != l.empty_count) fail("S2: empty count wrong", nullptr);
  if (empties > g.max_empty) fail("S4: too many empty slabs", nullptr);
  return used;
}

}  // namespace bsalloc::detail
