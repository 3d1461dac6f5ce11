#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The benchmarks, one command: builds bsalloc_bench if needed (perf/build.sh), then runs every
# peer x workload, repeated and interleaved, and writes perf/results/ (see perf/run.py).
#   perf/run.sh [--quick] [--reps N] [--peers a,b] [--workloads x,y] [--out DIR] [--no-charts]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bench=$("$here/build.sh")
BSALLOC_PERF_COMMAND="perf/run.sh $*" exec python3 "$here/run.py" --bench "$bench" "$@"
