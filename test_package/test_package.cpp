// Smallest outside consumer of the installed bsalloc: a pmr container on a page_resource over a
// caller's buffer, the version macros, and the stats printed through fmt. Exits non-zero if
// anything looks wrong.
#include <bsalloc/bsalloc.hpp>

#include <cstddef>
#include <memory_resource>
#include <span>
#include <vector>

#include <fmt/format.h>

#ifndef BSALLOC_CHECKED_DEFAULT
#error "BSALLOC_CHECKED_DEFAULT must come with bsalloc::bsalloc"
#endif
static_assert(BSALLOC_VERSION_MAJOR == 0 && BSALLOC_VERSION_MINOR >= 1);

int main() {
  fmt::print("bsalloc {} (checked by default: {})\n", BSALLOC_VERSION_STRING,
             BSALLOC_CHECKED_DEFAULT != 0);

  alignas(bsalloc::page_size) static std::byte arena[64 * bsalloc::page_size];
  bsalloc::page_resource pages{std::span{arena}};
  long sum = 0;
  {
    std::pmr::vector<int> v(&pages);
    for (int i = 0; i < 5000; ++i) v.push_back(i);
    for (int x : v) sum += x;
    const auto s = pages.stats();
    fmt::print("{}\n", s);
    if (s.allocated_bytes == 0) {
      fmt::print(stderr, "test_package: no pages allocated\n");
      return 1;
    }
  }
  const auto after = pages.stats();
  fmt::print("{:j}\n", after);
  if (sum != 5000L * 4999 / 2 || after.allocated_bytes != 0) {
    fmt::print(stderr, "test_package: sum {} allocated {}\n", sum, after.allocated_bytes);
    return 1;
  }
  fmt::print("test_package: ok\n");
  return 0;
}
