#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Perf smoke test: the quick mode of perf/run.sh over every peer and workload, with the
# already-built bsalloc_bench of the normal build, plus a short callgrind count. Seconds, no
# figure judged: it fails only if the benchmark program fails, so perf/ never rots.
set -euo pipefail
bench="$BSALLOC_BUILD/perf/bsalloc_bench"
out="$BSALLOC_OUT/perf-smoke"
[ -x "$bench" ] || { echo "perf-smoke: $bench not built (BSALLOC_BUILD_PERF=ON?)"; exit 1; }
rm -rf "$out"
mkdir -p "$out"
# Every tool and peer the step exercises must be there (scripts/setup.sh installs them): a missing
# one fails the step instead of shrinking it (perf/run.py itself drops a peer it cannot load).
for tool in gnuplot valgrind python3; do
  command -v "$tool" >/dev/null || { echo "perf-smoke: $tool is missing (scripts/setup.sh)"; exit 1; }
done
for lib in libjemalloc.so.2 libmimalloc.so.2 libtcmalloc_minimal.so.4; do
  [ -e "/usr/lib/x86_64-linux-gnu/$lib" ] ||
    { echo "perf-smoke: peer $lib is missing (scripts/setup.sh)"; exit 1; }
done
python3 "$BSALLOC_ROOT/perf/run.py" --bench "$bench" --quick --out "$out" \
  >"$out/run.log" 2>&1 || { cat "$out/run.log"; exit 1; }
runs=$(($(wc -l <"$out/latest.csv") - 1))
BSALLOC_BENCH="$bench" bash "$BSALLOC_ROOT/perf/callgrind.sh" --ops 1600 \
  --out "$out/callgrind.csv" >"$out/callgrind.log" 2>&1 || { cat "$out/callgrind.log"; exit 1; }
echo "perf-smoke: $runs runs passed ($out)"
