#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI step: bsalloc consumed the way an outside project consumes it.
#  1. build bsalloc static and shared, `cmake --install` each into its own prefix under
#     $BSALLOC_OUT (the static prefix is moved after installing: the package must be relocatable);
#  2. check what was installed (headers with version.hpp, library, CMake config + version file,
#     bsalloc.pc, the licence) and that find_package honours the version (0.1 yes, 0.2 and 1.0
#     no), needs no Boost (configured with CMAKE_DISABLE_FIND_PACKAGE_Boost) and gives the
#     optional boost_pmr component only when asked for;
#  3. build test_package/ against each prefix with find_package(bsalloc 0.1) — the flow Conan's
#     test_package runs, without the Conan client — with Boost hidden and the consumer's own
#     warnings as errors ($warn), and run it;
#  4. compile and run test_package/test_package.cpp through `pkg-config --cflags --libs bsalloc`
#     (no -std given: bsalloc.pc's Cflags carry -std=c++20), same warnings; and check that a C++17
#     compile stops at bsalloc's "requires C++20" error first;
#  5. build examples/ standalone against the static prefix, warnings as errors, and run each.
# Env: BSALLOC_ROOT (source tree), BSALLOC_OUT (scratch dir). Exits non-zero on any failure.
set -euo pipefail
root=${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
out="${BSALLOC_OUT:-$root/build-ci}/consumer"
jobs=$(nproc)
checks=0
# What a careful consumer compiles with: bsalloc's headers must not warn under it.
warn="-Wall -Wextra -Wpedantic -Wconversion -Wshadow -Werror"
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
  for h in "$root"/include/bsalloc/*.hpp "$root"/include/bsalloc/*/*.hpp; do
    [ -e "$h" ] || continue
    f=${h#"$root/include/"}
    [ -f "$prefix/include/$f" ] || fail "$kind: $f not installed"
  done
  cmp -s "$root/LICENSE" "$prefix/share/doc/bsalloc/LICENSE" ||
    fail "$kind: the licence is not installed as share/doc/bsalloc/LICENSE"
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
  grep -q -- "-std=c++20" "$prefix/lib/pkgconfig/bsalloc.pc" || fail "$kind: bsalloc.pc lacks -std=c++20"
  if grep -qi boost "$prefix/lib/pkgconfig/bsalloc.pc" "$prefix"/lib/cmake/bsalloc/bsallocTargets*.cmake; then
    fail "$kind: the installed package still names Boost for bsalloc::bsalloc"
  fi
  ok "$kind: headers, version.hpp ($version), library, CMake package, bsalloc.pc, licence; no build paths, no Boost"
}
check_tree static "$out/prefix-static"
check_tree shared "$out/prefix-shared"

# find_package version checks, on a throwaway project that only configures.
probe="$out/probe-src"
mkdir -p "$probe"
cat >"$probe/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.15)
project(bsalloc_probe LANGUAGES CXX)
find_package(bsalloc ${WANT} REQUIRED ${COMPONENTS})
if(NOT TARGET bsalloc::bsalloc OR NOT TARGET fmt::fmt OR NOT TARGET Threads::Threads)
  message(FATAL_ERROR "bsalloc::bsalloc or a transitive dependency target is missing")
endif()
get_target_property(_libs bsalloc::bsalloc INTERFACE_LINK_LIBRARIES)
if(_libs MATCHES "Boost")
  message(FATAL_ERROR "bsalloc::bsalloc links Boost: ${_libs}")
endif()
set(_pmr "none")
if(TARGET bsalloc::boost_pmr)
  get_target_property(_pmr bsalloc::boost_pmr INTERFACE_LINK_LIBRARIES)
endif()
message(STATUS "probe: bsalloc ${bsalloc_VERSION} from ${bsalloc_DIR} shared=${bsalloc_SHARED}")
message(STATUS "probe: boost_pmr found=${bsalloc_boost_pmr_FOUND} links=${_pmr}")
CMAKE
probe() {  # prefix, wanted version, then more cmake arguments; returns cmake's status
  local prefix=$1 want=$2
  shift 2
  cmake -S "$probe" -B "$out/probe-build" -DWANT="$want" -DCMAKE_PREFIX_PATH="$prefix" "$@" \
    >"$out/probe.log" 2>&1
  local rc=$?
  rm -rf "$out/probe-build"
  return $rc
}
probe_says() {  # what the last probe must have printed
  grep -qF -- "$1" "$out/probe.log" || { cat "$out/probe.log" >&2; fail "probe: expected \"$1\""; }
}
for kind in static shared; do
  prefix="$out/prefix-$kind"
  # A consumer without Boost: find_package(Boost) is made to fail, bsalloc must not need it.
  probe "$prefix" 0.1 -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON ||
    { cat "$out/probe.log" >&2; fail "$kind: find_package(bsalloc 0.1) without Boost"; }
  probe_says "probe: boost_pmr found= links=none"
  grep -q "probe: bsalloc $version from $prefix/lib/cmake/bsalloc shared=$([ $kind = shared ] && echo ON || echo OFF)" \
    "$out/probe.log" || { cat "$out/probe.log" >&2; fail "$kind: wrong package found"; }
  for want in 0.2 1.0; do
    if probe "$prefix" "$want"; then fail "$kind: find_package(bsalloc $want) accepted $version"; fi
    grep -q "compatible with requested version \"$want\"" "$out/probe.log" ||
      { cat "$out/probe.log" >&2; fail "$kind: find_package(bsalloc $want) failed for another reason"; }
  done
  # The optional component: asked for, it finds Boost.Container and defines bsalloc::boost_pmr.
  probe "$prefix" 0.1 "-DCOMPONENTS=COMPONENTS;boost_pmr" ||
    { cat "$out/probe.log" >&2; fail "$kind: find_package(bsalloc COMPONENTS boost_pmr)"; }
  probe_says "probe: boost_pmr found=TRUE links=bsalloc::bsalloc;Boost::container"
  # ... optional and Boost missing: bsalloc is still found, the component is not.
  probe "$prefix" 0.1 "-DCOMPONENTS=OPTIONAL_COMPONENTS;boost_pmr" -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON ||
    { cat "$out/probe.log" >&2; fail "$kind: OPTIONAL_COMPONENTS boost_pmr without Boost"; }
  probe_says "probe: boost_pmr found=FALSE links=none"
  # ... required and Boost missing: find_package(bsalloc) fails.
  if probe "$prefix" 0.1 "-DCOMPONENTS=COMPONENTS;boost_pmr" -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON; then
    fail "$kind: COMPONENTS boost_pmr succeeded without Boost"
  fi
  ok "$kind: find_package(bsalloc 0.1) finds $version without Boost; 0.2 and 1.0 refused; boost_pmr only when asked for"
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
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON -DCMAKE_CXX_FLAGS="$warn"
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
  ok "$kind: test_package configured with find_package(bsalloc 0.1) and no Boost, built ($warn) and ran"
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
  run "pc-$kind.build" c++ -O1 $warn "$root/test_package/test_package.cpp" $flags -o "$out/pc-$kind"
  run_and_show "pc-$kind.run" env LD_LIBRARY_PATH="$prefix/lib" "$out/pc-$kind"
  grep -q "^test_package: ok$" "$out/pc-$kind.run.log" || fail "pc-$kind: no ok line"
  unset PKG_CONFIG_PATH
  ok "$kind: compiled ($warn) and ran with \`pkg-config --cflags --libs bsalloc\`"
done

# Compiled as C++17, the first error is bsalloc's own.
prefix="$out/prefix-static"
printf '#include <bsalloc/bsalloc.hpp>\nint main() { return 0; }\n' >"$out/cxx17.cpp"
if c++ -std=c++17 -fsyntax-only -I"$prefix/include" "$out/cxx17.cpp" >"$out/cxx17.log" 2>&1; then
  fail "a C++17 compile of <bsalloc/bsalloc.hpp> succeeded"
fi
first=$(grep -m1 "error" "$out/cxx17.log" || true)
grep -q "bsalloc requires C++20" <<<"$first" || { cat "$out/cxx17.log" >&2; fail "C++17: first error is not bsalloc's"; }
ok "C++17 consumer: the first error is bsalloc's \"requires C++20\" #error"

# --- 5. examples/ as an outside project ------------------------------------------------------
prefix="$out/prefix-static"
say "examples/ standalone against $prefix"
run examples.configure cmake -S "$root/examples" -B "$out/examples" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$prefix" -DBSALLOC_EXAMPLES_WERROR=ON -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON
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

# --- 6. the examples' claims, read from their output (not only their exit status) ------------
claim() {  # example, extended regex its output must match, what the README says
  grep -Eq "$2" "$out/example-$1.log" || fail "example $1: no line matching /$2/ ($3)"
  ok "example $1: $3"
}
claim game_frame '^game_frame: ok$' "checked its own claims"
claim game_frame '^  \[budget\] audio over its [0-9]+ MiB by [0-9]+ KiB: allowed' \
  "audio allowed over its budget"
claim game_frame '^frame 90: physics over budget, [1-9][0-9]* debris dropped' \
  "the explosion physics refuses at frame 90"
claim game_frame "\\[oom\\] budget_resource 'physics' refused" "the out-of-memory handler told of it"
claim game_frame '^level 2 loaded' "the level change"
claim server '^server: ok$' "checked its own claims"
line=$(grep -E '^served [0-9]+, shed [0-9]+ \(503\), sessions evicted [0-9]+, out-of-memory reports [0-9]+$' \
  "$out/example-server.log") || fail "example server: no 'served ..., shed ...' line"
read -r served shed evicted reports < <(sed -E 's/ \(503\)//; s/[^0-9]+/ /g' <<<"$line")
requests=$(sed -nE 's/^bsalloc [0-9.]+: ([0-9]+) workers x ([0-9]+) requests.*/\1 \2/p' \
  "$out/example-server.log")
read -r workers per <<<"$requests"
[ -n "${workers:-}" ] || fail "example server: no 'N workers x M requests' line"
[ "$((served + shed))" -eq "$((workers * per))" ] ||
  fail "example server: served $served + shed $shed != $workers x $per requests"
[ "$shed" -gt 0 ] && [ "$evicted" -gt 0 ] && [ "$reports" -ge "$shed" ] ||
  fail "example server: shed $shed, evicted $evicted, reports $reports (each must be > 0, reports >= shed)"
ok "example server: every request answered once, load shed ($shed), sessions evicted ($evicted)"

say "all $checks checks ok"
