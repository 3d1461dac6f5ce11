#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fuzzes one target (or all) for a while, by hand:
#
#   scripts/fuzz.sh TARGET|all [SECONDS] [--merge] [-- extra libFuzzer flags]
#
# Targets: the tests/fuzz/fuzz_*.cpp files (page_resource, slab_resource, object_pool,
# checked_misuse, frame_arena, budget, malloc; the "fuzz_" prefix is optional). SECONDS defaults to 60.
#
# Corpus: the committed seeds in tests/fuzz/corpus/<target>/ stay untouched; new inputs go to a
# work corpus, $BSALLOC_FUZZ_WORK/corpus/<target>/ (default build-fuzz/work), kept between runs.
# --merge minimises the work corpus into the committed seed directory afterwards (only inputs
# that add coverage are copied; review the diff before committing, keep it small).
# A finding is saved under $BSALLOC_FUZZ_WORK/artifacts/<target>/; the script prints it in hex
# with the command that replays it. Turn it into a regression: copy it to
# tests/fuzz/regressions/<target>/ (see docs/fuzzing.md).
#
# Env: BSALLOC_SEED (libFuzzer -seed),
# BSALLOC_FUZZ_BUILD (build directory, default build-fuzz), CXX (default clang++).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,20p' "$0"; exit 2; }
target=${1#fuzz_}
shift
seconds=60
if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
merge=0
extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --merge) merge=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
build=${BSALLOC_FUZZ_BUILD:-$root/build-fuzz}
work=${BSALLOC_FUZZ_WORK:-$build/work}

mkdir -p "$build"
cmake -S "$root/tests/fuzz" -B "$build" -DCMAKE_CXX_COMPILER="${CXX:-clang++}" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >/dev/null

targets=()
if [ "$target" = all ]; then
  for f in "$root"/tests/fuzz/fuzz_*.cpp; do t=$(basename "$f" .cpp); targets+=("${t#fuzz_}"); done
else
  [ -f "$root/tests/fuzz/fuzz_$target.cpp" ] || { echo "fuzz.sh: no target $target" >&2; exit 2; }
  targets=("$target")
fi

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:quarantine_size_mb=64}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
seed=()
[ -n "${BSALLOC_SEED:-}" ] && seed=(-seed="$BSALLOC_SEED")
status=0
for t in "${targets[@]}"; do
  seeds="$root/tests/fuzz/corpus/$t"
  corpus="$work/corpus/$t"
  artifacts="$work/artifacts/$t"
  mkdir -p "$seeds" "$corpus" "$artifacts"
  echo "=== fuzz_$t for ${seconds}s (corpus $corpus, seeds $seeds)"
  log="$work/fuzz_$t.log"
  if "$build/fuzz_$t" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=3072 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 "${seed[@]}" "${extra[@]}" \
      "$corpus" "$seeds" >"$log" 2>&1; then
    grep -E "^(Done|stat::number_of_executed_units|#[0-9]+.*DONE)" "$log" | tail -n 2 || true
  else
    status=1
    echo "fuzz_$t: FINDING"
    grep -E "CHECK FAILED|ERROR: (Address|Undefined|Leak|libFuzzer)|runtime error|SUMMARY" "$log" | head -n 20
    for a in $(grep -oE "Test unit written to [^ ]+" "$log" | awk '{print $5}'); do
      echo "reproducer $a ($(stat -c %s "$a") bytes), hex:"
      od -An -tx1 -v "$a"
      echo "replay: $build/fuzz_$t $a"
    done
    echo "full log: $log"
  fi
  if [ "$merge" -eq 1 ]; then
    echo "=== merging into $seeds"
    "$build/fuzz_$t" -merge=1 "$seeds" "$corpus" >"$work/merge_$t.log" 2>&1 ||
      { cat "$work/merge_$t.log"; status=1; }
  fi
done
exit "$status"
