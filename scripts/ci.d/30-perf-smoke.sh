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
charts=()
command -v gnuplot >/dev/null || charts=(--no-charts)
python3 "$BSALLOC_ROOT/perf/run.py" --bench "$bench" --quick --out "$out" "${charts[@]}" \
  >"$out/run.log" 2>&1 || { cat "$out/run.log"; exit 1; }
runs=$(($(wc -l <"$out/latest.csv") - 1))
if command -v valgrind >/dev/null; then
  BSALLOC_BENCH="$bench" bash "$BSALLOC_ROOT/perf/callgrind.sh" --ops 1600 \
    --out "$out/callgrind.csv" >"$out/callgrind.log" 2>&1 || { cat "$out/callgrind.log"; exit 1; }
fi
echo "perf-smoke: $runs runs passed ($out)"
