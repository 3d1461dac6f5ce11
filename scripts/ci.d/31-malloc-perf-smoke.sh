#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Malloc drop-in perf smoke test: perf/malloc/run.sh --smoke with the normal build's
# bsalloc_mbench and libbsalloc_malloc.so, every malloc (bsalloc, glibc, jemalloc, mimalloc,
# tcmalloc) on every workload and real program, tiny sizes, one repetition (well under a
# minute). No figure is judged: it fails if the library or the program is missing, if a run
# fails, or if a real program's output differs between mallocs.
set -euo pipefail
mbench="$BSALLOC_BUILD/perf/bsalloc_mbench"
so=$(find "$BSALLOC_BUILD" -name libbsalloc_malloc.so -print -quit 2>/dev/null || true)
out="$BSALLOC_OUT/malloc-perf-smoke"
[ -x "$mbench" ] || { echo "malloc-perf-smoke: $mbench not built (BSALLOC_BUILD_PERF=ON?)"; exit 1; }
[ -n "$so" ] || { echo "malloc-perf-smoke: no libbsalloc_malloc.so under $BSALLOC_BUILD"; exit 1; }
for tool in python3 sqlite3 perl g++; do
  command -v "$tool" >/dev/null || { echo "malloc-perf-smoke: $tool missing (scripts/setup.sh)"; exit 1; }
done
rm -rf "$out"
mkdir -p "$out"
charts=()
command -v gnuplot >/dev/null || charts=(--no-charts)
BSALLOC_MBENCH="$mbench" timeout 300 bash "$BSALLOC_ROOT/perf/malloc/run.sh" --smoke --so "$so" \
  --out "$out" "${charts[@]}" >"$out/run.log" 2>&1 || { cat "$out/run.log"; exit 1; }
runs=$(($(wc -l <"$out/latest.csv") - 1))
grep -q ',bsalloc,' "$out/latest.csv" || { echo "malloc-perf-smoke: bsalloc did not run"; exit 1; }
echo "malloc-perf-smoke: $runs runs passed ($out)"
