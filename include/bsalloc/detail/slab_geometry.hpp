// SPDX-License-Identifier: Apache-2.0
#pragma once
// The slab core's geometry (slab_core.hpp has the header, the lists and take / put back): the
// header's size and colours, and where a slab's objects begin and how many fit. Pure arithmetic
// on sizes and addresses, no types of the fronts.
#include <bsalloc/detail/config.hpp>

#include <cstddef>
#include <cstdint>

namespace bsalloc::detail {

/// Bytes of a slab's header (at the slab's start, or at its colour); a checked slab's bitmap
/// follows it.
inline constexpr std::size_t slab_header_size = 64;

// Header colours (slab_core.hpp's glossary): the header at one of 16 line offsets in the first KiB.
inline constexpr std::size_t slab_header_colours = 16;
inline constexpr std::size_t slab_colour_area = slab_header_colours * slab_header_size;
inline constexpr std::size_t colour_min_slab_bytes = std::size_t{64} << 10;
/// A front's colour mask for slabs of slab_bytes (slab_header_offset's): 0 when it does not
/// colour them.
constexpr std::uintptr_t slab_colour_mask(std::size_t slab_bytes, bool colours) noexcept {
  return colours && slab_bytes >= colour_min_slab_bytes ? slab_colour_area - slab_header_size : 0;
}
/// Bytes before the first object's checked data: the header, or the colour area.
constexpr std::size_t slab_header_area(std::uintptr_t colour_mask) noexcept {
  return colour_mask ? slab_colour_area : slab_header_size;
}
/// The header's offset in the slab at base: address bits 16..19 and 20..23 folded into a line
/// of the area, so that neighbouring slabs of 64 KiB, and of 1 MiB, differ; and, unlike the
/// slab number alone, not in step with bit 16 (a 1 MiB 8-way L2 indexes with it).
[[gnu::always_inline]] inline std::uintptr_t slab_header_offset(std::uintptr_t base,
                                                                std::uintptr_t mask) noexcept {
  static_assert(slab_colour_area == std::size_t{1} << 10 && slab_header_size == 64);
  return ((base >> 10) ^ (base >> 14)) & mask;
}

/// Offset of the first of n objects: the header (its area), then (checked) the bitmap and
/// record_bytes per object, rounded up to the objects' alignment.
constexpr std::size_t slab_first_object(std::size_t n, std::size_t obj_align, bool checked,
                                        std::size_t record_bytes = 0,
                                        std::size_t header_area = slab_header_size) noexcept {
  const std::size_t extra = checked ? (n + 63) / 64 * 8 + n * record_bytes : 0;
  return round_up(header_area + extra, obj_align);
}

/// The most objects of `size` that fit in slab_bytes after the header (and checked data).
constexpr std::size_t slab_capacity(std::size_t slab_bytes, std::size_t size, std::size_t obj_align,
                                    bool checked, std::size_t record_bytes = 0,
                                    std::size_t header_area = slab_header_size) noexcept {
  if (slab_bytes <= header_area) return 0;
  // An upper bound (each object costs size bytes, plus its bit and record when checked), then
  // down by the rounding of the bitmap to words and of the header to obj_align.
  std::size_t n =
      (slab_bytes - header_area) * 8 / (size * 8 + (checked ? 1 + 8 * record_bytes : 0));
  while (n > 0 && slab_first_object(n, obj_align, checked, record_bytes, header_area) + n * size >
                      slab_bytes)
    --n;
  return n;
}

}  // namespace bsalloc::detail
