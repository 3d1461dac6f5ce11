#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds bsalloc and runs the main demo: std::pmr containers on a slab_resource, with its stats.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBSALLOC_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target pmr_vector
"$build/examples/pmr_vector"
