#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Prints the README's Results table from a run's summary (perf/results/summary.csv).

Per workload: slab_resource's median ns/op; the std synchronized pool's time over slab's; the
fastest of jemalloc/mimalloc/tcmalloc over slab's (above 1: slab is faster); slab's peak RSS
over the smallest peak of the peers that are not bsalloc's own (slab, page, object_pool).

    python3 perf/readme_table.py [perf/results/summary.csv]
"""
import csv
import sys

LABELS = {
    "lifo": "lifo (16–256 B)",
    "fifo": "fifo (16–256 B)",
    "objects": "objects (64 B, typed)",
    "mixed": "mixed (8 B–8 KiB, 40 MiB)",
    "large": "large (4 KiB–1 MiB, pages written)",
    "umap": "unordered_map",
    "threads2": "2 threads",
    "prodcons": "producer/consumer",
    "threads_many": "8 threads (4× cores)",
    "many_resources": "32 resources, one thread",
    "large_touch64": "large_touch64 (4–256 KiB, 64 B written)",
    "large_threads8": "large_threads8 (8 threads)",
    "containers_mix": "containers_mix (pmr containers)",
}
PRODUCTION = ("jemalloc", "mimalloc", "tcmalloc")
OURS = ("slab", "page", "object_pool")


def main(path):
    rows = {}
    order = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["workload"] not in rows:
                rows[r["workload"]] = {}
                order.append(r["workload"])
            rows[r["workload"]][r["peer"]] = r
    print("| workload | slab_resource ns/op | ÷ std sync pool | "
          "÷ fastest of jemalloc/mimalloc/tcmalloc | peak RSS ÷ best peer |")
    print("|---|---:|---:|---:|---:|")
    for w in order:
        peers = rows[w]
        if "slab" not in peers:
            continue
        slab = float(peers["slab"]["ns_per_op"])
        std = f"{float(peers['std_sync']['ns_per_op']) / slab:.1f}× faster" \
            if "std_sync" in peers else "–"
        prod = [(float(peers[p]["ns_per_op"]), p) for p in PRODUCTION if p in peers]
        fast = "–"
        if prod:
            ns, who = min(prod)
            ratio = ns / slab
            fast = f"{ratio:.2f}× faster ({who})" if ratio >= 1 else f"{ratio:.2f}× ({who})"
        others = [(float(r["peak_rss_mib"]), p) for p, r in peers.items() if p not in OURS]
        rss = "–"
        if others:
            mib, who = min(others)
            rss = f"{float(peers['slab']['peak_rss_mib']) / mib:.2f}× ({who})"
        print(f"| {LABELS.get(w, w)} | {slab:.1f} | {std} | {fast} | {rss} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "perf/results/summary.csv")
