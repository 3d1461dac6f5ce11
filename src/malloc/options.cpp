// SPDX-License-Identifier: Apache-2.0
// BSALLOC_* environment options of the process allocator. See docs/malloc.md.
#include "options.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine.hpp"

namespace bsalloc::detail::mx {
namespace {

void ignored(const char* name, const char* value) noexcept {
  std::fprintf(stderr, "bsalloc: %s=%s is not understood; ignored\n", name, value);
}

// A byte count: digits, then an optional k / m / g (KiB, MiB, GiB; either case).
bool parse_bytes(const char* name, std::size_t& out) noexcept {
  const char* v = std::getenv(name);
  if (!v || !*v) return false;
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v, &end, 10);
  if (errno != 0 || end == v || *v == '-') return ignored(name, v), false;
  unsigned shift = 0;
  switch (*end) {
    case 'k':
    case 'K':
      shift = 10;
      ++end;
      break;
    case 'm':
    case 'M':
      shift = 20;
      ++end;
      break;
    case 'g':
    case 'G':
      shift = 30;
      ++end;
      break;
    default:
      break;
  }
  if (*end == 'b' || *end == 'B') ++end;
  if (*end != '\0' || n > (~0ull >> shift)) return ignored(name, v), false;
  out = static_cast<std::size_t>(n << shift);
  return true;
}

bool parse_flag(const char* name, bool& out) noexcept {
  const char* v = std::getenv(name);
  if (!v || !*v) return false;
  if (!std::strcmp(v, "1") || !std::strcmp(v, "on") || !std::strcmp(v, "yes") ||
      !std::strcmp(v, "true")) {
    out = true;
    return true;
  }
  if (!std::strcmp(v, "0") || !std::strcmp(v, "off") || !std::strcmp(v, "no") ||
      !std::strcmp(v, "false")) {
    out = false;
    return true;
  }
  ignored(name, v);
  return false;
}

}  // namespace

options read_options() noexcept {
  options o;
  // 4 MiB per core, half of global_page_resource()'s: a whole program's RSS matters more here.
  o.large_pages.cache_bytes_per_core = std::size_t{4} << 20;
  o.slab_pages.cache_bytes_per_core = 0;  // slabs are 1 MiB runs: beyond the run cache anyway
  o.knobs.min_slab_bytes = slab_bytes;    // one slab size: free() finds the header by masking
  std::size_t retain = 0;
  if (parse_bytes("BSALLOC_RETAIN_BYTES", retain))
    o.slab_pages.retain_bytes = o.large_pages.retain_bytes = retain;
  std::size_t ms = 0;
  if (const char* v = std::getenv("BSALLOC_PURGE_MS"); v && *v) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || *v == '-')
      ignored("BSALLOC_PURGE_MS", v);
    else
      ms = static_cast<std::size_t>(n),
      o.slab_pages.purge_interval = o.large_pages.purge_interval = std::chrono::milliseconds(ms);
  }
  parse_flag("BSALLOC_CHECKED", o.knobs.checked);
  parse_flag("BSALLOC_HARDENED", o.knobs.hardened);
  if (const char* v = std::getenv("BSALLOC_STATS"); v && *v) {
    if (!std::strcmp(v, "json"))
      o.stats = 2;
    else if (!std::strcmp(v, "0"))
      o.stats = 0;
    else if (!std::strcmp(v, "1"))
      o.stats = 1;
    else
      ignored("BSALLOC_STATS", v);
  }
  return o;
}

}  // namespace bsalloc::detail::mx
