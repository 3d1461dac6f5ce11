// SPDX-License-Identifier: Apache-2.0
#pragma once
// Size classes: 8..64 B in steps of 8, then 8 classes per doubling up to 64 KiB (88 classes).
// One lookup, overflow-safe, for the inline and the slow paths:
//   inline  the small table (sizes up to 8 KiB, here) and the resource's wide row above it
//           (large_bins.hpp), indexed by (alignment, size) — a row per alignment 0..16, so that
//           a request with an alignment that is not a power of two finds `bad_class`, whose
//           thread-cache bin is always empty and has limit 0: such a request leaves the inline
//           path without an instruction spent on checking it. (The medium rows are the wide
//           row's shape without large bins, kept for the checks below.)
//   slow    size_class(), which checks everything (and never rounds before bounding).
#include <bsalloc/detail/config.hpp>
#include <bsalloc/slab_resource.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

namespace bsalloc::detail {

constexpr int class_count = 88;
/// The bin that never holds anything: served by the slow path, which throws for the alignment.
constexpr int bad_class = class_count;
// Sizes served by the small table (one byte per 8 bytes of request: 1025 columns a row). It
// reaches 8 KiB, not just the 8-byte classes, so that requests of mixed sizes on either side of
// 1 KiB take one predictable compare: with a bound of 1 KiB, a log-uniform mix of 8 B - 8 KiB
// mispredicted the small-or-wide branch on 0.36 of the calls (cachegrind --branch-sim).
constexpr std::size_t small_max = 8192;
constexpr std::size_t max_slab_align = 4096;  // alignment a class can give at most
constexpr std::size_t inline_max_align = 16;  // alignments the inline tables know

constexpr std::size_t class_size_of(int c) {
  if (c < 8) return std::size_t{8} * static_cast<std::size_t>(c + 1);
  const std::size_t base = std::size_t{64} << ((c - 8) / 8);
  return base + static_cast<std::size_t>((c - 8) % 8 + 1) * (base / 8);
}

constexpr int class_of(std::size_t size) {  // 1 <= size <= 64 KiB
  if (size <= 64) return static_cast<int>((size + 7) / 8) - 1;
  const int m = static_cast<int>(std::bit_width(size - 1)) - 1;  // 2^m < size <= 2^(m+1)
  const std::size_t base = std::size_t{1} << m;
  const std::size_t step = base / 8;
  return 8 + (m - 6) * 8 + static_cast<int>((size - base + step - 1) / step) - 1;
}

static_assert(class_size_of(class_count - 1) == slab_resource::max_pool_block);
static_assert(class_of(65) == 8 && class_size_of(8) == 72 && class_of(128) == 15);
static_assert(class_of(129) == 16 && class_of(std::size_t{64} << 10) == class_count - 1);

// The inline tables, a row per kind of alignment: `rows` maps each alignment 0..16 to its row
// (1, 2, 4 and 8 share one; 16 has its own; every other value points to a row of bad_class).
constexpr std::size_t small_cols = small_max / 8 + 1;                         // size / 8 rounded up
constexpr std::size_t medium_cols = slab_resource::max_pool_block / 128 + 1;  // size / 128 up

// Small sizes: every size up to 128 that is a multiple of 8 is a class, every class above is a
// multiple of 16; for alignment 16 the column is rounded up to even, so the class size is a
// multiple of 16. 0 bytes: 16 serves every alignment <= 16.
constexpr auto make_small_row(bool align16, bool bad) {
  std::array<std::uint8_t, small_cols> t{};
  for (std::size_t i = 0; i < small_cols; ++i) {
    const std::size_t col = align16 ? i + (i & 1) : i;
    t[i] = static_cast<std::uint8_t>(bad        ? bad_class
                                     : col == 0 ? class_of(16)
                                                : class_of(std::max<std::size_t>(8, col * 8)));
  }
  return t;
}
// Above 1 KiB every class size is a multiple of 128 (and so 16-aligned): size / 128 rounded up
// indexes the class exactly.
constexpr auto make_medium_row(bool bad) {
  std::array<std::uint8_t, medium_cols> t{};
  for (std::size_t i = 0; i < medium_cols; ++i)
    t[i] = static_cast<std::uint8_t>(bad ? bad_class : class_of(std::max<std::size_t>(8, i * 128)));
  return t;
}
constexpr auto small_row_8 = make_small_row(false, false);
constexpr auto small_row_16 = make_small_row(true, false);
constexpr auto small_row_bad = make_small_row(false, true);
constexpr auto medium_row_ok = make_medium_row(false);
constexpr auto medium_row_bad = make_medium_row(true);

struct inline_rows {
  std::array<const std::uint8_t*, inline_max_align + 1> small;
  std::array<const std::uint8_t*, inline_max_align + 1> medium;
};
constexpr inline_rows make_rows() {
  inline_rows r{};
  for (std::size_t a = 0; a <= inline_max_align; ++a) {
    r.small[a] = !power_of_two(a) ? small_row_bad.data()
                 : a == 16        ? small_row_16.data()
                                  : small_row_8.data();
    r.medium[a] = power_of_two(a) ? medium_row_ok.data() : medium_row_bad.data();
  }
  return r;
}
constexpr inline_rows rows = make_rows();

/// The inline lookup: alignment <= 16, bytes <= 8 KiB (small) or <= 64 KiB (medium).
constexpr int small_class(std::size_t bytes, std::size_t alignment) {
  return rows.small[alignment][(bytes + 7) >> 3];
}
constexpr int medium_class(std::size_t bytes, std::size_t alignment) {
  return rows.medium[alignment][(bytes + 127) >> 7];
}
static_assert(class_size_of(small_class(24, 16)) == 32 && class_size_of(small_class(0, 16)) == 16);
static_assert(class_size_of(small_class(24, 8)) == 24 &&
              class_size_of(small_class(1024, 16)) == 1024);
static_assert(class_size_of(small_class(0, 1)) == 16 && class_size_of(small_class(17, 1)) == 24);
static_assert(small_class(24, 3) == bad_class && small_class(24, 0) == bad_class &&
              small_class(24, 12) == bad_class && medium_class(2000, 12) == bad_class);
static_assert(class_size_of(medium_class(1025, 16)) == 1152);
static_assert(class_size_of(medium_class(4096, 8)) == 4096);
static_assert(class_size_of(small_class(1025, 16)) == 1152 &&
              class_size_of(small_class(8192, 1)) == 8192);
static_assert(class_size_of(small_class(4097, 8)) == class_size_of(class_of(4097)));

/// The class that serves (bytes, alignment), or -1: no class can (the upstream serves it) or
/// the alignment is not a power of two (the caller says which). Never overflows.
constexpr int size_class(std::size_t bytes, std::size_t alignment) noexcept {
  if (!power_of_two(alignment)) return -1;
  if (alignment <= inline_max_align && bytes <= small_max) return small_class(bytes, alignment);
  if (bytes > slab_resource::max_pool_block || alignment > max_slab_align) return -1;
  if (alignment <= inline_max_align) return class_of(bytes);  // above 8 KiB: multiples of 128
  const std::size_t size = round_up(std::max(bytes, alignment), alignment);  // <= 64 KiB + 4 KiB
  if (size > slab_resource::max_pool_block) return -1;
  int c = class_of(size);
  while (c < class_count && lowest_bit(class_size_of(c)) < alignment) ++c;
  return c < class_count ? c : -1;
}
// The small table, whole: for every size to 8 KiB, the smallest class that holds the size and
// whose size is a multiple of the alignment (0 bytes: 16, which serves every alignment). Every
// class size is a multiple of 8, so alignments 1, 2, 4 and 8 share the row of 8; 16 has its own;
// the other alignments a row of bad_class. (Checked row by row, not per alignment: clang bounds
// the steps of a constant expression.)
constexpr bool small_row_exact(const std::uint8_t* row, std::size_t a) {
  int want = 0;
  for (std::size_t bytes = 0; bytes <= small_max; ++bytes) {
    const int got = row[(bytes + 7) >> 3];
    if (bytes == 0) {
      if (got != class_of(16)) return false;
      continue;
    }
    while (class_size_of(want) < bytes || class_size_of(want) % a != 0) ++want;
    if (got != want) return false;
  }
  return true;
}
constexpr bool small_table_exact() {
  for (int c = 0; c < class_count; ++c)
    if (class_size_of(c) % 8 != 0) return false;
  for (std::size_t a = 0; a <= inline_max_align; ++a)
    if (rows.small[a] != (!power_of_two(a) ? small_row_bad.data()
                          : a == 16        ? small_row_16.data()
                                           : small_row_8.data()))
      return false;
  for (const std::uint8_t c : small_row_bad)
    if (c != bad_class) return false;
  return small_row_exact(small_row_8.data(), 8) && small_row_exact(small_row_16.data(), 16);
}
static_assert(small_table_exact());
static_assert(size_class(SIZE_MAX, 16) == -1 && size_class(SIZE_MAX - 15, 4096) == -1);
static_assert(size_class(SIZE_MAX, 1) == -1 && size_class(SIZE_MAX - 1, 8192) == -1);
static_assert(size_class(24, 3) == -1 && size_class(100, 64) == class_of(128));

}  // namespace bsalloc::detail
