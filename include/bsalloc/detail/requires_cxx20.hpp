// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc's public headers need C++20 (concepts, <span>, <bit>, std::pmr). Included first by
// every public header so that a consumer compiling as C++17 or older reads one clear error
// instead of a cascade from inside the headers. g++ 10 reports 201709L for -std=c++20, hence the
// test against C++17's value rather than 202002L.
#if !defined(__cplusplus) || (__cplusplus <= 201703L && !(defined(_MSVC_LANG) && _MSVC_LANG > 201703L))
#error "bsalloc requires C++20 or newer: compile with -std=c++20 (the bsalloc::bsalloc CMake target and bsalloc.pc ask for it)"
#endif
