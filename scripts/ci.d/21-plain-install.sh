#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI step: the documented install, as a packager runs it, with no test dependency present:
#   cmake -S . -B b && cmake --build b && cmake --install b
# doctest is made unfindable (CMAKE_DISABLE_FIND_PACKAGE_doctest), no option is given, and the
# compiler may warn (nothing is -Werror by default). Checks that neither tests nor examples were
# configured and that the library, headers, package files and licence were installed.
# Env: BSALLOC_ROOT (source tree), BSALLOC_OUT (scratch dir). Exits non-zero on any failure.
set -euo pipefail
root=${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
out="${BSALLOC_OUT:-$root/build-ci}/plain-install"
rm -rf "$out"
mkdir -p "$out"
fail() {
  echo "[plain-install] FAILED: $*" >&2
  exit 1
}
run() {  # log name, command...
  local log="$out/$1.log"
  shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; fail "$*"; }
}

run configure cmake -S "$root" -B "$out/b" -DCMAKE_DISABLE_FIND_PACKAGE_doctest=ON \
  -DCMAKE_INSTALL_PREFIX="$out/prefix"
run build cmake --build "$out/b" -j "$(nproc)"
run install cmake --install "$out/b"
cache="$out/b/CMakeCache.txt"
for v in BSALLOC_BUILD_TESTS BSALLOC_BUILD_EXAMPLES BSALLOC_WERROR; do
  grep -q "^$v:BOOL=OFF$" "$cache" || fail "$v is not OFF by default"
done
[ ! -e "$out/b/tests" ] && [ ! -e "$out/b/examples" ] || fail "tests or examples were configured"
if grep -q -- "-Werror" "$out/b/compile_commands.json"; then fail "-Werror is on by default"; fi
prefix="$out/prefix"
libdir=$(sed -nE 's/^CMAKE_INSTALL_LIBDIR:PATH=(.*)$/\1/p' "$cache")
for f in include/bsalloc/bsalloc.hpp include/bsalloc/version.hpp \
  include/bsalloc/detail/requires_cxx20.hpp "$libdir/libbsalloc.a" \
  "$libdir/cmake/bsalloc/bsallocConfig.cmake" "$libdir/pkgconfig/bsalloc.pc" \
  share/doc/bsalloc/LICENSE; do
  [ -f "$prefix/$f" ] || fail "$f not installed"
done
echo "[plain-install] ok: configured without doctest, built and installed into $prefix;" \
  "tests, examples and -Werror off by default"
