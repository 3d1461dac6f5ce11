#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fuzzing step: builds every libFuzzer target of tests/fuzz (clang, ASan + UBSan), replays every
# saved regression input and the seed corpus, then fuzzes each target for
# BSALLOC_FUZZ_SECONDS (default 45) seconds, as many targets at once as there are cores. Fails on
# any finding and prints the crash and the reproducer input in hex. A missing clang or libFuzzer
# is a failure, not a skip. See docs/fuzzing.md.
set -euo pipefail
root=${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
out=${BSALLOC_OUT:-$root/build-ci}/fuzz
seconds=${BSALLOC_FUZZ_SECONDS:-45}  # seven targets on two cores: about 3 minutes of fuzzing
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:quarantine_size_mb=64"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (scripts/setup.sh)"; exit 1; }
mkdir -p "$out"
if ! cmake -S "$root/tests/fuzz" -B "$out/build" -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/configure.log" 2>&1; then
  cat "$out/configure.log"
  echo "fuzz: configure failed (libFuzzer: libclang-rt-14-dev)"
  exit 1
fi
cmake --build "$out/build" -j "$(nproc)" >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }

targets=()
for f in "$root"/tests/fuzz/fuzz_*.cpp; do
  t=$(basename "$f" .cpp)
  targets+=("${t#fuzz_}")
done
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no target"; exit 1; }
echo "fuzz: targets ${targets[*]}; ${seconds}s each"

report() {  # target, log: the crash and every reproducer it wrote, in hex
  local t=$1 log=$2
  echo "---- fuzz_$t FAILED; log $log"
  grep -E "CHECK FAILED|ERROR: (Address|Undefined|Leak|libFuzzer)|runtime error|SUMMARY|^    #[0-9]+ .* in [^_]" \
    "$log" | head -n 40 || true
  # A fuzzing run names what it saved; a replay crashes on the last input it was running.
  local inputs
  inputs=$(grep -oE "Test unit written to [^ ]+" "$log" | awk '{print $NF}' || true)
  [ -n "$inputs" ] || inputs=$(grep -oE "^Running: [^ ]+" "$log" | tail -n 1 | awk '{print $2}' || true)
  local a
  for a in $inputs; do
    [ -f "$a" ] || continue
    echo "reproducer $a ($(stat -c %s "$a") bytes), hex:"
    od -An -tx1 -v "$a"
    echo "replay: $out/build/fuzz_$t $a"
  done
}

failed=0
# 1. Regressions and seeds: every saved input must pass.
for t in "${targets[@]}"; do
  inputs=()
  for d in "$root/tests/fuzz/regressions/$t" "$root/tests/fuzz/corpus/$t"; do
    [ -d "$d" ] && while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$d" -type f -print0 | sort -z)
  done
  [ ${#inputs[@]} -gt 0 ] || continue
  log="$out/replay_$t.log"
  if "$out/build/fuzz_$t" -runs=1 -timeout=60 "${inputs[@]}" >"$log" 2>&1; then
    echo "fuzz_$t: ${#inputs[@]} saved inputs replayed"
  else
    report "$t" "$log"
    failed=1
  fi
done

# 2. Fuzz, at most nproc targets at once, each from a copy of its seed corpus.
jobs=$(nproc)
pids=()
names=()
run_target() {
  local t=$1 corpus="$out/corpus/$t"
  rm -rf "$corpus" "$out/artifacts/$t"
  mkdir -p "$corpus" "$out/artifacts/$t"
  [ -d "$root/tests/fuzz/corpus/$t" ] && cp -r "$root/tests/fuzz/corpus/$t/." "$corpus/"
  local seed=()
  [ -n "${BSALLOC_SEED:-}" ] && seed=(-seed="$BSALLOC_SEED")
  "$out/build/fuzz_$t" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=3072 \
    -artifact_prefix="$out/artifacts/$t/" -print_final_stats=1 "${seed[@]}" "$corpus" \
    >"$out/fuzz_$t.log" 2>&1
}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  run_target "$t" &
  pids+=($!)
  names+=("$t")
done
for i in "${!pids[@]}"; do
  t=${names[$i]}
  log="$out/fuzz_$t.log"
  if wait "${pids[$i]}"; then
    echo "fuzz_$t: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') runs, $(grep -m1 -oE 'Seed: [0-9]+' "$log"), no finding"
  else
    report "$t" "$log"
    failed=1
  fi
done
[ "$failed" -eq 0 ] || { echo "fuzz: FAILED (turn each finding into tests/fuzz/regressions/<target>/, docs/fuzzing.md)"; exit 1; }
echo "fuzz: every target passed"
