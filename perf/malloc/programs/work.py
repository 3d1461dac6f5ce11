# SPDX-License-Identifier: Apache-2.0
"""A Python workload for the malloc comparison (run with PYTHONMALLOC=malloc, so every object
goes through malloc): dicts of strings, lists of tuples, JSON round trips, sorting, string
building. Deterministic; prints a digest so runs under different mallocs can be compared.
Usage: python3 work.py [scale]"""
import hashlib
import json
import random
import sys

scale = int(sys.argv[1]) if len(sys.argv) > 1 else 10
r = random.Random(1)
h = hashlib.sha256()
for rnd in range(scale):
    d = {}
    for i in range(20000):
        k = f"key-{r.randrange(1 << 20):x}-{i % 97}"
        d[k] = [r.random() for _ in range(r.randrange(1, 6))]
    rows = sorted((len(v), k, sum(v)) for k, v in d.items())
    text = json.dumps({"round": rnd, "rows": rows[:5000]})
    back = json.loads(text)
    words = " ".join(k for _, k, _ in back["rows"]).split(" ")
    counts = {}
    for w in words:
        counts[w[:6]] = counts.get(w[:6], 0) + 1
    blob = "".join(f"{w}:{c};" for w, c in sorted(counts.items()))
    h.update(blob.encode())
    h.update(str(len(d)).encode())
    del d, rows, back, words
print(h.hexdigest())
