#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI step: the shared library loaded with dlopen(), as a plugin host or an interpreter loads it.
# A shared object whose thread-locals use the initial-exec model needs room in the static TLS
# block, which a dlopen()ed object may not get ("cannot allocate memory in static TLS block");
# the shared build therefore compiles with BSALLOC_TLS_MODEL="global-dynamic".
#  1. build bsalloc shared; check the define reached the compiler as a string literal;
#  2. check that libbsalloc.so needs no static TLS (no STATIC_TLS flag, no TPOFF relocation);
#  3. build a tiny shim (extern "C", linked to libbsalloc.so) and a C host that links neither:
#     the host dlopen()s libbsalloc.so, then the shim, and calls it: 4 threads allocate and free
#     through one slab_resource (thread caches, remote frees, thread exit), the stats must come
#     back to zero; then dlclose();
#  4. the same with the static TLS block full: the host first dlopen()s copies of a filler
#     library with 256 bytes of initial-exec TLS until the loader refuses one ("cannot allocate
#     memory in static TLS block"), then loads bsalloc — which an initial-exec libbsalloc.so
#     fails at that point.
# Env: BSALLOC_ROOT, BSALLOC_OUT. Exits non-zero on any failure.
set -euo pipefail
root=${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
out="${BSALLOC_OUT:-$root/build-ci}/dlopen"
rm -rf "$out"
mkdir -p "$out"
fail() {
  echo "[dlopen] FAILED: $*" >&2
  exit 1
}
ok() { echo "[dlopen]   ok: $*"; }
run() {  # log name, command...
  local log="$out/$1.log"
  shift
  "$@" >"$log" 2>&1 || { tail -n 40 "$log" >&2; fail "$*"; }
}

# --- 1. the shared library -------------------------------------------------------------------
run configure cmake -G "Unix Makefiles" -S "$root" -B "$out/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DBUILD_SHARED_LIBS=ON -DBSALLOC_WERROR=ON
run build cmake --build "$out/build" -j "$(nproc)"
lib=$(find "$out/build" -maxdepth 1 -name 'libbsalloc.so.*.*.*' | head -n 1)
[ -n "$lib" ] || fail "no libbsalloc.so built"
# On the command line as -DBSALLOC_TLS_MODEL=\"global-dynamic\": a string literal in the source.
grep -qF -- '-DBSALLOC_TLS_MODEL=\"global-dynamic\"' "$out/build/CMakeFiles/bsalloc.dir/flags.make" ||
  fail "BSALLOC_TLS_MODEL=\"global-dynamic\" is not on the shared build's command lines"
ok "shared build compiled with BSALLOC_TLS_MODEL=\"global-dynamic\""

# --- 2. no static TLS ---------------------------------------------------------------------------
# Every thread_local in the sources takes its model from BSALLOC_TLS_MODEL: the library needs
# no static TLS (the check fails if one is added with a hard-coded initial-exec model).
strict=1
grep -rq "tls_model(BSALLOC_TLS_MODEL)" "$root/src" "$root/include" ||
  fail "the sources do not use BSALLOC_TLS_MODEL"
flags=$(readelf -d "$lib" | grep -E '\(FLAGS\)' || true)
relocs=$(readelf -rW "$lib" | grep -cE 'R_X86_64_TPOFF(64|32)' || true)
if [ "$strict" -eq 1 ]; then
  if grep -q STATIC_TLS <<<"$flags" || [ "$relocs" -ne 0 ]; then
    fail "libbsalloc.so needs static TLS (${flags:-no FLAGS}; $relocs TPOFF relocations)"
  fi
  ok "libbsalloc.so needs no static TLS (no STATIC_TLS flag, no TPOFF relocation)"
fi

# --- 3. shim and host -------------------------------------------------------------------------
cat >"$out/shim.cpp" <<'CPP'
// A plugin built on bsalloc, with a C interface for the host.
#include <bsalloc/bsalloc.hpp>

#include <cstdio>
#include <memory_resource>
#include <string>
#include <thread>
#include <vector>

extern "C" int bsalloc_shim_run(int threads) {
  try {
    bsalloc::slab_resource slab;
    {
      // Each thread fills its own vector; the next thread frees it (remote frees).
      std::vector<std::pmr::vector<std::pmr::string>> lists;
      for (int t = 0; t < threads; ++t) lists.emplace_back(&slab);
      std::vector<std::thread> workers;
      for (int t = 0; t < threads; ++t)
        workers.emplace_back([&lists, t] {
          for (int i = 0; i < 20000; ++i)
            lists[static_cast<std::size_t>(t)].emplace_back(
                std::string(static_cast<std::size_t>(8 + i % 200), 'x'));
        });
      for (auto& w : workers) w.join();
      workers.clear();
      for (int t = 0; t < threads; ++t)
        workers.emplace_back([&lists, t, threads] {
          lists[static_cast<std::size_t>((t + 1) % threads)].clear();
          lists[static_cast<std::size_t>((t + 1) % threads)].shrink_to_fit();
        });
      for (auto& w : workers) w.join();
    }
    slab.trim();
    const auto s = slab.stats();
    std::printf("shim: %zu objects in use after %d threads\n", s.objects_in_use, threads);
    return s.objects_in_use == 0 ? 0 : 2;
  } catch (const std::exception& e) {
    std::printf("shim: exception %s\n", e.what());
    return 3;
  }
}
CPP
cat >"$out/host.c" <<'C'
/* Loads bsalloc at run time only: links neither libbsalloc nor the shim. */
#include <dlfcn.h>
#include <stdio.h>

/* host LIBBSALLOC SHIM [FILLER...]: fillers are loaded first, until the loader refuses one. */
int main(int argc, char** argv) {
  if (argc < 3) return 64;
  int fillers = 0;
  for (int i = 3; i < argc; ++i, ++fillers) {
    if (!dlopen(argv[i], RTLD_NOW | RTLD_LOCAL)) {
      printf("host: static TLS full after %d fillers: %s\n", fillers, dlerror());
      break;
    }
  }
  if (argc > 3 && fillers == argc - 3) { printf("host: every filler loaded\n"); return 1; }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { printf("host: dlopen(libbsalloc): %s\n", dlerror()); return 1; }
  void* shim = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  if (!shim) { printf("host: dlopen(shim): %s\n", dlerror()); return 1; }
  int (*run)(int) = (int (*)(int))dlsym(shim, "bsalloc_shim_run");
  if (!run) { printf("host: dlsym: %s\n", dlerror()); return 1; }
  int rc = run(4);
  if (dlclose(shim) != 0 || dlclose(lib) != 0) { printf("host: dlclose: %s\n", dlerror()); return 1; }
  printf("host: %s\n", rc == 0 ? "ok" : "shim failed");
  return rc;
}
C
run shim.build c++ -std=c++20 -O1 -fPIC -shared -Wall -Wextra -Werror "$out/shim.cpp" \
  -I"$root/include" -I"$out/build/include" -DBSALLOC_CHECKED_DEFAULT=0 \
  -L"$out/build" -lbsalloc -lfmt -pthread -Wl,-rpath,"$out/build" -o "$out/libbsalloc_shim.so"
run host.build cc -O1 -Wall -Wextra -Werror "$out/host.c" -o "$out/host"
if nm -D --undefined-only "$out/host" | grep -q bsalloc; then fail "host links bsalloc"; fi

run host.run "$out/host" "$lib" "$out/libbsalloc_shim.so"
sed 's/^/    | /' "$out/host.run.log"
grep -q "^host: ok$" "$out/host.run.log" || fail "host did not report ok"
ok "a C host dlopen()ed libbsalloc.so and a shim, 4 threads allocated and freed, dlclose()d"

# --- 4. static TLS block full ----------------------------------------------------------------
if [ "$strict" -eq 1 ]; then
  printf '%s\n' '__thread char bsalloc_filler[256] __attribute__((tls_model("initial-exec")));' \
    'char* bsalloc_filler_touch(void) { return bsalloc_filler; }' >"$out/filler.c"
  run filler.build cc -O1 -fPIC -shared "$out/filler.c" -o "$out/libfiller.so"
  mkdir -p "$out/fillers"
  for i in $(seq 1 200); do cp "$out/libfiller.so" "$out/fillers/libfiller$i.so"; done
  run host.full "$out/host" "$lib" "$out/libbsalloc_shim.so" "$out"/fillers/*.so
  sed 's/^/    | /' "$out/host.full.log"
  grep -q "^host: static TLS full after" "$out/host.full.log" || fail "the static TLS block never filled"
  grep -q "^host: ok$" "$out/host.full.log" || fail "host did not report ok with the static TLS block full"
  ok "the same with the static TLS block full (loads an initial-exec library would fail)"
fi
echo "[dlopen] all checks ok"
