// SPDX-License-Identifier: Apache-2.0
#pragma once
// Hardened mode's data on the hit path (hardened_fast.hpp): each class's geometry in the form the
// combined test wants, and each thread cache's table of slabs it has validated. Held by
// slab_state (hard) and thread_cache (known); used only by hardened resources.
#include <array>
#include <cstddef>
#include <cstdint>

namespace bsalloc::detail {

// Hardened mode's hit-path geometry of one class (hardened_fast.hpp): an address x is an object
// boundary in the slab that holds address `base` iff d = x - (base & slab_mask) - offset has
// d < span and d * div_mul < div_mul, div_mul = 2^64 / size rounded up (Lemire's divisibility
// test: exact for d < 2^32, and span < 2^32). One multiply, no shift, four loads.
struct hardened_geom {
  std::uintptr_t slab_mask = 0;
  std::uint64_t offset = 0;
  std::uint64_t span = 0;
  std::uint64_t div_mul = 0;
};

// Hardened mode: slabs the owner thread has validated (page map, header) for a class, so that a
// link or a free that crosses slabs into one of them needs no page-map lookup and no header read
// (pop_far / push_far, hardened_hit.cpp). Direct-mapped by the slab's address; an entry is the
// slab's address | its class (0: empty). V1: while slab_state::slab_deaths == epoch, every entry
// names a live slab of this resource and that class — a slab going back upstream bumps slab_deaths
// first, and the owner empties the table on its next look (hardened_hit.cpp).
constexpr int known_slab_bits = 5;
struct known_slabs {
  std::uint64_t epoch = 0;
  std::array<std::uintptr_t, std::size_t{1} << known_slab_bits> slab{};
};
/// The entry of known_slabs for the slab at address s (a multiplicative hash: slabs are adjacent
/// and aligned to their size, their low 12+ bits are 0).
[[gnu::always_inline]] inline std::size_t known_slot(std::uintptr_t s) noexcept {
  return static_cast<std::size_t>((s * 0x9e3779b97f4a7c15u) >> (64 - known_slab_bits));
}

}  // namespace bsalloc::detail
