#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The engine kit's memory chart: game_frame (normal build) samples every frame and draws the
# chart with scripts/memchart.sh (python3 + gnuplot). Fails if gnuplot is missing, if the
# example reports a failed claim, or if the PNG is not a PNG.
set -euo pipefail
exe="$BSALLOC_BUILD/examples/game_frame"
out="$BSALLOC_OUT/memchart"
[ -x "$exe" ] || { echo "memchart: $exe not built (BSALLOC_BUILD_EXAMPLES=ON?)"; exit 1; }
command -v gnuplot >/dev/null || { echo "memchart: gnuplot is missing (scripts/setup.sh installs it)"; exit 1; }
rm -rf "$out"
mkdir -p "$out"
BSALLOC_MEMCHART="$BSALLOC_ROOT/scripts/memchart.sh" "$exe" "$out/game_frame.jsonl" >"$out/run.log" 2>&1 ||
  { cat "$out/run.log"; exit 1; }
png="$out/game_frame.png"
[ -s "$png" ] || { cat "$out/run.log"; echo "memchart: no chart at $png"; exit 1; }
head -c 8 "$png" | od -An -tx1 | grep -q "89 50 4e 47 0d 0a 1a 0a" || { echo "memchart: $png is not a PNG"; exit 1; }
echo "memchart: game_frame drew $(wc -l <"$out/game_frame.jsonl") samples into $png"
