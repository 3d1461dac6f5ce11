#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Runs the malloc drop-in comparison: bsalloc_mbench's workloads and real programs, every
malloc by LD_PRELOAD, repeated and interleaved, and reports medians.

Each repetition runs every workload and program once per peer, peers in a fresh random order,
one process per run. Peers: glibc (no preload), jemalloc, mimalloc, tcmalloc (Debian's
libraries), bsalloc (libbsalloc_malloc.so, --so). Writes, into --out:
  latest.csv   every run (raw)
  summary.csv  per workload and peer: medians, spread, ratios
  report.md    the tables in Markdown for docs/perf.md
  machine.txt  where and how it ran
  malloc_time.png, malloc_rss.png, programs.png   charts (gnuplot), unless --no-charts
Time ratios are peer / best (the fastest of jemalloc, mimalloc, tcmalloc) and peer / glibc:
below 1, the peer is faster. Peak RSS ratios are peer / the smallest peak of all peers.
The programs' outputs must be the same under every malloc, or the run counts as failed.
Python 3 standard library only. perf/malloc/run.sh builds the program and calls this.
"""
import argparse
import csv
import datetime
import hashlib
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from perfcommon import FAST_PEERS, LIBDIR, PRELOAD, cpu_model, fmt, gnuplot_terminal, \
    loadavg, preload_env, sh, write_csv  # noqa: E402

PEERS = ["bsalloc", "glibc", "jemalloc", "mimalloc", "tcmalloc"]
COLORS = {"bsalloc": "#c0001a", "glibc": "#7f7f7f", "jemalloc": "#17becf",
          "mimalloc": "#1f77b4", "tcmalloc": "#bcbd22"}
HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = ["python", "sqlite3", "perl", "g++"]


def run_env(peer, so):
    return preload_env(peer, so)


def so_info(so):
    if not so:
        return "(no libbsalloc_malloc.so: not run)"
    with open(so, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return f"{os.path.basename(so)} (sha256 {digest}, {os.path.getsize(so)} bytes)"


def machine_info(args):
    libs = sh("dpkg-query -W -f='${Package} ${Version}\\n' libjemalloc2 libmimalloc2.0 "
              "libtcmalloc-minimal4 2>/dev/null")
    commit = sh(f"git -C '{HERE}' log -1 --format='%h %s'")
    dirty = sh(f"git -C '{HERE}' status --porcelain -- ':(top)' ':(top,exclude)perf/results'")
    dirty = " (with uncommitted changes)" if dirty else ""
    cpu = cpu_model()
    return "\n".join([
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: {os.environ.get('BSALLOC_PERF_COMMAND') or ' '.join(sys.argv)}",
        f"commit: {commit}{dirty}",
        f"cpus: {os.cpu_count()} ({cpu})",
        f"load average at start: {loadavg()}",
        f"kernel: {os.uname().release}",
        f"bsalloc: {so_info(args.so)}",
        "allocators: " + "; ".join(libs.splitlines()),
    ]) + "\n"


def prepare_programs(args, work):
    """Commands of the real programs (name -> (argv, stdin file, env extra)); generates the
    sqlite3 database under glibc first (not timed)."""
    smoke = args.smoke
    python = sh("python3 -c 'import sys; print(sys.executable)'") or "python3"
    progs = {}
    if shutil.which(python):
        progs["python"] = ([python, os.path.join(HERE, "programs", "work.py"),
                            "1" if smoke else "10"], None, {"PYTHONMALLOC": "malloc"})
    if shutil.which("sqlite3"):
        db = os.path.join(work, "items.db")
        if os.path.exists(db):
            os.remove(db)
        gen = (f"CREATE TABLE rows(n); INSERT INTO rows VALUES({5000 if smoke else 200000});\n"
               + open(os.path.join(HERE, "programs", "gen.sql")).read())
        subprocess.run(["sqlite3", db], input=gen, text=True, check=True, env=run_env("glibc", ""))
        progs["sqlite3"] = (["sqlite3", "-batch", db],
                            os.path.join(HERE, "programs", "queries.sql"), {})
    if shutil.which("perl"):
        progs["perl"] = (["perl", os.path.join(HERE, "programs", "work.pl"),
                          "1" if smoke else "10"], None, {})
    if shutil.which("g++"):
        flags = ["-O0", "-fsyntax-only"] if smoke else ["-O2", "-c", "-o", os.devnull]
        progs["g++"] = (["g++", "-std=c++20", *flags, os.path.join(HERE, "mbench.cpp")], None,
                        {})
    missing = [p for p in PROGRAMS if p not in progs]
    if missing:
        print(f"not found, not run: {', '.join(missing)}", file=sys.stderr)
    return progs


def run_program(mbench, argv, stdin, env, timeout, rss_file):
    """Wall time, peak RSS (KiB) and a digest of the output of one run of a real program.
    bsalloc_mbench --spawn starts it and reports wait4()'s ru_maxrss (the process and its
    waited-for children: g++'s cc1plus too); a direct child of this Python process would keep
    this process's peak RSS across exec."""
    fin = open(stdin) if stdin else subprocess.DEVNULL
    t0 = time.perf_counter()
    try:
        p = subprocess.run([mbench, "--spawn", rss_file, "--", *argv], stdin=fin,
                           capture_output=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, None, "timed out"
    finally:
        if stdin:
            fin.close()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return None, None, None, f"exit {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}"
    with open(rss_file) as f:
        rss = int(f.read())
    return wall, hashlib.sha1(p.stdout).hexdigest()[:12], rss, ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reps", nargs="?", type=int, help="repetitions (default 5, smoke 1)")
    ap.add_argument("--mbench", required=True, help="path of bsalloc_mbench")
    ap.add_argument("--so", help="libbsalloc_malloc.so (absent: bsalloc is not run)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 rep: seconds (CI)")
    ap.add_argument("--out", help="output directory (default perf/results/malloc, smoke: "
                    "perf/results/raw/malloc-smoke)")
    ap.add_argument("--peers", help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--workloads", help="comma-separated subset of the workloads and programs")
    ap.add_argument("--no-programs", action="store_true", help="only bsalloc_mbench's workloads")
    ap.add_argument("--no-charts", action="store_true")
    ap.add_argument("--seed", type=int, default=1, help="seed of the run order")
    ap.add_argument("--callgrind", action="store_true",
                    help="instead: instructions per op in the malloc calls (valgrind's "
                    "callgrind, smoke sizes, one run per peer: exact, not timed) -> "
                    "callgrind.csv, callgrind.md")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: summarize the latest.csv already in --out again")
    args = ap.parse_args()
    out = args.out or os.path.join(HERE, "..", "results",
                                   *(["raw", "malloc-smoke"] if args.smoke else ["malloc"]))
    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    reps = args.reps or (1 if args.smoke else 5)
    if args.so and not os.path.exists(args.so):
        print(f"no {args.so}", file=sys.stderr)
        return 1
    peers = [p for p in PEERS if (p != "bsalloc" or args.so)
             and (p not in PRELOAD or os.path.exists(os.path.join(LIBDIR, PRELOAD[p])))]
    if args.peers:
        peers = [p for p in peers if p in args.peers.split(",")]
    listing = subprocess.run([args.mbench, "--list"], check=True, capture_output=True,
                             text=True).stdout
    workloads = [line.split("\t")[0] for line in listing.splitlines()]
    if args.workloads:
        workloads = [w for w in workloads if w in args.workloads.split(",")]
    if args.callgrind:
        return run_callgrind(args, out, peers, workloads)
    if args.report_only:
        with open(os.path.join(out, "latest.csv")) as f:
            rows = list(csv.DictReader(f))
        failures = []
        reps = max(int(r["rep"]) for r in rows)
    else:
        rows, failures = run_all(args, out, reps, peers, workloads)
    summary = summarize(rows)
    write_csv(os.path.join(out, "summary.csv"), summary)
    machine = open(os.path.join(out, "machine.txt")).read()
    print_table(summary, reps)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(markdown_report(summary, reps, machine))
    if not args.no_charts:
        draw_charts(out, summary)
    if failures:
        print(f"\n{len(failures)} run(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print(f"\nwrote {out}: latest.csv, summary.csv, report.md, machine.txt")
    return 0


def run_all(args, out, reps, peers, workloads):
    with open(os.path.join(out, "machine.txt"), "w") as f:
        f.write(machine_info(args))
    started = time.time()
    work = tempfile.mkdtemp(prefix="bsalloc-malloc-perf-")  # the database, rss.txt
    args.work_dir = work
    progs = {} if args.no_programs else prepare_programs(args, work)
    jobs = [("mbench", w) for w in workloads] + [("program", p) for p in progs]
    if args.workloads:
        keep = args.workloads.split(",")
        jobs = [j for j in jobs if j[1] in keep]
    order = random.Random(args.seed)
    rows, failures = [], []
    total, done = reps * len(jobs) * len(peers), 0
    timeout = 120 if args.smoke else 900
    fields = ["rep", "kind", "workload", "peer", "threads", "ops", "ns_per_op", "wall_s",
              "peak_rss_kib", "rss_base_kib", "shared_line_pct", "digest"]
    with open(os.path.join(out, "latest.csv"), "w", newline="") as raw:
        w = csv.DictWriter(raw, fieldnames=fields)
        w.writeheader()
        for rep in range(1, reps + 1):
            for kind, name in jobs:
                ps = list(peers)
                order.shuffle(ps)
                digests = {}
                for peer in ps:
                    done += 1
                    row, why = run_one(args, kind, name, peer, progs, timeout)
                    if row is None:
                        failures.append(f"{peer} {name} rep {rep}: {why}")
                        print(f"  FAILED {failures[-1]}", file=sys.stderr)
                        continue
                    row["rep"] = rep
                    if kind == "program":
                        digests[peer] = row["digest"]
                    w.writerow(row)
                    raw.flush()
                    rows.append(row)
                    if not args.smoke:
                        v = (f"{row['ns_per_op']:10.1f} ns/op" if kind == "mbench"
                             else f"{row['wall_s']:10.3f} s")
                        print(f"[{done}/{total}] rep {rep} {name:<14} {peer:<9} {v} "
                              f"{int(row['peak_rss_kib']) / 1024:8.1f} MiB", flush=True)
                if len(set(digests.values())) > 1:
                    failures.append(f"{name} rep {rep}: the output differs between mallocs: "
                                    f"{digests}")
                    print(f"  FAILED {failures[-1]}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(out, "machine.txt"), "a") as f:
        f.write(f"runs: {len(rows)} ({reps} repetitions), {time.time() - started:.0f} s, "
                f"load average at the end: {loadavg()}\n")
    return rows, failures


def run_one(args, kind, name, peer, progs, timeout):
    env = run_env(peer, args.so)
    if kind == "mbench":
        cmd = [args.mbench, "--workload", name, "--expect", peer]
        if args.smoke:
            cmd.append("--smoke")
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "timed out"
        if p.returncode != 0 or not p.stdout.strip():
            return None, f"exit {p.returncode}: {p.stderr.strip()[-400:]}"
        wl, _, threads, ops, ns, rss, base, shared = p.stdout.strip().splitlines()[-1].split(",")
        return {"kind": kind, "workload": wl, "peer": peer, "threads": int(threads),
                "ops": int(ops), "ns_per_op": float(ns), "wall_s": "",
                "peak_rss_kib": int(rss), "rss_base_kib": int(base), "shared_line_pct": shared,
                "digest": ""}, ""
    argv, stdin, extra = progs[name]
    env.update(extra)
    wall, digest, rss, why = run_program(args.mbench, argv, stdin, env, timeout,
                                         os.path.join(args.work_dir, "rss.txt"))
    if wall is None:
        return None, why
    return {"kind": kind, "workload": name, "peer": peer, "threads": "", "ops": "",
            "ns_per_op": "", "wall_s": wall, "peak_rss_kib": rss, "rss_base_kib": "",
            "shared_line_pct": "", "digest": digest}, ""


def run_callgrind(args, out, peers, workloads):
    """Instructions inside mb_malloc / mb_free / mb_realloc (bsalloc_mbench's probes around
    every call), per op of the workload at smoke size. Threads run one at a time under
    valgrind; the fills and frees outside the timed part are in the count, the same for every
    peer."""
    if not shutil.which("valgrind"):
        print("valgrind not found", file=sys.stderr)
        return 1
    # The false-sharing workloads' op is a write, not a malloc call: nothing to count per op.
    workloads = [w for w in workloads if not w.startswith("false_")]
    rows, failures = [], []
    for w in workloads:
        for peer in peers:
            cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                   "--toggle-collect=mb_malloc", "--toggle-collect=mb_free",
                   "--toggle-collect=mb_realloc", args.mbench, "--workload", w, "--smoke",
                   "--expect", peer]
            p = subprocess.run(cmd, env=run_env(peer, args.so), capture_output=True, text=True,
                               timeout=900)
            got = [ln.split()[-1] for ln in p.stderr.splitlines() if "Collected :" in ln]
            if p.returncode != 0 or not got or not p.stdout.strip():
                failures.append(f"{peer} {w}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
                print(f"  FAILED {failures[-1]}", file=sys.stderr)
                continue
            ops = int(p.stdout.strip().splitlines()[-1].split(",")[3])
            rows.append({"workload": w, "peer": peer, "ops": ops, "instructions": int(got[0]),
                         "per_op": int(got[0]) / ops})
            print(f"  {w:<14} {peer:<9} {rows[-1]['per_op']:9.1f} instructions/op", flush=True)
    for r in rows:
        fast = [x["per_op"] for x in rows if x["workload"] == r["workload"]
                and x["peer"] in FAST_PEERS]
        r["x_best"] = r["per_op"] / min(fast) if fast else None
    write_csv(os.path.join(out, "callgrind.csv"), rows)
    lines = ["Instructions per op inside malloc/free/realloc (callgrind, smoke sizes; ÷ the "
             "fewest of jemalloc/mimalloc/tcmalloc in brackets)", "",
             "| | " + " | ".join(peers) + " |", "|---|" + "---:|" * len(peers)]
    for w in workloads:
        cells = []
        for peer in peers:
            r = [x for x in rows if x["workload"] == w and x["peer"] == peer]
            cells.append(f"{r[0]['per_op']:.0f} ({fmt(r[0]['x_best'], '.2f')}×)" if r else "")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines.append("| **geomean ÷ fewest** | " + " | ".join(
        fmt(geomean([x["x_best"] for x in rows if x["peer"] == p]), ".2f") + "×"
        for p in peers) + " |")
    with open(os.path.join(out, "callgrind.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    if failures:
        print(f"\n{len(failures)} run(s) failed:", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def summarize(rows):
    """Per (workload, peer): medians and ratios. The time is ns per op for the workloads and
    seconds of wall-clock for the programs."""
    names = []
    for r in rows:
        if r["workload"] not in names:
            names.append(r["workload"])
    summary = []
    for name in names:
        med = {}
        for peer in PEERS:
            rs = [r for r in rows if r["workload"] == name and r["peer"] == peer]
            if not rs:
                continue
            kind = rs[0]["kind"]
            t = [float(r["ns_per_op"] if kind == "mbench" else r["wall_s"]) for r in rs]
            shared = [float(r["shared_line_pct"]) for r in rs if r["shared_line_pct"] != ""]
            med[peer] = {"kind": kind, "workload": name, "peer": peer, "reps": len(rs),
                         "time": statistics.median(t), "time_min": min(t), "time_max": max(t),
                         "unit": "ns/op" if kind == "mbench" else "s",
                         "peak_rss_mib": statistics.median(
                             [int(r["peak_rss_kib"]) / 1024 for r in rs]),
                         "rss_base_mib": statistics.median(
                             [int(r["rss_base_kib"]) / 1024 for r in rs])
                         if kind == "mbench" else None,
                         "shared_line_pct": statistics.median(shared) if shared else None}
        fast = [med[p]["time"] for p in FAST_PEERS if p in med]
        best = min(fast) if fast else None
        glibc = med["glibc"]["time"] if "glibc" in med else None
        least = min(m["peak_rss_mib"] for m in med.values())
        for m in med.values():
            m["x_best"] = m["time"] / best if best else None
            m["x_glibc"] = m["time"] / glibc if glibc else None
            m["rss_x_least"] = m["peak_rss_mib"] / least
            summary.append(m)
    return summary


def geomeans(summary, kind):
    """Per peer: geometric means over the workloads (or programs) of the three ratios."""
    out = {}
    for peer in PEERS:
        ms = [m for m in summary if m["peer"] == peer and m["kind"] == kind]
        if ms:
            out[peer] = (geomean([m["x_best"] for m in ms]), geomean([m["x_glibc"] for m in ms]),
                         geomean([m["rss_x_least"] for m in ms]), len(ms))
    return out


def print_table(summary, reps):
    print(f"\nmedians of {reps} run(s); x best = time / the fastest of jemalloc, mimalloc, "
          "tcmalloc; x glibc = time / glibc's; x least = peak RSS / the smallest peak; base = "
          "RSS before the workload; shared = % of the blocks on a cache line with another "
          "thread's block")
    print(f"{'workload':<14} {'peer':<9} {'time':>10} {'unit':<5} {'min-max':>19} "
          f"{'x best':>7} {'x glibc':>7} {'peak MiB':>9} {'x least':>7} {'base':>6} {'shared':>6}")
    last = None
    for m in summary:
        if last and m["workload"] != last:
            print()
        last = m["workload"]
        print(f"{m['workload']:<14} {m['peer']:<9} {m['time']:10.4g} {m['unit']:<5} "
              f"{m['time_min']:9.4g}-{m['time_max']:<9.4g} {fmt(m['x_best'], '7.2f')} "
              f"{fmt(m['x_glibc'], '7.2f')} {m['peak_rss_mib']:9.1f} {m['rss_x_least']:7.2f} "
              f"{fmt(m['rss_base_mib'], '6.1f')} "
              f"{fmt(m['shared_line_pct'], '6.1f')}")
    for kind, what in (("mbench", "workloads"), ("program", "programs")):
        g = geomeans(summary, kind)
        if g:
            print(f"\ngeometric means over the {what}: x best, x glibc, peak RSS x least")
            for peer, (b, gl, r, n) in g.items():
                print(f"  {peer:<9} {fmt(b, '6.2f')} {fmt(gl, '6.2f')} {fmt(r, '6.2f')}  ({n})")
    gs = goals(summary)
    if gs:
        print(f"\nbsalloc against the goals (measured, not asserted): "
              f"{sum(ok == 'yes' for *_, ok in gs)} of {len(gs)} met")
        for g, m, ok in gs:
            print(f"  {ok:<4} {g:<70} {m}")


def markdown_report(summary, reps, machine):
    peers = [p for p in PEERS if any(m["peer"] == p for m in summary)]
    lines = ["```", machine.strip(), "```", ""]
    for kind, title in (("mbench", f"Workloads: median ns per op over {reps} runs"),
                        ("program", f"Real programs: median wall-clock seconds over {reps} runs")):
        ms = [m for m in summary if m["kind"] == kind]
        if not ms:
            continue
        names = list(dict.fromkeys(m["workload"] for m in ms))
        med = {(m["workload"], m["peer"]): m for m in ms}
        ratio, versus = (("x_best", "the fastest of jemalloc/mimalloc/tcmalloc")
                         if kind == "mbench" else ("x_glibc", "glibc"))
        lines += [f"{title} (÷ {versus} in brackets; below 1, faster)", "",
                  "| | " + " | ".join(peers) + " |", "|---|" + "---:|" * len(peers)]
        for n in names:
            cells = [(f"{med[(n, p)]['time']:.4g} ({fmt(med[(n, p)][ratio], '.2f')}×)"
                      if (n, p) in med else "") for p in peers]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        g = geomeans(summary, kind)
        lines.append("| **geomean ÷ best** | " + " | ".join(
            fmt(g[p][0], ".2f") + "×" if p in g else "" for p in peers) + " |")
        lines.append("| **geomean ÷ glibc** | " + " | ".join(
            fmt(g[p][1], ".2f") + "×" if p in g else "" for p in peers) + " |")
        lines += ["", "Peak RSS, MiB (÷ the smallest peak in brackets"
                  + ("; RSS before the workload after the slash)" if kind == "mbench" else ")"),
                  "",
                  "| | " + " | ".join(peers) + " |", "|---|" + "---:|" * len(peers)]
        for n in names:
            cells = [(f"{med[(n, p)]['peak_rss_mib']:.1f} ({med[(n, p)]['rss_x_least']:.2f}×)"
                      + (f" / {med[(n, p)]['rss_base_mib']:.1f}" if kind == "mbench" else "")
                      if (n, p) in med else "") for p in peers]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("| **geomean** | " + " | ".join(
            fmt(g[p][2], ".2f") + "×" if p in g else "" for p in peers) + " |")
        lines.append("")
        shared = [m for m in ms if m["shared_line_pct"] is not None]
        if shared:
            lines += ["False sharing: % of the blocks on a 64-byte line with another thread's "
                      "block", "", "| | " + " | ".join(peers) + " |",
                      "|---|" + "---:|" * len(peers)]
            for n in dict.fromkeys(m["workload"] for m in shared):
                lines.append(f"| {n} | " + " | ".join(
                    fmt(med[(n, p)]["shared_line_pct"], ".1f") if (n, p) in med else ""
                    for p in peers) + " |")
            lines.append("")
    gs = goals(summary)
    if gs:
        lines += ["bsalloc against the issue's goals (measured, not asserted)", "",
                  "| goal | measured | met |", "|---|---|---|"]
        lines += [f"| {g} | {m} | {ok} |" for g, m, ok in gs]
        lines.append("")
    return "\n".join(lines)


def goals(summary):
    """bsalloc against the issue's goals: (goal, measured, met) rows."""
    rows = []
    g = geomeans(summary, "mbench").get("bsalloc")
    if g and g[0] is not None:
        rows.append(("geometric mean of time ≤ the fastest of jemalloc/mimalloc/tcmalloc",
                     f"{g[0]:.2f}×", "yes" if g[0] <= 1 else "no"))
    for m in summary:
        if m["peer"] != "bsalloc":
            continue
        others = [o["peak_rss_mib"] for o in summary
                  if o["workload"] == m["workload"] and o["peer"] != "bsalloc"]
        if others:
            x = m["peak_rss_mib"] / min(others)
            rows.append((f"{m['workload']}: peak RSS ≤ 1.2× the best peer's", f"{x:.2f}×",
                         "yes" if x <= 1.2 else "no"))
        if m["kind"] == "program" and m["x_glibc"] is not None:
            rows.append((f"{m['workload']}: no slower than glibc", f"{m['x_glibc']:.2f}×",
                         "yes" if m["x_glibc"] <= 1 else "no"))
    return rows


def draw_charts(out, summary):
    if not shutil.which("gnuplot"):
        print("gnuplot not found: no charts", file=sys.stderr)
        return
    term = gnuplot_terminal(1100)
    if term is None:
        print("gnuplot has no png terminal: no charts", file=sys.stderr)
        return
    peers = [p for p in PEERS if any(m["peer"] == p for m in summary)]
    charts = [
        ("malloc_time", "mbench", "x_best",
         "Time / the fastest of jemalloc, mimalloc, tcmalloc (median; below 1 is faster)",
         "ratio (log scale)", True),
        ("malloc_rss", "mbench", "peak_rss_mib", "Peak RSS per workload (MiB, median)",
         "MiB (log scale)", True),
        ("programs", "program", "x_glibc",
         "Real programs: wall-clock / glibc's (median; below 1 is faster)", "ratio", False),
    ]
    made = []
    for name, kind, value, title, ylabel, logy in charts:
        ms = [m for m in summary if m["kind"] == kind]
        if not ms:
            continue
        if all(m[value] is None for m in ms):
            continue  # e.g. no fast peer ran: no ratio to draw
        med = {(m["workload"], m["peer"]): m for m in ms}
        names = list(dict.fromkeys(m["workload"] for m in ms))
        dat = os.path.join(out, f"{name}.dat")
        with open(dat, "w") as f:
            for n in names:
                vals = [med[(n, p)][value] if (n, p) in med else None for p in peers]
                f.write(" ".join([f'"{n}"'] + ["?" if v is None else f"{v:.6g}" for v in vals])
                        + "\n")
        script = "\n".join([
            f"set terminal {term}", f"set output '{os.path.join(out, name + '.png')}'",
            f"set title \"{title}\"", f"set ylabel \"{ylabel}\"", "set style data histogram",
            "set style histogram clustered gap 1", "set style fill solid 0.85 border -1",
            "set boxwidth 0.9", "set key outside right top", "set grid ytics",
            "set datafile missing '?'", "set termoption noenhanced",
            "set logscale y" if logy else "set yrange [0:*]", "set xtics nomirror",
            "plot " + ", ".join(
                f"'{dat}' using {i + 2}{':xtic(1)' if i == 0 else ''} title \"{p}\" "
                f"lc rgb '{COLORS[p]}'" for i, p in enumerate(peers)),
        ])
        p = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
        if p.returncode != 0:
            print(f"gnuplot failed on {name}: {p.stderr.strip()}", file=sys.stderr)
        else:
            made.append(name + ".png")
        os.remove(dat)
    print(f"charts: {', '.join(made)}")


if __name__ == "__main__":
    sys.exit(main())
