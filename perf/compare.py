#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Before/after table of two perf/run.sh runs (their summary.csv files), as markdown.

  perf/compare.py BEFORE/summary.csv AFTER/summary.csv [--peer slab] [--label-before X]
                  [--label-after Y]

Per workload present in both runs: the peer's median ns per op in each run, its speed against
the fastest of jemalloc/mimalloc/tcmalloc *within the same run* (fastest ÷ peer: above 1, the
peer is faster), its median peak RSS and its peak RSS against the lowest of the other peers in
the same run (peer ÷ best: at most 1.2 is the goal). Runs made on different days or under
different load are compared through these within-run ratios, never through raw ns."""
import argparse
import csv
import sys

FAST_PEERS = ["jemalloc", "mimalloc", "tcmalloc"]
NOT_RSS_PEERS = {"object_pool"}


def load(path):
    runs = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            runs.setdefault(row["workload"], {})[row["peer"]] = row
    return runs


def num(row, key):
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return None


def ratios(by_peer, peer):
    """(ns, speed vs fastest and its name, peak MiB, rss vs best and its name) of `peer`."""
    me = by_peer.get(peer)
    if me is None:
        return None
    ns, rss = num(me, "ns_per_op"), num(me, "peak_rss_mib")
    fast = [(num(r, "ns_per_op"), p) for p, r in by_peer.items() if p in FAST_PEERS]
    fast = [f for f in fast if f[0]]
    speed = (min(fast)[0] / ns, min(fast)[1]) if fast and ns else (None, "")
    others = [(num(r, "peak_rss_mib"), p) for p, r in by_peer.items()
              if p != peer and p not in NOT_RSS_PEERS and p not in ("slab", "page")]
    others = [o for o in others if o[0]]
    mem = (rss / min(others)[0], min(others)[1]) if others and rss else (None, "")
    return ns, speed, rss, mem


def cell(v, spec, suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--peer", default="slab")
    ap.add_argument("--label-before", default="before")
    ap.add_argument("--label-after", default="after")
    a = ap.parse_args()
    before, after = load(a.before), load(a.after)
    b, n = a.label_before, a.label_after
    print(f"| workload | {a.peer} ns/op, {b} | {a.peer} ns/op, {n} | vs fastest, {b} | "
          f"vs fastest, {n} | peak MiB, {b} | peak MiB, {n} | peak RSS vs best, {b} | "
          f"peak RSS vs best, {n} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload in after:
        new = ratios(after[workload], a.peer)
        if new is None:
            continue
        old = ratios(before.get(workload, {}), a.peer) or (None, (None, ""), None, (None, ""))
        print(f"| {workload} | {cell(old[0], '.1f')} | {cell(new[0], '.1f')} | "
              f"{cell(old[1][0], '.2f', 'x')} | {cell(new[1][0], '.2f', 'x')} {new[1][1]} | "
              f"{cell(old[2], '.1f')} | {cell(new[2], '.1f')} | "
              f"{cell(old[3][0], '.2f', 'x')} | {cell(new[3][0], '.2f', 'x')} {new[3][1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
