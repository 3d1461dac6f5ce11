#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Draws memory over time from a bsalloc::memory_sampler file (one JSON line per frame):
# one line per budget (bytes in use), its limit dashed in the same colour, and every extra
# series (slab/page totals) as a thin line.
#   scripts/memchart.sh memory.jsonl memory.png ["title"]
# Needs python3 and gnuplot (pngcairo, or png). Exits non-zero if the input has no sample.
set -euo pipefail
in=${1:?usage: memchart.sh SAMPLES.jsonl OUT.png [TITLE]}
out=${2:?usage: memchart.sh SAMPLES.jsonl OUT.png [TITLE]}
title=${3:-memory over time}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# JSON lines -> one data file (frame, then per column MiB or "NaN") and the plot commands.
python3 - "$in" "$tmp" "$title" "$out" <<'PY'
import json, sys
src, tmp, title, out = sys.argv[1:5]
rows, budgets, limits, series = [], [], {}, []
with open(src) as f:
    for n, text in enumerate(f, 1):
        text = text.strip()
        if not text:
            continue
        try:
            rec = json.loads(text)
        except ValueError as e:
            sys.exit(f"memchart: {src}:{n}: not JSON ({e})")
        row = {"frame": rec["frame"]}
        for b in rec.get("budgets", []):
            if b["name"] not in budgets:
                budgets.append(b["name"])
            row["b:" + b["name"]] = b["in_use"]
            if b.get("limit") is not None:
                row["l:" + b["name"]] = b["limit"]
                limits[b["name"]] = True
        for k, v in rec.get("series", {}).items():
            if k not in series:
                series.append(k)
            row["s:" + k] = v
        rows.append(row)
if not rows:
    sys.exit(f"memchart: {src}: no sample")
cols = [("b:" + b) for b in budgets] + [("l:" + b) for b in budgets if b in limits] + \
       [("s:" + s) for s in series]
mib = 1024.0 * 1024.0
top = max([v for r in rows for k, v in r.items() if k != "frame"] + [1]) / mib * 1.12
with open(f"{tmp}/data.tsv", "w") as f:
    for r in rows:
        vals = ["%.4f" % (r[c] / mib) if c in r else "NaN" for c in cols]
        f.write("\t".join([str(r["frame"])] + vals) + "\n")
def q(s):
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("_", "\\\\_")
plots = []
for i, b in enumerate(budgets):
    plots.append(f'"{tmp}/data.tsv" using 1:{cols.index("b:" + b) + 2} with lines lw 2.5 '
                 f'lc {i + 1} title "{q(b)}"')
    if b in limits:
        plots.append(f'"{tmp}/data.tsv" using 1:{cols.index("l:" + b) + 2} with lines lw 1.5 '
                     f'dt 2 lc {i + 1} title "{q(b)} limit"')
for j, s in enumerate(series):
    plots.append(f'"{tmp}/data.tsv" using 1:{cols.index("s:" + s) + 2} with lines lw 1 '
                 f'dt 3 lc rgb "#555555" title "{q(s)}"' if j == 0 else
                 f'"{tmp}/data.tsv" using 1:{cols.index("s:" + s) + 2} with lines lw 1 '
                 f'dt {4 + j % 3} lc rgb "#888888" title "{q(s)}"')
with open(f"{tmp}/plot.gp", "w") as f:
    f.write(f'''set output "{out}"
set title "{q(title)}"
set xlabel "frame"
set ylabel "MiB"
set key outside right top vertical
set grid ytics lc rgb "#dddddd"
set yrange [0:{top:.3f}]
set datafile missing "NaN"
plot {", ".join(plots)}
''')
PY

for term in "pngcairo size 1100,560 font ',10'" "png size 1100,560"; do
  if gnuplot -e "set terminal $term" "$tmp/plot.gp" 2>"$tmp/err"; then
    echo "memchart: wrote $out"
    exit 0
  fi
done
cat "$tmp/err" >&2
echo "memchart: gnuplot failed" >&2
exit 1
