// SPDX-License-Identifier: Apache-2.0
#pragma once
// Printing bsalloc's stats through fmt.
//
//   fmt::print("{}", res.stats());    // a readable table
//   fmt::print("{:j}", res.stats());  // one JSON object, for machines
//
// Every stats struct S has `std::string bsalloc::to_string(const S&)` and
// `std::string bsalloc::to_json(const S&)`; the formatter below dispatches to them.

#include <bsalloc/detail/requires_cxx20.hpp>

#include <string>
#include <string_view>

// fmt 9, 10 and 11: formatter<> with a constexpr parse() and a const format(), format_to() into
// the context's iterator and format_error are the same in all three. <fmt/format.h> is kept
// (not fmt 11's smaller <fmt/base.h>, which 9 and 10 lack) so that fmt::format works for
// whoever includes this header.
#include <fmt/format.h>

namespace bsalloc::detail {

template <class Stats>
struct stats_formatter {
  bool json = false;

  constexpr auto parse(fmt::format_parse_context& ctx) {
    auto it = ctx.begin();
    if (it != ctx.end() && *it == 'j') {
      json = true;
      ++it;
    }
    if (it != ctx.end() && *it != '}') throw fmt::format_error("bsalloc stats: use {} or {:j}");
    return it;
  }

  template <class Context>
  auto format(const Stats& s, Context& ctx) const {
    const std::string text = json ? to_json(s) : to_string(s);
    return fmt::format_to(ctx.out(), "{}", text);
  }
};

}  // namespace bsalloc::detail
