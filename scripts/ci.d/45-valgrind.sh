#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Valgrind step, two halves. (1) The slab_resource and object_pool suites of the normal build
# run under memcheck and must be clean (definite leaks count as errors). (2) Expected errors:
# each misuse case of test_valgrind_misuse (a use after free, a write into a free object's
# link, a read into a class's slack, a leak inside a slab_resource; a use after free and a leak
# inside an object_pool; a use after free and a leak of a page_resource run; a stray write into
# a slab header) runs alone under memcheck, which must REPORT it (the memcheck client requests:
# under memcheck a slab_resource takes its slow path and an object_pool has no thread cache;
# each slab is a memory pool and each object a chunk of it; free objects and slab headers are
# no-access; a page_resource has no run cache, each run is a chunk of its meta pool and free
# pages are no-access). Any miss fails the step; so does a missing valgrind or test binary.
# About 5 minutes on 2 loaded cores.
set -euo pipefail
build=${BSALLOC_BUILD:?BSALLOC_BUILD: the normal build directory}
out=${BSALLOC_OUT:-$build/..}/valgrind
command -v valgrind >/dev/null || { echo "valgrind: not installed (scripts/setup.sh)"; exit 1; }
mkdir -p "$out"
# Test binaries, each with optional doctest arguments (e.g. --test-case=... to bound the time).
suites=(
  "test_slab_resource"
  "test_object_pool"
  "test_valgrind_misuse"
)
failed=0
for entry in "${suites[@]}"; do
  read -r name args <<<"$entry"
  bin="$build/tests/$name"
  [ -x "$bin" ] || { echo "valgrind: $bin not built"; failed=1; continue; }
  log="$out/$name.log"
  rm -f "$log".vg.*
  # shellcheck disable=SC2086  # args is a word list on purpose
  if timeout 900 valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
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

# Expected errors: test case, then what memcheck must say (an extended regex over its log).
expected=(
  "misuse: read after free of a slab_resource object|Invalid read of size 1.*|inside a block of size 64 free'd"
  "misuse: write after free of a slab_resource object's first word|Invalid write of size 1|inside a block of size 32 free'd"
  "misuse: read past the requested size into the class slack|Invalid read of size 1|test_valgrind_misuse.cpp"
  "misuse: a leaked slab_resource object|definitely lost: 100 bytes in 1 blocks|"
  "misuse: read after free of an object_pool object|Invalid read of size 8|inside a block of size 48 free'd"
  "misuse: a leaked object_pool object|definitely lost: 48 bytes in 1 blocks|"
  "misuse: read after free of a page_resource run|Invalid read of size 1|inside a block of size 8,192 free'd"
  "misuse: a leaked page_resource run|definitely lost: 12,288 bytes in 1 blocks|"
  "misuse: write into a slab header through a stray pointer|Invalid write of size 1|test_valgrind_misuse.cpp"
)
bin="$build/tests/test_valgrind_misuse"
if [ -x "$bin" ]; then
  for entry in "${expected[@]}"; do
    IFS='|' read -r case first second <<<"$entry"
    log="$out/expected.$(tr -c 'a-z' '_' <<<"$case" | head -c 40).log"
    rc=0
    timeout 300 valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
      --log-file="$log" "$bin" --no-skip "--test-case=$case" >"$log.out" 2>&1 || rc=$?
    if [ "$rc" -eq 99 ] && grep -qE "$first" "$log" && { [ -z "$second" ] || grep -qE "$second" "$log"; }
    then
      echo "valgrind: reported as expected: $case"
    else
      echo "valgrind: NOT reported (exit $rc): $case"
      cat "$log"
      failed=1
    fi
  done
fi
exit "$failed"
