// SPDX-License-Identifier: Apache-2.0
#pragma once
// Internal: helpers shared by the stats printers (src/stats.cpp, src/object_pool.cpp).
#include <cstddef>
#include <string>

namespace bsalloc::detail {

/// "512 B", "1.5 KiB", "64.0 MiB", ...
std::string human_bytes(std::size_t bytes);

}  // namespace bsalloc::detail
