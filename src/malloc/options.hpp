// SPDX-License-Identifier: Apache-2.0
#pragma once
// The process allocator's environment options (docs/malloc.md), read once when it starts.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

namespace bsalloc::detail::mx {

struct options {
  page_resource_options slab_pages;
  page_resource_options large_pages;
  slab_resource_options knobs;
  int stats = 0;  // BSALLOC_STATS: 0 off, 1 table, 2 JSON
};

/// BSALLOC_RETAIN_BYTES, BSALLOC_PURGE_MS, BSALLOC_CHECKED, BSALLOC_STATS. getenv only: safe
/// before any static constructor ran, allocates nothing. A malformed value is reported on
/// stderr and ignored.
options read_options() noexcept;

}  // namespace bsalloc::detail::mx
