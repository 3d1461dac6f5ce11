#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what bsalloc needs from Debian packages, skipping those already installed.
# Runs as root, or through sudo when it is there.
set -euo pipefail
packages=(
  cmake make g++ clang libclang-rt-14-dev            # toolchains (g++ 12, clang 14 + sanitizer runtimes)
  pkg-config                                         # the consumer step checks bsalloc.pc
  libboost-dev libboost-container-dev libfmt-dev     # Boost.Lockfree / Boost.Container, fmt
  doctest-dev libbenchmark-dev                       # tests, benchmarks
  libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4   # the peers in perf/
  gnuplot-nox valgrind python3                       # perf charts, callgrind counts, driver
  sqlite3 perl                                       # programs run under LD_PRELOAD (ci.d/50-preload.sh)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
