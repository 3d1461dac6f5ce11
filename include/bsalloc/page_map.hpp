// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc's process page map: which page_resource, if any, manages an address.
//
// Every page that a live page_resource manages (its regions' allocatable pages, from the OS or
// from a caller) is recorded in one process-wide two-level radix table over the 47-bit user
// address space. A lookup is two dependent loads and takes no lock, so it answers for any
// pointer — "not bsalloc memory" included — in O(1): what free(p) without a size needs.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

namespace bsalloc {

class page_resource;

/// The page_resource whose region holds the page of `p`, or nullptr if no live page_resource
/// manages that page (metadata pages, other allocators' memory, nullptr). Any thread, no lock.
/// Valid while the region exists: a lookup racing the release of that region is a use after free.
page_resource* page_map_lookup(const void* p) noexcept;

}  // namespace bsalloc
