#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Runs bsalloc_bench over every (peer, workload), repeated, and reports medians.

Each repetition runs every workload once per peer, peers in a fresh random order, one process
per run: the malloc family (glibc, jemalloc, mimalloc, tcmalloc) can only be compared in
separate processes, chosen by LD_PRELOAD. Writes, into --out:
  latest.csv    every run (raw)
  summary.csv   per workload and peer: medians, spread, ratios against slab_resource
  goals.csv     the issue's goals, measured (never asserted)
  machine.txt   where and how it ran
  report.md     the tables in Markdown (time, peak RSS, goals) for docs/perf.md
  *.png         one chart per workload group (gnuplot), unless --no-charts or no gnuplot
Ratios are peer ÷ slab for time and for peak RSS: above 1 means bsalloc's slab_resource wins.
Python 3 standard library only. perf/run.sh builds the program and calls this.
"""
import argparse
import csv
import datetime
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys

from perfcommon import FAST_PEERS, PRELOAD, cpu_model, fmt, gnuplot_terminal, preload_env, sh, \
    write_csv

REFERENCE = "slab"
# Peers that bsalloc_bench runs by name but does not --list (a full run leaves them out), with the
# peer whose workloads they share: `--peers slab,slab_hardened` runs both.
BY_NAME = {"slab_hardened": "slab"}
COLORS = {  # one colour per peer in every chart; bsalloc's in reds
    "slab": "#c0001a", "object_pool": "#ff7f0e", "page": "#f4a3a8", "std_sync": "#4c4c9d",
    "std_unsync": "#8c8cd0", "boost_sync": "#2ca02c", "glibc": "#7f7f7f",
    "jemalloc": "#17becf", "mimalloc": "#1f77b4", "tcmalloc": "#bcbd22",
    "requested": "#000000", "peak RSS": "#c0001a", "after free": "#ff7f0e",
    "after trim": "#2ca02c",
}
GROUP_TITLES = {
    "small": "Small objects: ns per allocate+free (lower is better)",
    "mixed_large": "Mixed 8 B-8 KiB, large 4 KiB-1 MiB, vector growth: ns per op",
    "containers": "pmr containers: ns per operation",
    "threads": f"Threads: wall-clock ns per op over all threads ({os.cpu_count()} cores)",
    "footprint": "Footprint: bytes requested at peak and RSS (MiB)",
}


def run_env(peer):
    return preload_env(peer)


def read_matrix(bench):
    out = subprocess.run([bench, "--list"], check=True, capture_output=True, text=True).stdout
    matrix = []  # (workload, group, small, [peers])
    for line in out.splitlines():
        name, group, kind, *peers = line.split()
        peers = [p for p in peers if p not in PRELOAD or os.path.exists(run_env(p)["LD_PRELOAD"])]
        matrix.append((name, group, kind == "small", peers))
    return matrix


def machine_info(argv):
    cpu = cpu_model()
    load = sh("cut -d' ' -f1-3 /proc/loadavg")
    libs = sh("dpkg-query -W -f='${Package} ${Version}\\n' libjemalloc2 libmimalloc2.0 "
              "libtcmalloc-minimal4 libboost-container1.74.0 2>/dev/null")
    return "\n".join([
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: {os.environ.get('BSALLOC_PERF_COMMAND') or ' '.join(argv)}",
        f"cpus: {os.cpu_count()} ({cpu})",
        f"load average at start: {load}",
        f"memory: {sh('grep MemTotal /proc/meminfo').split(':')[-1].strip()}",
        f"kernel: {platform.release()}",
        f"glibc: {platform.libc_ver()[1]}",
        f"compiler: {sh('g++ --version | head -n1')}",
        "allocators: " + "; ".join(libs.splitlines()),
    ]) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, help="path of bsalloc_bench")
    ap.add_argument("--quick", action="store_true", help="tiny op counts, 1 rep (smoke test)")
    ap.add_argument("--reps", type=int, help="repetitions (default 5, quick 1)")
    ap.add_argument("--out", help="output directory (default perf/results, quick: "
                    "perf/results/raw/quick)")
    ap.add_argument("--peers", help="comma-separated subset of peers")
    ap.add_argument("--workloads", help="comma-separated subset of workloads")
    ap.add_argument("--align", type=int, help="alignment of the untyped workloads' requests "
                    "(default: memory_resource's default, 16)")
    ap.add_argument("--no-charts", action="store_true")
    ap.add_argument("--seed", type=int, default=1, help="seed of the run order")
    ap.add_argument("--data-seeds", action="store_true",
                    help="repetition r draws the workloads' data with seed r (every peer the "
                         "same), so that medians span several draws rather than one")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: summarize the latest.csv already in --out again")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or (os.path.join(here, "results", "raw", "quick") if args.quick
                       else os.path.join(here, "results"))
    os.makedirs(out, exist_ok=True)
    reps = args.reps or (1 if args.quick else 5)

    matrix = read_matrix(args.bench)
    if args.workloads:
        keep = args.workloads.split(",")
        matrix = [m for m in matrix if m[0] in keep]
    if args.peers:
        keep = args.peers.split(",")
        # Peers run by name only (not in --list, so full runs leave them out) take part wherever
        # the peer they vary does.
        extra = {p: base for p, base in BY_NAME.items() if p in keep}
        matrix = [(w, g, s, [p for p in ps if p in keep] +
                   [p for p, base in extra.items() if base in ps]) for w, g, s, ps in matrix]
        unknown = [p for p in keep if not any(p in ps for *_, ps in matrix)]
        if unknown:
            sys.exit(f"run.py: no selected workload has peer(s) {', '.join(unknown)}")
    peer_order = [p for p in COLORS if any(p in ps for *_, ps in matrix)]
    for *_, ps in matrix:
        peer_order += [p for p in ps if p not in peer_order]

    if args.report_only:
        with open(os.path.join(out, "latest.csv")) as f:
            rows = list(csv.DictReader(f))
        failures = []
        reps = max(int(r["rep"]) for r in rows)
    else:
        rows, failures = run_all(args, matrix, out, reps)
    summary = summarize(rows, matrix, peer_order)
    write_csv(os.path.join(out, "summary.csv"), summary)
    goals = evaluate_goals(summary, matrix)
    write_csv(os.path.join(out, "goals.csv"), goals)
    print_table(summary, goals, reps)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown_report(summary, goals, matrix, peer_order, reps,
                                open(os.path.join(out, "machine.txt")).read()))
    if not args.no_charts:
        draw_charts(out, summary, matrix, peer_order)
    if failures:
        print(f"\n{len(failures)} run(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print(f"\nwrote {out}: latest.csv, summary.csv, goals.csv, report.md, machine.txt")
    return 0


def run_all(args, matrix, out, reps):
    """Every (peer, workload) once per repetition, peers shuffled; appends to latest.csv."""
    started = datetime.datetime.now()
    with open(os.path.join(out, "machine.txt"), "w") as f:
        f.write(machine_info(sys.argv))
    header = subprocess.run([args.bench, "--header"], check=True, capture_output=True,
                            text=True).stdout.strip()
    rows, failures = [], []
    total = reps * sum(len(ps) for *_, ps in matrix)
    order = random.Random(args.seed)
    done = 0
    with open(os.path.join(out, "latest.csv"), "w") as raw:
        raw.write("rep," + header + "\n")
        for rep in range(1, reps + 1):
            for workload, _, _, peers in matrix:
                peers = list(peers)
                order.shuffle(peers)
                for peer in peers:
                    done += 1
                    cmd = [args.bench, "--peer", peer, "--workload", workload]
                    if args.quick:
                        cmd.append("--quick")
                    if args.align:
                        cmd += ["--align", str(args.align)]
                    if args.data_seeds:
                        cmd += ["--seed", str(rep)]
                    try:
                        p = subprocess.run(cmd, env=run_env(peer), capture_output=True, text=True,
                                           timeout=60 if args.quick else 600)
                        ok = p.returncode == 0 and p.stdout.strip()
                        why = f"exit {p.returncode}: {p.stderr.strip()}"
                    except subprocess.TimeoutExpired:
                        ok, why = False, "timed out"
                    if not ok:
                        failures.append(f"{peer} {workload} rep {rep}: {why}")
                        print(f"  FAILED {failures[-1]}", file=sys.stderr)
                        continue
                    line = p.stdout.strip().splitlines()[-1]
                    raw.write(f"{rep},{line}\n")
                    raw.flush()
                    rows.append(dict(zip(["rep"] + header.split(","), [rep] + line.split(","))))
                    if not args.quick:
                        print(f"[{done}/{total}] rep {rep} {workload:<13} {peer:<11} "
                              f"{float(rows[-1]['ns_per_op']):10.1f} ns/op", flush=True)

    load = sh("cut -d' ' -f1-3 /proc/loadavg")
    with open(os.path.join(out, "machine.txt"), "a") as f:
        f.write(f"runs: {len(rows)} ({reps} repetitions), "
                f"{(datetime.datetime.now() - started).total_seconds():.0f} s, "
                f"load average at the end: {load}\n")
    return rows, failures


def median(xs):
    return statistics.median(xs) if xs else None


def summarize(rows, matrix, peer_order):
    summary = []
    for workload, group, small, peers in matrix:
        med = {}
        for peer in peers:
            rs = [r for r in rows if r["workload"] == workload and r["peer"] == peer]
            if not rs:
                continue
            ns = [float(r["ns_per_op"]) for r in rs]
            fp = [float(r["footprint"]) for r in rs if r["footprint"]]
            med[peer] = {
                "workload": workload, "group": group, "small": "yes" if small else "no",
                "peer": peer, "reps": len(rs), "threads": rs[0]["threads"],
                "ns_per_op": median(ns), "ns_min": min(ns), "ns_max": max(ns),
                "peak_rss_mib": median([int(r["peak_rss_kib"]) / 1024 for r in rs]),
                "peak_growth_mib": median([(int(r["peak_rss_kib"]) - int(r["rss_base_kib"])) / 1024
                                           for r in rs]),
                "rss_freed_mib": median([int(r["rss_freed_kib"]) / 1024 for r in rs]),
                "rss_trimmed_mib": median([int(r["rss_trimmed_kib"]) / 1024 for r in rs]),
                "footprint": median(fp),
                "requested_mib": median([int(r["peak_requested_kib"]) / 1024 for r in rs]),
            }
        ref = med.get(REFERENCE)
        for peer in sorted(med, key=peer_order.index):
            m = med[peer]
            m["time_vs_slab"] = m["ns_per_op"] / ref["ns_per_op"] if ref else None
            m["rss_vs_slab"] = m["peak_rss_mib"] / ref["peak_rss_mib"] if ref else None
            summary.append(m)
    return summary


def evaluate_goals(summary, matrix):
    """The issue's goals, per workload: measured, never asserted."""
    goals = []
    for workload, _, small, _ in matrix:
        med = {m["peer"]: m for m in summary if m["workload"] == workload}
        ref = med.get(REFERENCE)
        if not ref:
            continue
        others = [m for p, m in med.items() if p not in (REFERENCE, "object_pool")]
        if small and "std_sync" in med:
            x = med["std_sync"]["ns_per_op"] / ref["ns_per_op"]
            goals.append({"workload": workload, "goal": ">= 3x faster than std_sync",
                          "measured": f"{x:.2f}x", "met": "yes" if x >= 3 else "no"})
        fast = [med[p] for p in FAST_PEERS if p in med]
        if small and fast:
            best = min(fast, key=lambda m: m["ns_per_op"])
            x = best["ns_per_op"] / ref["ns_per_op"]
            goals.append({"workload": workload, "goal": "no slower than the fastest of "
                          "jemalloc/mimalloc/tcmalloc", "measured": f"{x:.2f}x vs {best['peer']}",
                          "met": "yes" if x >= 1 else "no (within 3 %)" if x >= 0.97 else "no"})
        if others:
            best = min(others, key=lambda m: m["peak_rss_mib"])
            x = ref["peak_rss_mib"] / best["peak_rss_mib"]
            goals.append({"workload": workload, "goal": "peak RSS <= 1.2x the best peer's",
                          "measured": f"{x:.2f}x of {best['peer']}",
                          "met": "yes" if x <= 1.2 else "no"})
    return goals


def print_table(summary, goals, reps):
    print(f"\nmedians of {reps} run(s); x slab = peer / slab (above 1: slab wins); MiB of RSS: "
          "peak, growth = peak - RSS before the workload, freed = after freeing everything, "
          "trimmed = after the peer's trim; fp = growth / peak bytes requested")
    print(f"{'workload':<13} {'peer':<11} {'ns/op':>9} {'min-max':>17} {'x slab':>7} "
          f"{'peak MiB':>9} {'x slab':>7} {'growth':>7} {'freed':>7} {'trimmed':>7} {'fp':>6}")
    last = None
    for m in summary:
        if last and m["workload"] != last:
            print()
        last = m["workload"]
        print(f"{m['workload']:<13} {m['peer']:<11} {m['ns_per_op']:9.1f} "
              f"{m['ns_min']:8.1f}-{m['ns_max']:<8.1f} {fmt(m['time_vs_slab'], '7.2f')} "
              f"{m['peak_rss_mib']:9.1f} {fmt(m['rss_vs_slab'], '7.2f')} {m['peak_growth_mib']:7.1f} "
              f"{m['rss_freed_mib']:7.1f} {m['rss_trimmed_mib']:7.1f} "
              f"{fmt(m['footprint'], '6.2f')}")
    if goals:
        met = sum(g["met"] == "yes" for g in goals)
        print(f"\ngoals (measured, not asserted): {met} of {len(goals)} met")
        for g in goals:
            print(f"  {g['met']:<15} {g['workload']:<13} {g['goal']:<52} {g['measured']}")


def markdown_report(summary, goals, matrix, peer_order, reps, machine):
    med = {(m["workload"], m["peer"]): m for m in summary}
    peers = [p for p in peer_order if any(k[1] == p for k in med)]
    lines = ["```", machine.strip(), "```", ""]

    def pivot(title, value, ratio, spec):
        lines.extend([f"{title}", "", "| workload | " + " | ".join(peers) + " |",
                      "|---|" + "---:|" * len(peers)])
        for w, *_ in matrix:
            cells = []
            for p in peers:
                m = med.get((w, p))
                if not m:
                    cells.append("")
                    continue
                r = m[ratio]
                cells.append(format(m[value], spec) + ("" if r is None or p == REFERENCE
                                                       else f" ({r:.2f}×)"))
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
        lines.append("")

    pivot(f"Median ns per op over {reps} runs (peer ÷ slab in brackets: above 1, slab is "
          "faster)", "ns_per_op", "time_vs_slab", ".1f")
    pivot("Median peak RSS in MiB (peer ÷ slab in brackets: above 1, slab uses less)",
          "peak_rss_mib", "rss_vs_slab", ".1f")
    fp = [m for m in summary if m["workload"] == "footprint"]
    if fp:
        lines.extend(["Footprint workload, MiB (requested at peak, peak RSS, after freeing "
                      "everything, after trim; fp = (peak − RSS before) ÷ requested)", "",
                      "| peer | requested | peak RSS | after free | after trim | fp |",
                      "|---|---:|---:|---:|---:|---:|"])
        for m in fp:
            lines.append(f"| {m['peer']} | {m['requested_mib']:.1f} | {m['peak_rss_mib']:.1f} | "
                         f"{m['rss_freed_mib']:.1f} | {m['rss_trimmed_mib']:.1f} | "
                         f"{fmt(m['footprint'], '.2f')} |")
        lines.append("")
    if goals:
        lines.extend(["Goals (measured, not asserted)", "", "| workload | goal | measured | met |",
                      "|---|---|---|---|"])
        lines.extend(f"| {g['workload']} | {g['goal']} | {g['measured']} | {g['met']} |"
                     for g in goals)
        lines.append("")
    return "\n".join(lines)


def draw_charts(out, summary, matrix, peer_order):
    if not shutil.which("gnuplot"):
        print("gnuplot not found: no charts", file=sys.stderr)
        return
    if not gnuplot_terminal(1100):
        print("gnuplot has no png terminal: no charts", file=sys.stderr)
        return
    med = {(m["workload"], m["peer"]): m for m in summary}
    groups = []
    for _, g, _, _ in matrix:
        if g not in groups:
            groups.append(g)
    charts = []
    for group in groups:
        wls = [w for w, g, _, _ in matrix if g == group]
        if group == "footprint":
            peers = [p for p in peer_order if ("footprint", p) in med]
            cols = [("requested_mib", "requested"), ("peak_rss_mib", "peak RSS"), ("rss_freed_mib", "after free"),
                    ("rss_trimmed_mib", "after trim")]
            rows = [[p] + [med[("footprint", p)][c] for c, _ in cols] for p in peers]
            names = [t for _, t in cols]
            ylabel, logy = "RSS (MiB)", False
        else:
            peers = [p for p in peer_order if any((w, p) in med for w in wls)]
            rows = [[w] + [med[(w, p)]["ns_per_op"] if (w, p) in med else None for p in peers]
                    for w in wls]
            names = peers
            ylabel, logy = "ns per op (median, log scale)", True
        charts.append((group, GROUP_TITLES.get(group, group), ylabel, logy, names, rows))
    # Peak RSS of every workload, one chart.
    peers = [p for p in peer_order if any(k[1] == p for k in med)]
    wls = [w for w, _, _, _ in matrix]
    rows = [[w] + [med[(w, p)]["peak_rss_mib"] if (w, p) in med else None for p in peers]
            for w in wls]
    charts.append(("peak_rss", "Peak RSS per workload (MiB, median, log scale)", "MiB", True,
                   peers, rows))
    for name, title, ylabel, logy, cols, rows in charts:
        term = gnuplot_terminal(min(1600, max(1100, 120 + 14 * len(cols) * len(rows))))
        dat = os.path.join(out, f"{name}.dat")
        with open(dat, "w") as f:
            for r in rows:
                f.write(" ".join([f'"{r[0]}"'] + ["?" if v is None else f"{v:.6g}" for v in r[1:]])
                        + "\n")
        script = "\n".join([
            f"set terminal {term}",
            f"set output '{os.path.join(out, name + '.png')}'",
            f"set title \"{title}\"",
            f"set ylabel \"{ylabel}\"",
            "set style data histogram",
            "set style histogram clustered gap 1",
            "set style fill solid 0.85 border -1",
            "set boxwidth 0.9",
            "set key outside right top",
            "set grid ytics",
            "set datafile missing '?'",
            "set yrange [*:*]",
            "set logscale y" if logy else "set yrange [0:*]",
            "set termoption noenhanced",
            "set xtics rotate by -25 nomirror" if len(rows) > 6 else "set xtics nomirror",
            "plot " + ", ".join(
                f"'{dat}' using {i + 2}{':xtic(1)' if i == 0 else ''} title \"{c}\" "
                f"lc rgb '{COLORS.get(c, '#444444')}'" for i, c in enumerate(cols)),
        ])
        p = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"gnuplot failed on {name}: {p.stderr.strip()}", file=sys.stderr)
        os.remove(dat)
    print(f"charts: {', '.join(c[0] + '.png' for c in charts)}")


if __name__ == "__main__":
    sys.exit(main())
