// SPDX-License-Identifier: Apache-2.0
// The non-template parts of bsalloc::object_pool: stats text and JSON, checked mode's verdicts.
#include <bsalloc/object_pool.hpp>

#include "format.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <stdexcept>

#include <fmt/format.h>

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define BSALLOC_POOL_VALGRIND 1
#endif
#endif

namespace bsalloc {
namespace {

using detail::human_bytes;

// JSON string contents: type names may hold quotes only in odd cases, but never emit bad JSON.
std::string json_escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(ch)));
    } else {
      out += ch;
    }
  }
  return out;
}

}  // namespace

std::string to_string(const object_pool_stats& s) {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(
      it, "object_pool<{}>: {} objects in use (peak {}), {} slab{} ({} empty), {} reserved\n",
      s.type, s.objects_in_use, s.peak_objects, s.slabs, s.slabs == 1 ? "" : "s", s.empty_slabs,
      human_bytes(s.bytes_reserved));
  fmt::format_to(it, "  object {} B (align {}), slot {} B, slab {} holds {}; {} handle{}{}{}\n",
                 s.object_size, s.object_align, s.slot_size, human_bytes(s.slab_bytes),
                 s.objects_per_slab, s.handles, s.handles == 1 ? "" : "s",
                 s.checked ? ", checked" : "", s.thread_safe ? "" : ", single-threaded");
  return out;
}

std::string to_json(const object_pool_stats& s) {
  return fmt::format(
      "{{\"type\":\"{}\",\"object_size\":{},\"object_align\":{},\"slot_size\":{},"
      "\"slab_bytes\":{},\"objects_per_slab\":{},\"objects_in_use\":{},\"peak_objects\":{},"
      "\"slabs\":{},\"empty_slabs\":{},\"bytes_reserved\":{},\"handles\":{},\"checked\":{},"
      "\"thread_safe\":{}}}",
      json_escape(s.type), s.object_size, s.object_align, s.slot_size, s.slab_bytes,
      s.objects_per_slab, s.objects_in_use, s.peak_objects, s.slabs, s.empty_slabs,
      s.bytes_reserved, s.handles, s.checked, s.thread_safe);
}

namespace detail {

std::string_view pool_type_name_from(std::string_view pretty) noexcept {
  // GCC: "... pool_type_name() [with T = foo<int>; std::string_view = ...]"
  // Clang: "... pool_type_name() [T = foo<int>]"
  const auto start = pretty.find("T = ");
  if (start == std::string_view::npos) return "T";
  std::size_t depth = 0;
  std::size_t i = start + 4;
  for (; i < pretty.size(); ++i) {
    const char ch = pretty[i];
    if (ch == '<' || ch == '(' || ch == '[') {
      ++depth;
    } else if (ch == '>' || ch == ')') {
      if (depth) --depth;
    } else if (ch == ']') {
      if (depth == 0) break;
      --depth;
    } else if (ch == ';' && depth == 0) {
      break;
    }
  }
  return pretty.substr(start + 4, i - start - 4);
}

void pool_bad_pointer(std::string_view type, const char* op, const void* p,
                      std::string_view problem) noexcept {
  // fmt::print may throw only on a formatting error, which these fixed formats cannot have.
  try {
    fmt::print(stderr, "bsalloc: object_pool<{}>: {}({}): {}\n", type, op, p, problem);
  } catch (...) {
  }
  std::fflush(stderr);
  std::abort();
}

void pool_misaligned_slab(std::string_view type, const void* slab, std::size_t slab_bytes) {
  throw std::runtime_error(fmt::format(
      "bsalloc: object_pool<{}>: the upstream resource returned {} for a slab of {} bytes, not "
      "aligned to its size (slabs must be: an object's slab is found by masking its address)",
      type, slab, slab_bytes));
}

void pool_invariant_broken(std::string_view type, const std::string& what) {
  throw std::logic_error(fmt::format("bsalloc: object_pool<{}>: invariant {}", type, what));
}

}  // namespace detail
}  // namespace bsalloc

// -- memcheck client requests (see object_pool.hpp) -----------------------------------------------
namespace bsalloc::detail {

#ifdef BSALLOC_POOL_VALGRIND
bool pool_memcheck() noexcept {
  // Memcheck, not just any Valgrind tool (callgrind counts the ordinary paths): memcheck's
  // preloaded library is how a program tells.
  static const bool on = [] {
    if (RUNNING_ON_VALGRIND == 0) return false;
    const char* pre = std::getenv("LD_PRELOAD");
    return pre != nullptr && std::strstr(pre, "vgpreload_memcheck") != nullptr;
  }();
  return on;
}
void pool_vg_slab_born(const void* slab, const void* first, std::size_t n) noexcept {
  VALGRIND_CREATE_MEMPOOL(slab, 0, 0);
  VALGRIND_MAKE_MEM_NOACCESS(first, n);
}
void pool_vg_slab_dies(const void* slab, std::size_t n) noexcept {
  if (!pool_memcheck()) return;
  if (VALGRIND_MEMPOOL_EXISTS(slab)) VALGRIND_DESTROY_MEMPOOL(slab);
  VALGRIND_MAKE_MEM_DEFINED(slab, n);
}
void pool_vg_alloc(const void* slab, const void* p, std::size_t n) noexcept {
  // No stale link to another slot stays behind (a leaked slot must look unreferenced).
  VALGRIND_MAKE_MEM_UNDEFINED(p, sizeof(void*));
  std::memset(const_cast<void*>(p), 0, sizeof(void*));
  VALGRIND_MEMPOOL_ALLOC(slab, p, n);
}
void pool_vg_free(const void* slab, const void* p) noexcept {
  VALGRIND_MEMPOOL_FREE(slab, p);
  VALGRIND_MAKE_MEM_UNDEFINED(p, sizeof(void*));  // the link word, written next
}
#else
bool pool_memcheck() noexcept {
  return false;
}
void pool_vg_slab_born(const void*, const void*, std::size_t) noexcept {}
void pool_vg_slab_dies(const void*, std::size_t) noexcept {}
void pool_vg_alloc(const void*, const void*, std::size_t) noexcept {}
void pool_vg_free(const void*, const void*) noexcept {}
#endif

}  // namespace bsalloc::detail
