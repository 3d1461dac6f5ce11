#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI step: bsalloc consumed the way an outside project consumes it.
#  1. build bsalloc static and shared, `cmake --install` each into its own prefix under
#     $BSALLOC_OUT (the static prefix is moved after installing: the package must be relocatable);
#  2. check what was installed (headers with version.hpp, library, CMake config + version file,
#     bsalloc.pc) and that find_package honours the version (0.1 yes, 0.2 and 1.0 no);
#  3. build test_package/ against each prefix with find_package(bsalloc 0.1) — the flow Conan's
#     test_package runs, without the Conan client — and run it;
#  4. compile and run test_package/test_package.cpp through `pkg-config --cflags --libs bsalloc`;
#  5. build examples/ standalone against the static prefix, warnings as errors, and run each.
# Env: BSALLOC_ROOT (source tree), BSALLOC_OUT (scratch dir). Exits non-zero on any failure.
set -euo pipefail
root=${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
out="${BSALLOC_OUT:-$root/build-ci}/consumer"
jobs=$(nproc)
checks=0
rm -rf "$out"
mkdir -p "$out"

say() { echo "[consumer] $*"; }
ok() {
  checks=$((checks + 1))
  echo "[consumer]   ok: $*"
}
fail() {
  echo "[consumer] FAILED: $*" >&2
  exit 1
}
# run LOGNAME CMD...: output to $out/LOGNAME.log, shown (tail) when the command fails.
run() {
  local log="$out/$1.log"
  shift
  if ! "$@" >"$log" 2>&1; then
    echo "[consumer] command failed: $*" >&2
    tail -n 60 "$log" >&2
    fail "$(basename "$log" .log)"
  fi
}

version=$(sed -nE 's/^project\(bsalloc VERSION ([0-9.]+).*/\1/p' "$root/CMakeLists.txt")
[ -n "$version" ] || fail "cannot read the project version from CMakeLists.txt"
say "bsalloc $version from $root; scratch $out"

# --- 1. build and install ------------------------------------------------------------------
build_and_install() {  # kind (static|shared), shared (OFF|ON), install prefix
  local kind=$1 shared=$2 prefix=$3
  say "build $kind library (BUILD_SHARED_LIBS=$shared) and install into $prefix"
  run "$kind.configure" cmake -S "$root" -B "$out/build-$kind" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DBUILD_SHARED_LIBS="$shared" -DBSALLOC_BUILD_TESTS=OFF -DBSALLOC_BUILD_EXAMPLES=OFF \
    -DBSALLOC_BUILD_PERF=OFF -DBSALLOC_WERROR=ON -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DCMAKE_INSTALL_LIBDIR=lib
  run "$kind.build" cmake --build "$out/build-$kind" -j "$jobs"
  run "$kind.install" cmake --install "$out/build-$kind"
  ok "$kind: built and installed"
}
build_and_install static OFF "$out/staging-static"
mv "$out/staging-static" "$out/prefix-static"  # relocated: nothing may point at the old path
build_and_install shared ON "$out/prefix-shared"

# --- 2. what was installed -------------------------------------------------------------------
check_tree() {  # kind, prefix
  local kind=$1 prefix=$2 h f
  for h in "$root"/include/bsalloc/*.hpp; do
    [ -f "$prefix/include/bsalloc/$(basename "$h")" ] || fail "$kind: $(basename "$h") not installed"
  done
  f="$prefix/include/bsalloc/version.hpp"
  [ -f "$f" ] || fail "$kind: version.hpp not installed"
  grep -q "BSALLOC_VERSION_STRING \"$version\"" "$f" || fail "$kind: version.hpp is not $version"
  for f in bsallocConfig.cmake bsallocConfigVersion.cmake bsallocTargets.cmake; do
    [ -f "$prefix/lib/cmake/bsalloc/$f" ] || fail "$kind: lib/cmake/bsalloc/$f missing"
  done
  [ -f "$prefix/lib/pkgconfig/bsalloc.pc" ] || fail "$kind: lib/pkgconfig/bsalloc.pc missing"
  if [ "$kind" = static ]; then
    [ -f "$prefix/lib/libbsalloc.a" ] || fail "static: lib/libbsalloc.a missing"
    [ ! -e "$prefix/lib/libbsalloc.so" ] || fail "static: a shared library was installed too"
  else
    [ -L "$prefix/lib/libbsalloc.so" ] || fail "shared: lib/libbsalloc.so link missing"
    [ -f "$prefix/lib/libbsalloc.so.$version" ] || fail "shared: libbsalloc.so.$version missing"
    local dyn
    dyn=$(readelf -d "$prefix/lib/libbsalloc.so")
    grep -q "SONAME.*libbsalloc.so.${version%.*}" <<<"$dyn" ||
      fail "shared: SONAME is not libbsalloc.so.${version%.*}"
  fi
  # Relocatable: no installed text file names the source, build or staging directory.
  if grep -rlE "$root|$out/build-|staging-" "$prefix/lib/cmake" "$prefix/lib/pkgconfig" \
    "$prefix/include"; then
    fail "$kind: installed files hard-code build paths (listed above)"
  fi
  ok "$kind: headers, version.hpp ($version), library, CMake package, bsalloc.pc; no build paths"
}
check_tree static "$out/prefix-static"
check_tree shared "$out/prefix-shared"

# find_package version checks, on a throwaway project that only configures.
probe="$out/probe-src"
mkdir -p "$probe"
cat >"$probe/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.20)
project(bsalloc_probe LANGUAGES CXX)
find_package(bsalloc ${WANT} REQUIRED)
if(NOT TARGET bsalloc::bsalloc OR NOT TARGET fmt::fmt OR NOT TARGET Boost::headers
   OR NOT TARGET Threads::Threads)
  message(FATAL_ERROR "bsalloc::bsalloc or a transitive dependency target is missing")
endif()
message(STATUS "probe: bsalloc ${bsalloc_VERSION} from ${bsalloc_DIR} shared=${bsalloc_SHARED}")
CMAKE
probe() {  # prefix, wanted version; returns cmake's status
  cmake -S "$probe" -B "$out/probe-build" -DWANT="$2" -DCMAKE_PREFIX_PATH="$1" \
    >"$out/probe.log" 2>&1
  local rc=$?
  rm -rf "$out/probe-build"
  return $rc
}
for kind in static shared; do
  prefix="$out/prefix-$kind"
  probe "$prefix" 0.1 || { cat "$out/probe.log" >&2; fail "$kind: find_package(bsalloc 0.1)"; }
  grep -q "probe: bsalloc $version from $prefix/lib/cmake/bsalloc shared=$([ $kind = shared ] && echo ON || echo OFF)" \
    "$out/probe.log" || { cat "$out/probe.log" >&2; fail "$kind: wrong package found"; }
  for want in 0.2 1.0; do
    if probe "$prefix" "$want"; then fail "$kind: find_package(bsalloc $want) accepted $version"; fi
    grep -q "compatible with requested version \"$want\"" "$out/probe.log" ||
      { cat "$out/probe.log" >&2; fail "$kind: find_package(bsalloc $want) failed for another reason"; }
  done
  ok "$kind: find_package(bsalloc 0.1) finds $version with its dependencies; 0.2 and 1.0 refused"
done

# --- 3. test_package through find_package ----------------------------------------------------
run_and_show() {  # log name, then the command (with env)
  local name=$1
  shift
  run "$name" "$@"
  sed 's/^/    | /' "$out/$name.log" | tail -n 4
}
for kind in static shared; do
  prefix="$out/prefix-$kind"
  say "test_package/ against the $kind prefix (find_package)"
  run "tp-$kind.configure" cmake -S "$root/test_package" -B "$out/tp-$kind" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$prefix"
  grep -q "^bsalloc_DIR:PATH=$prefix/lib/cmake/bsalloc$" "$out/tp-$kind/CMakeCache.txt" ||
    fail "tp-$kind: bsalloc was not found in $prefix"
  run "tp-$kind.build" cmake --build "$out/tp-$kind"
  exe="$out/tp-$kind/test_package"
  deps=$(LD_LIBRARY_PATH="$prefix/lib" ldd "$exe")
  if [ "$kind" = shared ]; then
    grep -q "libbsalloc.so.* => $prefix/lib/" <<<"$deps" ||
      fail "tp-shared: test_package does not load libbsalloc.so from $prefix/lib"
    run_and_show "tp-$kind.run" env LD_LIBRARY_PATH="$prefix/lib" "$exe"
  else
    if grep -q libbsalloc <<<"$deps"; then fail "tp-static: linked against a shared bsalloc"; fi
    run_and_show "tp-$kind.run" "$exe"
  fi
  grep -q "^test_package: ok$" "$out/tp-$kind.run.log" || fail "tp-$kind: no ok line"
  ok "$kind: test_package configured with find_package(bsalloc 0.1), built and ran"
done

# --- 4. pkg-config ---------------------------------------------------------------------------
command -v pkg-config >/dev/null || fail "pkg-config is not installed (scripts/setup.sh installs it)"
for kind in static shared; do
  prefix="$out/prefix-$kind"
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
  [ "$(pkg-config --modversion bsalloc)" = "$version" ] || fail "pc-$kind: --modversion"
  pkg-config --atleast-version=0.1 bsalloc || fail "pc-$kind: --atleast-version=0.1"
  flags=$(pkg-config --cflags --libs bsalloc)
  say "pkg-config ($kind): $flags"
  # shellcheck disable=SC2086  # the flags are words on purpose
  run "pc-$kind.build" c++ -std=c++20 -O1 -Wall -Wextra -Werror "$root/test_package/test_package.cpp" \
    $flags -o "$out/pc-$kind"
  run_and_show "pc-$kind.run" env LD_LIBRARY_PATH="$prefix/lib" "$out/pc-$kind"
  grep -q "^test_package: ok$" "$out/pc-$kind.run.log" || fail "pc-$kind: no ok line"
  unset PKG_CONFIG_PATH
  ok "$kind: compiled and ran with \`pkg-config --cflags --libs bsalloc\`"
done

# --- 5. examples/ as an outside project ------------------------------------------------------
prefix="$out/prefix-static"
say "examples/ standalone against $prefix"
run examples.configure cmake -S "$root/examples" -B "$out/examples" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$prefix" -DBSALLOC_EXAMPLES_WERROR=ON
grep -q "^bsalloc_DIR:PATH=$prefix/lib/cmake/bsalloc$" "$out/examples/CMakeCache.txt" ||
  fail "examples: bsalloc was not found in $prefix"
run examples.build cmake --build "$out/examples" -j "$jobs"
ok "examples: built against the installed package, warnings as errors"
count=0
for src in "$root"/examples/*.cpp; do
  name=$(basename "$src" .cpp)
  exe="$out/examples/$name"
  [ -x "$exe" ] || fail "example $name was not built"
  start=$(date +%s.%N)
  run "example-$name" timeout 60 "$exe"
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  sed 's/^/    | /' "$out/example-$name.log" | tail -n 6
  ok "example $name ran (exit 0, ${secs}s)"
  count=$((count + 1))
done
[ "$count" -gt 0 ] || fail "no example found in examples/"

say "all $checks checks ok"
