// SPDX-License-Identifier: Apache-2.0
// page_resource under std::pmr containers, then its stats.
#include <bsalloc/bsalloc.hpp>

#include <memory_resource>
#include <string>
#include <vector>

#include <fmt/format.h>

int main() {
  bsalloc::page_resource pages;  // grows from the OS on demand
  {
    std::pmr::vector<std::pmr::string> names(&pages);
    for (int i = 0; i < 1000; ++i)
      names.emplace_back(fmt::format("a string long enough to leave SSO behind #{}", i));
    fmt::print("{} strings on page_resource\n{}\n", names.size(), pages.stats());
  }
  pages.trim();
  fmt::print("after the vector is gone and trim():\n{}", pages.stats());
}
