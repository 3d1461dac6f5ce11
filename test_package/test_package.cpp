// SPDX-License-Identifier: Apache-2.0
// Smallest outside consumer of the installed bsalloc: pmr containers on a slab_resource over a
// page_resource over a caller's buffer, the version macros, and the stats printed through fmt.
// Exits non-zero if anything looks wrong.
#include <bsalloc/bsalloc.hpp>

#include <cstddef>
#include <memory_resource>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#ifndef BSALLOC_CHECKED_DEFAULT
#error "BSALLOC_CHECKED_DEFAULT must come with bsalloc::bsalloc"
#endif
static_assert(BSALLOC_VERSION_MAJOR == 0 && BSALLOC_VERSION_MINOR >= 1);

int main() {
  fmt::print("bsalloc {} (checked by default: {})\n", BSALLOC_VERSION_STRING,
             BSALLOC_CHECKED_DEFAULT != 0);

  alignas(bsalloc::page_size) static std::byte arena[1024 * bsalloc::page_size];  // 4 MiB
  bsalloc::page_resource pages{std::span{arena}};
  long sum = 0;
  {
    bsalloc::slab_resource slab{&pages};
    std::pmr::vector<std::pmr::string> words(&slab);
    for (int i = 0; i < 1000; ++i) words.emplace_back(fmt::format("word number {:04} of many", i));
    for (const auto& w : words) sum += static_cast<long>(w.size());
    const auto s = slab.stats();
    fmt::print("{}\n", s);
    if (s.objects_in_use < 1000 || pages.stats().allocated_bytes == 0) {
      fmt::print(stderr, "test_package: the strings did not come from bsalloc\n");
      return 1;
    }
  }
  const auto after = pages.stats();
  fmt::print("{}\n{:j}\n", after, after);
  if (sum != 1000L * 24 || after.allocated_bytes != 0) {
    fmt::print(stderr, "test_package: sum {} pages still allocated {}\n", sum,
               after.allocated_bytes);
    return 1;
  }
  fmt::print("test_package: ok\n");
  return 0;
}
