#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI step: programs nobody here wrote, run with malloc replaced by LD_PRELOAD=libbsalloc_malloc.so,
# their output compared with a run on glibc's malloc:
#   python3  (PYTHONMALLOC=malloc: every object through malloc) dicts, strings, lists, json, sort
#   sqlite3  a generated database: inserts, an index, joins, aggregates
#   perl     hashes, regexes, sort, string building
#   g++      a C++ compile (the object files must be identical, the program's output too)
#   cmake    bsalloc's own build: configure and build part of the library under its own malloc
#            (cmake, make, g++, as: the objects must be identical to the glibc build's)
# Every run under bsalloc has BSALLOC_STATS=1: its stats (one report per process, at exit) must
# show that bsalloc served the calls. Fails when a tool is missing. About 2 minutes on 2 cores.
# Env: BSALLOC_ROOT, BSALLOC_BUILD (a normal build; the .so is built there if missing), BSALLOC_OUT.
set -euo pipefail
root=${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${BSALLOC_BUILD:-$root/build}
out="${BSALLOC_OUT:-$root/build-ci}/preload"
rm -rf "$out"
mkdir -p "$out"
fail() {
  echo "[preload] FAILED: $*" >&2
  exit 1
}
ok() { echo "[preload]   ok: $*"; }
for tool in python3 sqlite3 perl g++ cmake make cmp; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/setup.sh installs it)"
done

so="$build/malloc/libbsalloc_malloc.so"
if [ ! -f "$so" ]; then
  [ -f "$build/CMakeCache.txt" ] ||
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/configure.log"
  cmake --build "$build" -j "$(nproc)" --target bsalloc_malloc >"$out/build-so.log"
fi
[ -f "$so" ] || fail "no $so"

# served <stats file> <what>: the stats say bsalloc served allocations in some process.
served() {
  grep -q "^bsalloc malloc (pid" "$1" || fail "$2: no bsalloc stats in $1"
  grep -Eq "^slab_resource: [1-9][0-9]* objects in use|peak" "$1" ||
    fail "$2: the stats show no allocation served"
  ok "$2: $(grep -c '^bsalloc malloc (pid' "$1") process(es) reported bsalloc stats"
}
# same <a> <b> <what>
same() {
  cmp -s "$1" "$2" || {
    diff "$1" "$2" | head -20 >&2
    fail "$3: output differs between glibc and bsalloc"
  }
  ok "$3: identical output ($(wc -c <"$1") bytes)"
}
under_bsalloc() {  # stats file, command...
  local stats=$1
  shift
  LD_PRELOAD="$so" BSALLOC_STATS=1 "$@" 2>>"$stats"
}

# -- python3 ------------------------------------------------------------------------------------
# The interpreter itself, not a wrapper script in front of it (pyenv's shims are bash scripts).
py=$(python3 -c 'import sys; print(sys.executable)')
cat >"$out/work.py" <<'PY'
import json, random
random.seed(42)
d = {}
for i in range(200000):
    d["k%d" % i] = [i, str(i) * (i % 7), {"x": i % 13}]
s = sum(len(v[1]) for v in d.values())
words = ["".join(random.choice("abcdefgh") for _ in range(random.randint(1, 30))) for _ in range(50000)]
words.sort()
blob = json.dumps({"words": words[:5000], "n": s})
back = json.loads(blob)
parts = []
for w in words:
    parts.append(w.upper())
text = ",".join(parts)
print(s, len(words), len(blob), len(back["words"]), len(text), hash(text) if False else text[:40])
lists = [[j for j in range(i % 100)] for i in range(20000)]
print(sum(map(len, lists)), sorted(set(words))[:5])
PY
PYTHONMALLOC=malloc "$py" "$out/work.py" >"$out/py.glibc"
PYTHONMALLOC=malloc under_bsalloc "$out/py.stats" "$py" "$out/work.py" >"$out/py.bsalloc"
same "$out/py.glibc" "$out/py.bsalloc" "python3"
served "$out/py.stats" "python3"

# -- sqlite3 ------------------------------------------------------------------------------------
python3 - "$out/db.sql" <<'PY'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    f.write("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, city TEXT, score REAL);\n")
    f.write("CREATE TABLE orders(id INTEGER PRIMARY KEY, user INTEGER, item TEXT, qty INTEGER);\n")
    f.write("BEGIN;\n")
    cities = ["Lyon", "Oslo", "Kyoto", "Lima", "Perth", "Accra"]
    for i in range(20000):
        name = "".join(random.choice("abcdefghij") for _ in range(random.randint(3, 12)))
        f.write("INSERT INTO users VALUES(%d,'%s','%s',%.2f);\n" % (i, name, random.choice(cities), random.random() * 100))
    for i in range(60000):
        f.write("INSERT INTO orders VALUES(%d,%d,'item%d',%d);\n" % (i, random.randrange(20000), random.randrange(500), random.randint(1, 9)))
    f.write("COMMIT;\nCREATE INDEX orders_user ON orders(user);\n")
PY
cat >"$out/q.sql" <<'SQL'
SELECT city, count(*), round(avg(score), 3) FROM users GROUP BY city ORDER BY city;
SELECT u.name, sum(o.qty) AS q FROM users u JOIN orders o ON o.user = u.id
  GROUP BY u.id ORDER BY q DESC, u.name LIMIT 20;
SELECT item, count(DISTINCT user) FROM orders GROUP BY item ORDER BY 2 DESC, 1 LIMIT 10;
SELECT group_concat(name, '|') FROM (SELECT name FROM users ORDER BY name LIMIT 300);
SQL
rm -f "$out/g.db" "$out/b.db"
{ sqlite3 "$out/g.db" <"$out/db.sql" && sqlite3 "$out/g.db" <"$out/q.sql"; } >"$out/sq.glibc"
{ under_bsalloc "$out/sq.stats" sqlite3 "$out/b.db" <"$out/db.sql" &&
  under_bsalloc "$out/sq.stats" sqlite3 "$out/b.db" <"$out/q.sql"; } >"$out/sq.bsalloc"
same "$out/sq.glibc" "$out/sq.bsalloc" "sqlite3"
served "$out/sq.stats" "sqlite3"

# -- perl ---------------------------------------------------------------------------------------
cat >"$out/work.pl" <<'PL'
use strict; use warnings;
my %h; my @a;
srand(3);
for my $i (1 .. 200000) { my $k = "key" . ($i * 7919 % 100003); $h{$k} .= chr(97 + $i % 26); }
for my $k (sort keys %h) { push @a, $k if $h{$k} =~ /a.*z|^(\w)\1/; }
my $s = join(",", map { uc } @a[0 .. ($#a < 99 ? $#a : 99)]);
my @w = map { join("", map { chr(97 + int(rand(26))) } 1 .. (1 + $_ % 20)) } 1 .. 50000;
my %c; $c{length $_}++ for @w;
print scalar(keys %h), " ", scalar(@a), " ", length($s), "\n";
print join(" ", map { "$_=$c{$_}" } sort { $a <=> $b } keys %c), "\n";
PL
perl "$out/work.pl" >"$out/pl.glibc"
under_bsalloc "$out/pl.stats" perl "$out/work.pl" >"$out/pl.bsalloc"
same "$out/pl.glibc" "$out/pl.bsalloc" "perl"
served "$out/pl.stats" "perl"

# -- g++ ----------------------------------------------------------------------------------------
cat >"$out/prog.cpp" <<'CPP'
#include <algorithm>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>
template <int N> struct fib { static constexpr long v = fib<N - 1>::v + fib<N - 2>::v; };
template <> struct fib<0> { static constexpr long v = 0; };
template <> struct fib<1> { static constexpr long v = 1; };
int main() {
  std::map<std::string, std::vector<int>> m;
  for (int i = 0; i < 5000; ++i) m[std::to_string(i % 97)].push_back(i);
  std::regex r("([0-9])\\1");
  int twins = 0;
  for (auto& [k, v] : m) twins += std::regex_search(k, r);
  std::cout << m.size() << " " << twins << " " << fib<60>::v << "\n";
}
CPP
(cd "$out" && g++ -std=c++20 -O2 -c prog.cpp -o prog.glibc.o && g++ prog.glibc.o -o prog.glibc)
(cd "$out" && under_bsalloc "$out/gxx.stats" g++ -std=c++20 -O2 -c prog.cpp -o prog.bsalloc.o &&
  under_bsalloc "$out/gxx.stats" g++ prog.bsalloc.o -o prog.bsalloc)
same "$out/prog.glibc.o" "$out/prog.bsalloc.o" "g++ (object file)"
"$out/prog.glibc" >"$out/prog.glibc.txt"
"$out/prog.bsalloc" >"$out/prog.bsalloc.txt"
same "$out/prog.glibc.txt" "$out/prog.bsalloc.txt" "g++ (the compiled program)"
served "$out/gxx.stats" "g++"

# -- bsalloc's own build under its own malloc ---------------------------------------------------
# Configure, then build a bounded part of the library (six of its sources, from both layers and
# the malloc engine), twice in the same directory so that the paths in the objects
# agree: on glibc, then under bsalloc. The object files must be the same.
self="$out/self"
tree="$out/tree"  # a snapshot, so both builds compile the same sources
mkdir -p "$tree"
cp -r "$root/CMakeLists.txt" "$root/cmake" "$root/include" "$root/src" "$root/malloc" "$tree/"
objs=(src/page_resource.o src/slab_resource.o src/page/buddy.o src/slab/core_cache.o
      src/malloc/api.o src/malloc/engine.o)
build_self() {  # glibc|bsalloc
  local pre=()
  [ "$1" = bsalloc ] && pre=(env LD_PRELOAD="$so" BSALLOC_STATS=1)
  rm -rf "$self"
  "${pre[@]}" cmake -G "Unix Makefiles" -S "$tree" -B "$self" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CXX_COMPILER=g++ >"$out/self.$1.log" 2>>"$out/self.$1.stats"
  "${pre[@]}" make -C "$self" -j "$(nproc)" "${objs[@]}" >>"$out/self.$1.log" 2>>"$out/self.$1.stats"
  (cd "$self" && find CMakeFiles/bsalloc.dir -name '*.o' | sort | xargs md5sum) >"$out/self.$1.md5"
}
build_self glibc
build_self bsalloc
[ "$(wc -l <"$out/self.glibc.md5")" -eq "${#objs[@]}" ] || fail "bsalloc's build: objects missing"
same "$out/self.glibc.md5" "$out/self.bsalloc.md5" "bsalloc's own build (object checksums)"
served "$out/self.bsalloc.stats" "bsalloc's own build"
# -- BSALLOC_HARDENED=1: misuse in a real interpreter is caught, naming the pointer ------------------
# Python's ctypes calls the replaced malloc/free directly: a double free, and a write over a free
# object's free-list link (a use after free), each abort with the hardened mode's message.
hardened_case() {  # what, python code, expected message
  local log="$out/hardened.$1.log" rc=0
  LD_PRELOAD="$so" BSALLOC_HARDENED=1 "$py" -c "$2" >"$log" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] || fail "BSALLOC_HARDENED=1, $1: the program was not stopped"
  grep -Eq "$3" "$log" || { cat "$log" >&2; fail "BSALLOC_HARDENED=1, $1: no message matching '$3'"; }
  ok "BSALLOC_HARDENED=1, $1: $(grep -Eo "$3" "$log" | head -n 1)"
}
hardened_case double-free "import ctypes
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
p = libc.malloc(48); libc.free(p); libc.free(p)" "0x[0-9a-f]+.*double free"
hardened_case link-overwrite "import ctypes
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]
ps = [libc.malloc(48) for _ in range(4)]
for p in ps: libc.free(p)
ctypes.memmove(ps[-1], b'AAAAAAAA', 8)
[libc.malloc(48) for _ in range(8)]" "(free-list link|free-state tag) of 0x[0-9a-f]+ corrupted"
echo "[preload] all programs gave the same results under bsalloc; hardened mode stops misuse"
