// SPDX-License-Identifier: Apache-2.0
// Header colours (include/bsalloc/detail/slab_core.hpp): the header of a slab of 64 KiB or more
// sits at one of 16 line offsets in the slab's first KiB, chosen by the slab's address, so that
// the headers of many slabs do not all fall in one cache set. Checked: the offsets of
// neighbouring slabs differ and the header can be found back from either end (slab_at,
// slab_base); a default slab_resource's objects never overlap its headers' area and survive
// being written whole while the invariant walk (S2: the header at its colour) passes; a checked
// resource keeps its headers at the slab start (the walk checks that too).
#include <bsalloc/detail/slab_core.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include <doctest/doctest.h>

namespace {

using bsalloc::detail::slab_colour_area;
using bsalloc::detail::slab_colour_mask;
using bsalloc::detail::slab_header_offset;
using bsalloc::detail::slab_header_size;

struct owner {};
using header = bsalloc::detail::slab_header<owner>;

}  // namespace

TEST_CASE("header colours: neighbouring slabs differ, the header is found from the slab and back") {
  for (const std::size_t slab_bytes : {std::size_t{64} << 10, std::size_t{1} << 20}) {
    CAPTURE(slab_bytes);
    const std::uintptr_t mask = slab_colour_mask(slab_bytes, true);
    REQUIRE(mask != 0);
    CHECK(slab_colour_mask(slab_bytes, false) == 0);
    CHECK(slab_colour_mask(std::size_t{32} << 10, true) == 0);  // small slabs: at the start
    std::set<std::uintptr_t> offsets;
    const std::uintptr_t first = std::uintptr_t{0x7f0000000000};
    for (std::uintptr_t k = 0; k < 16; ++k) {
      const std::uintptr_t base = first + k * slab_bytes;
      const std::uintptr_t off = slab_header_offset(base, mask);
      CHECK(off % slab_header_size == 0);
      CHECK(off + slab_header_size <= slab_colour_area);
      offsets.insert(off);
    }
    CHECK(offsets.size() == 16);  // 16 neighbours, 16 colours
  }
  // A real slab: carve at a colour, find it from an address inside, go back to the start.
  constexpr std::size_t slab_bytes = std::size_t{64} << 10;
  std::vector<unsigned char> buffer(3 * slab_bytes);
  auto raw = reinterpret_cast<std::uintptr_t>(buffer.data());
  const std::uintptr_t base = (raw + slab_bytes - 1) & ~(slab_bytes - 1);
  const std::uintptr_t mask = slab_colour_mask(slab_bytes, true);
  const std::uintptr_t at = slab_header_offset(base, mask);
  header* s = bsalloc::detail::slab_carve<owner>(reinterpret_cast<void*>(base), 1, 0, 0, 100,
                                                 slab_colour_area, nullptr, 0, 64, at);
  CHECK(reinterpret_cast<std::uintptr_t>(s) == base + at);
  CHECK(bsalloc::detail::slab_base(s) == base);
  CHECK(bsalloc::detail::slab_at<header>(reinterpret_cast<void*>(base + 5000), slab_bytes, mask) ==
        s);
  CHECK(reinterpret_cast<std::uintptr_t>(s->tail) == base + slab_colour_area);
  CHECK(bsalloc::detail::slab_index(s, reinterpret_cast<void*>(base + slab_colour_area + 3 * 64),
                                    slab_colour_area, 64) == 3);
}

TEST_CASE("header colours: a slab_resource's objects stay clear of their slabs' header area") {
  constexpr std::size_t object = 64;
  constexpr std::size_t slab_bytes = std::size_t{64} << 10;  // the 64-byte class's slab
  for (const bool checked : {false, true}) {
    CAPTURE(checked);
    bsalloc::page_resource pages;
    bsalloc::slab_resource_options knobs;
    knobs.checked = checked;
    bsalloc::slab_resource res({}, knobs, &pages);
    std::map<std::uintptr_t, unsigned char> live;
    std::map<std::uintptr_t, std::uintptr_t> lowest;       // slab -> lowest object offset
    const std::size_t count = 40 * (slab_bytes / object);  // about 40 slabs
    for (std::size_t i = 0; i < count; ++i) {
      auto* p = static_cast<unsigned char*>(res.allocate(object, 16));
      const auto a = reinterpret_cast<std::uintptr_t>(p);
      const auto fill = static_cast<unsigned char>(i * 131 + 7);
      std::memset(p, fill, object);  // the whole object: a header under it would be clobbered
      REQUIRE(live.emplace(a, fill).second);
      const std::uintptr_t slab = a & ~(slab_bytes - 1);
      auto [it, fresh] = lowest.emplace(slab, a - slab);
      if (!fresh && a - slab < it->second) it->second = a - slab;
      if (i % 4099 == 0) res.check_invariants();  // S2: each header at its colour
    }
    res.check_invariants();
    REQUIRE(lowest.size() >= 32);
    for (const auto& entry : lowest) {
      const std::uintptr_t slab = entry.first, off = entry.second;
      CAPTURE(slab);
      // Checked: the header at the start (the invariant walk checks where), its bitmap and
      // records after it. Otherwise the area holds the header and no object.
      CHECK(off >= (checked ? slab_header_size : slab_colour_area));
    }
    for (const auto& [a, fill] : live) {
      const auto* p = reinterpret_cast<const unsigned char*>(a);
      REQUIRE(p[0] == fill);
      REQUIRE(p[object - 1] == fill);
      res.deallocate(reinterpret_cast<void*>(a), object, 16);
    }
    res.check_invariants();
    CHECK(res.stats().bytes_in_use == 0);
  }
}
