// SPDX-License-Identifier: Apache-2.0
#pragma once
// Build-wide switches and small helpers shared by the slab layer (slab_resource, object_pool).
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <cstddef>

#ifndef BSALLOC_CHECKED_DEFAULT
#define BSALLOC_CHECKED_DEFAULT 0
#endif

// The TLS model of the slab layer's thread-local state. The build defines it ("global-dynamic"
// for a shared library that may be dlopen()ed); initial-exec is the fastest and the default.
#ifndef BSALLOC_TLS_MODEL
#define BSALLOC_TLS_MODEL "initial-exec"
#endif

// Under AddressSanitizer free objects are poisoned (all but the word that links them), so a
// use after free inside a pool is reported like one outside it.
#if defined(__SANITIZE_ADDRESS__)
#define BSALLOC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BSALLOC_ASAN 1
#endif
#endif

namespace bsalloc::detail {

constexpr bool power_of_two(std::size_t v) noexcept {
  return v != 0 && (v & (v - 1)) == 0;
}
/// v rounded up to a multiple of a; the caller makes sure it does not overflow.
constexpr std::size_t round_up(std::size_t v, std::size_t a) noexcept {
  return (v + a - 1) / a * a;
}
constexpr std::size_t lowest_bit(std::size_t v) noexcept {
  return v & (~v + 1);
}

}  // namespace bsalloc::detail
