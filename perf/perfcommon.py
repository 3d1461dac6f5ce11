# SPDX-License-Identifier: Apache-2.0
"""What perf/run.py (bsalloc_bench) and perf/malloc/run.py (the malloc drop-in) share: the peer
malloc libraries and their LD_PRELOAD environment, shell helpers, the CSV writer, number
formatting and gnuplot's terminal."""
import csv
import os
import subprocess

LIBDIR = "/usr/lib/x86_64-linux-gnu"
PRELOAD = {
    "jemalloc": "libjemalloc.so.2",
    "mimalloc": "libmimalloc.so.2",
    "tcmalloc": "libtcmalloc_minimal.so.4",
}
FAST_PEERS = ["jemalloc", "mimalloc", "tcmalloc"]


def preload_env(peer, own=None):
    """The environment for running `peer`: its malloc preloaded (own: a library to preload
    for the peer named "bsalloc"), no LD_PRELOAD otherwise."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if peer == "bsalloc" and own:
        env["LD_PRELOAD"] = own
    elif peer in PRELOAD:
        env["LD_PRELOAD"] = os.path.join(LIBDIR, PRELOAD[peer])
    return env


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def cpu_model():
    return sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def gnuplot_terminal(width):
    """A png terminal gnuplot has (pngcairo preferred), or None."""
    for term in (f"pngcairo size {width},520 font ',10'", f"png size {width},520"):
        if subprocess.run(["gnuplot", "-e", f"set terminal {term}"], capture_output=True,
                          input="").returncode == 0:
            return term
    return None
