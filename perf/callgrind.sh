#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Instructions per allocate and per deallocate on the fast path, counted by callgrind (exact and
# repeatable on a noisy machine). For each peer: bsalloc_bench --workload fastpath runs a warm-up,
# then batches of 16 allocations freed newest first through two out-of-line probes; the probes'
# inclusive instruction counts ÷ calls are the costs. The "null" peer (a resource that does
# nothing) measures the probe and the virtual call; "net" subtracts it.
#   perf/callgrind.sh [--ops N] [--out FILE]     (default: 100000, perf/results/callgrind.csv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ops=100000
out="$here/results/callgrind.csv"
while [ $# -gt 0 ]; do
  case $1 in
    --ops) ops=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--ops N] [--out FILE]" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind not found" >&2; exit 1; }
bench=$("$here/build.sh")
lib=/usr/lib/x86_64-linux-gnu
declare -A preload=([jemalloc]=$lib/libjemalloc.so.2 [mimalloc]=$lib/libmimalloc.so.2
                    [tcmalloc]=$lib/libtcmalloc_minimal.so.4)
peers=$("$bench" --list | awk '{ for (i = 4; i <= NF; i++) print $i }' | awk '!seen[$0]++' |
        grep -v -x -e object_pool -e page)  # object_pool has no memory_resource; page: 4 KiB
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

count() {  # peer size align -> "alloc dealloc" instructions per call
  local peer=$1 size=$2 align=$3 f="$tmp/$1.$2.$3"
  env ${preload[$peer]:+LD_PRELOAD=${preload[$peer]}} valgrind --tool=callgrind \
    --callgrind-out-file="$f" "$bench" --peer "$peer" --workload fastpath --ops "$ops" \
    --size "$size" --align "$align" >"$f.out" 2>"$f.err" || { cat "$f.err" >&2; return 1; }
  callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null | awk -v ops="$ops" '
    /:bsalloc_bench_allocate \[/ { gsub(",", "", $1); a = $1 / ops }
    /:bsalloc_bench_deallocate \[/ { gsub(",", "", $1); d = $1 / ops }
    END { if (a == "" || d == "") exit 1; printf "%.1f %.1f\n", a, d }' ||
    { echo "callgrind.sh: no probe counts for $peer ($f)" >&2; return 1; }
}

mkdir -p "$(dirname "$out")"
echo "peer,size,align,ops,instr_per_allocate,instr_per_deallocate,net_allocate,net_deallocate" >"$out"
printf "%-11s %6s %5s %10s %10s %10s %10s\n" peer bytes align alloc dealloc net-alloc net-dealloc
# 64 B at memory_resource::allocate's default alignment (16) and at 8 (what a container of
# 8-aligned objects asks for); 4 KiB and 64 KiB (above the slab classes: slab_resource's large
# bins) for the page-sized peers too.
for config in "64 16" "64 8" "4096 16" "65536 16"; do
  read -r size align <<<"$config"
  counts=$(count null "$size" "$align")
  read -r base_a base_d <<<"$counts"
  list=$peers
  [ "$size" -ge 4096 ] && list="$(grep -x -e slab <<<"$peers" || true) page glibc jemalloc mimalloc tcmalloc"
  for peer in $list; do
    [ -z "${preload[$peer]:-}" ] || [ -e "${preload[$peer]}" ] || continue
    counts=$(count "$peer" "$size" "$align")
    read -r a d <<<"$counts"
    na=$(awk -v x="$a" -v b="$base_a" 'BEGIN { printf "%.1f", x - b }')
    nd=$(awk -v x="$d" -v b="$base_d" 'BEGIN { printf "%.1f", x - b }')
    echo "$peer,$size,$align,$ops,$a,$d,$na,$nd" >>"$out"
    printf "%-11s %6s %5s %10s %10s %10s %10s\n" "$peer" "$size" "$align" "$a" "$d" "$na" "$nd"
  done
  echo "null,$size,$align,$ops,$base_a,$base_d,0,0" >>"$out"
done
echo "wrote $out"
