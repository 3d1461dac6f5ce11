#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds bsalloc_bench (RelWithDebInfo, in build-perf/) unless BSALLOC_BENCH names one, and
# prints its path. Used by run.sh and callgrind.sh.
set -euo pipefail
if [ -n "${BSALLOC_BENCH:-}" ]; then
  echo "$BSALLOC_BENCH"
  exit 0
fi
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-perf"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBSALLOC_BUILD_PERF=ON \
  -DBSALLOC_BUILD_TESTS=OFF -DBSALLOC_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" --target bsalloc_bench -j "$(nproc)" >/dev/null
echo "$build/perf/bsalloc_bench"
