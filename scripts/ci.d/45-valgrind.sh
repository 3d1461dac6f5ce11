#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Valgrind step: the slab_resource and object_pool suites of the normal build run under
# memcheck (definite leaks count as errors). Any error fails the step; so does a missing
# valgrind or a missing test binary. About 30 s. With the memcheck client requests in the pools,
# a use after free or a leak inside a pool is reported here as with plain malloc.
set -euo pipefail
build=${BSALLOC_BUILD:?BSALLOC_BUILD: the normal build directory}
out=${BSALLOC_OUT:-$build/..}/valgrind
command -v valgrind >/dev/null || { echo "valgrind: not installed (scripts/setup.sh)"; exit 1; }
mkdir -p "$out"
# Test binaries, each with optional doctest arguments (e.g. --test-case=... to bound the time).
suites=(
  "test_slab_resource"
  "test_object_pool"
)
failed=0
for entry in "${suites[@]}"; do
  read -r name args <<<"$entry"
  bin="$build/tests/$name"
  [ -x "$bin" ] || { echo "valgrind: $bin not built"; failed=1; continue; }
  log="$out/$name.log"
  rm -f "$log".vg.*
  # shellcheck disable=SC2086  # args is a word list on purpose
  if valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
      --track-origins=yes --log-file="$log.vg.%p" "$bin" $args >"$log" 2>&1; then
    echo "valgrind: $name clean ($(grep -oE 'test cases: +[0-9]+ \| +[0-9]+ passed' "$log" | tr -s ' '))"
  else
    echo "valgrind: $name FAILED"
    tail -n 30 "$log"
    # One log per process (death tests fork): show those that report an error.
    for f in "$log".vg.*; do
      grep -qE "ERROR SUMMARY: [1-9]|definitely lost: [1-9]" "$f" && { echo "== $f"; cat "$f"; }
    done
    failed=1
  fi
done
exit "$failed"
