#!/usr/bin/env bash
# Builds bsalloc and runs the main demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j "$(nproc)" --target pmr_vector 2>/dev/null ||
  cmake --build "$build" -j "$(nproc)" --target page_demo
if [ -x "$build/examples/pmr_vector" ]; then
  "$build/examples/pmr_vector"
else
  "$build/examples/page_demo"
fi
