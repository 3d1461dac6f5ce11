#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The malloc drop-in comparison, one command (perf/malloc/README.md): builds bsalloc_mbench and
# libbsalloc_malloc.so in build-perf/ if needed, then runs every workload and real program under
# each malloc, repeated and interleaved, and writes perf/results/malloc/ (see run.py).
#   perf/malloc/run.sh [REPS] [--smoke] [--so PATH] [--peers a,b] [--workloads x,y]
#                      [--no-programs] [--out DIR] [--no-charts] [--report-only] [--callgrind]
# BSALLOC_MBENCH / BSALLOC_MALLOC_SO (or --so) name already-built ones instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build="$root/build-perf"
so="${BSALLOC_MALLOC_SO:-}"
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = --so ]; then
    j=$((i + 1))
    so="${!j:-}"
  fi
done
mbench="${BSALLOC_MBENCH:-}"
if [ -z "$mbench" ] || [ -z "$so" ]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBSALLOC_BUILD_PERF=ON \
    -DBSALLOC_BUILD_TESTS=OFF -DBSALLOC_BUILD_EXAMPLES=OFF >/dev/null
fi
if [ -z "$mbench" ]; then
  cmake --build "$build" --target bsalloc_mbench -j "$(nproc)" >/dev/null
  mbench="$build/perf/bsalloc_mbench"
fi
if [ -z "$so" ] && [ -d "$build" ]; then
  # The preload library's target, if this tree has one (its name: the .so's, without lib).
  # (The target list is read whole first: grep -q would stop reading early, and under pipefail
  # cmake's SIGPIPE would make the test false.)
  targets=$(cmake --build "$build" --target help 2>/dev/null || true)
  if grep -qw bsalloc_malloc <<<"$targets"; then
    cmake --build "$build" --target bsalloc_malloc -j "$(nproc)" >/dev/null
  fi
  so=$(find "$build" -name libbsalloc_malloc.so -print -quit)
  [ -n "$so" ] || echo "run.sh: no libbsalloc_malloc.so built: bsalloc is not run" >&2
fi
args=()
[ -n "$so" ] && args=(--so "$so")
BSALLOC_PERF_COMMAND="perf/malloc/run.sh $*" exec python3 "$here/run.py" --mbench "$mbench" \
  "${args[@]}" "$@"
