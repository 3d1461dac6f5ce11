#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds and runs every test: a normal build (g++), AddressSanitizer + UBSan (clang), and
# ThreadSanitizer (g++), warnings as errors; then every scripts/ci.d/*.sh step (examples built as
# an outside consumer, the perf smoke run, ...). Prints one summary line at the end.
# CTest runs each doctest test case as its own test, so the counts are test cases (plus one per
# step). Tests and -Werror are off in a plain configure (that is for installing); they are
# turned on here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="${BSALLOC_CI_DIR:-$root/build-ci}"
jobs=$(nproc)
passed=0
failed=0
mkdir -p "$out"

run_suite() {  # name, then cmake arguments
  local name=$1
  shift
  echo "=== [$name] configure and build"
  cmake -S "$root" -B "$out/$name" -DBSALLOC_BUILD_TESTS=ON -DBSALLOC_WERROR=ON "$@" \
    >"$out/$name.configure.log"
  cmake --build "$out/$name" -j "$jobs"
  echo "=== [$name] ctest"
  local log="$out/$name.ctest.log"
  # Every test case must have reached CTest, under "<executable>: <case>": compare each
  # executable's own list with what CTest registered for it.
  local exe listed registered
  for exe in "$out/$name"/tests/test_*; do
    [ -f "$exe" ] && [ -x "$exe" ] || continue
    listed=$("$exe" --list-test-cases --no-intro=true 2>/dev/null |
      grep -c -v -e '^=\+$' -e '^\[doctest\] ' || true)
    registered=$(cd "$out/$name" && ctest -N -R "^$(basename "$exe"): " |
      sed -nE 's/^Total Tests: ([0-9]+)$/\1/p')
    if [ "$listed" -eq 0 ] || [ "$registered" != "$listed" ]; then
      echo "[$name] $(basename "$exe"): CTest has ${registered:-no} tests, it lists $listed cases"
      failed=$((failed + 1))
    fi
  done
  set +e
  (cd "$out/$name" && ctest --output-on-failure -j "$jobs") 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  local line total bad
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1 || true)
  total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
  bad=$(sed -E 's/.* ([0-9]+) tests failed.*/\1/' <<<"$line")
  if [ -z "$line" ] || [ "$total" -eq 0 ]; then
    echo "[$name] ran no test"
    failed=$((failed + 1))
  else
    passed=$((passed + total - bad))
    failed=$((failed + bad))
  fi
  [ "$rc" -eq 0 ] || echo "[$name] ctest exited $rc"
}

export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$root/tests/tsan.supp"
# Randomised tests take their seed from BSALLOC_SEED (tests/support.hpp): a new one each run,
# printed here, so that any run can be repeated with BSALLOC_SEED=<n> scripts/test.sh.
export BSALLOC_SEED="${BSALLOC_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"  # 32 bits: also libFuzzer's -seed
echo "=== BSALLOC_SEED=$BSALLOC_SEED"

run_suite normal -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBSALLOC_BUILD_EXAMPLES=ON \
  -DBSALLOC_BUILD_PERF=ON
run_suite asan-ubsan -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-O1 \
  -DBSALLOC_SANITIZE=address,undefined -DBSALLOC_BUILD_EXAMPLES=OFF
run_suite tsan -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-O1 \
  -DBSALLOC_SANITIZE=thread -DBSALLOC_BUILD_EXAMPLES=OFF

# Further steps: each gets the normal build directory and reports its own checks.
for step in "$root"/scripts/ci.d/*.sh; do
  [ -e "$step" ] || continue
  echo "=== [step] $(basename "$step")"
  if BSALLOC_ROOT="$root" BSALLOC_BUILD="$out/normal" BSALLOC_OUT="$out" bash "$step"; then
    passed=$((passed + 1))
  else
    echo "[step] $(basename "$step") FAILED"
    failed=$((failed + 1))
  fi
done

echo
echo "bsalloc: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
