#!/usr/bin/env bash
# Builds and runs every test: a normal build (g++), AddressSanitizer + UBSan (clang), and
# ThreadSanitizer (g++), warnings as errors; then every scripts/ci.d/*.sh step (examples built as
# an outside consumer, the perf smoke run, ...). Prints one summary line at the end.
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
  cmake -S "$root" -B "$out/$name" -DBSALLOC_WERROR=ON "$@" >"$out/$name.configure.log"
  cmake --build "$out/$name" -j "$jobs"
  echo "=== [$name] ctest"
  local log="$out/$name.ctest.log"
  set +e
  ctest --test-dir "$out/$name" --output-on-failure -j "$jobs" 2>&1 | tee "$log"
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

run_suite normal -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBSALLOC_BUILD_PERF=ON
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
