#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# object_pool's compile-time checks: each misuse below must fail to compile with its own
# static_assert message (and a correct use must compile), with g++ and with clang++.
set -euo pipefail
root="${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
build="${BSALLOC_BUILD:-$root/build}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# name | code inside a function | expected message ("" = must compile)
cases=(
  "valid|struct alignas(64) line { char b[64]; }; bsalloc::object_pool<line, bsalloc::null_lock, 4096> p; auto q = p.make(); (void)q;|"
  "slab size not a power of two|bsalloc::object_pool<int, bsalloc::yield_lock, 3000> p; (void)p;|SlabBytes must be a power of two"
  "fewer than two objects a slab|struct big { char b[3000]; }; bsalloc::object_pool<big, bsalloc::yield_lock, 4096> p; (void)p;|fewer than two objects of T fit in one slab"
  "alignment beyond the slab|struct alignas(8192) A { int x; }; bsalloc::object_pool<A, bsalloc::yield_lock, 8192> p; (void)p;|alignof(T) is more than a slab can give"
  "array type|bsalloc::object_pool<int[4]> p; (void)p;|T must be a non-const, non-volatile object type"
  "const type|bsalloc::object_pool<const int> p; (void)p;|T must be a non-const, non-volatile object type"
)

for cxx in g++ clang++; do
  command -v "$cxx" >/dev/null || { echo "FAIL $cxx is missing (scripts/setup.sh)"; exit 1; }
  for entry in "${cases[@]}"; do
    IFS='|' read -r name code expect <<<"$entry"
    src="$work/case.cpp"
    printf '#include <bsalloc/object_pool.hpp>\nvoid f() { %s }\n' "$code" >"$src"
    if out=$("$cxx" -std=c++20 -fsyntax-only -I"$root/include" -I"$build/include" "$src" 2>&1); then
      if [ -n "$expect" ]; then
        echo "FAIL [$cxx] $name: compiled, expected \"$expect\""
        failures=$((failures + 1))
      else
        echo "ok   [$cxx] $name: compiles"
      fi
    elif [ -z "$expect" ]; then
      echo "FAIL [$cxx] $name: did not compile:"
      echo "$out" | head -n 20
      failures=$((failures + 1))
    elif grep -qF "$expect" <<<"$out"; then
      echo "ok   [$cxx] $name: \"$expect\""
    else
      echo "FAIL [$cxx] $name: the message lacks \"$expect\":"
      echo "$out" | head -n 20
      failures=$((failures + 1))
    fi
  done
done
[ "$failures" -eq 0 ]
