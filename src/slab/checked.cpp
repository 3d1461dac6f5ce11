// SPDX-License-Identifier: Apache-2.0
// Checked mode: every slab registered, one allocation bit and one request record (bytes and
// alignment as asked) per object after the slab header; each deallocate verified against them,
// or against the large record. A verdict names the resource, the pointer, the size, the
// alignment and the problem, then aborts.
#include <bit>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

#include "header_window.hpp"
#include "state.hpp"

namespace bsalloc::detail {
namespace {

// A request record: bytes (at most 64 KiB: 17 bits) and log2(alignment) (at most 12).
constexpr std::uint32_t record_of(std::size_t bytes, std::size_t alignment) {
  return static_cast<std::uint32_t>(bytes) | static_cast<std::uint32_t>(std::countr_zero(alignment))
                                                 << 24;
}
constexpr std::size_t record_bytes(std::uint32_t r) {
  return r & 0xffffffu;
}
constexpr std::size_t record_alignment(std::uint32_t r) {
  return std::size_t{1} << (r >> 24);
}

}  // namespace

void slab_state::bad(const void* p, std::size_t bytes, std::size_t alignment,
                     const std::string& problem) const {
  std::fflush(stdout);
  fmt::print(stderr, "bsalloc: slab_resource {}: deallocate({}, {}, {}): {}\n",
             static_cast<const void*>(self), p, bytes, alignment, problem);
  std::fflush(stderr);
  std::abort();
}

void slab_state::init_checked(slab* s) {
  const auto& g = geom[s->cls];
  slab_bitmap_init(s, g.bitmap_words);
  for (std::uint32_t i = 0; i < g.capacity; ++i)
    ::new (records(s) + i) std::atomic<std::uint32_t>(0);
  std::lock_guard lock(checked_lock);
  checked_slabs.insert(reinterpret_cast<std::uintptr_t>(s));
}

void slab_state::forget_checked(slab* s) {
  std::lock_guard lock(checked_lock);
  checked_slabs.erase(reinterpret_cast<std::uintptr_t>(s));
}

// The registered slab that holds p, whatever its class; nullptr if none. checked_lock held.
slab* slab_state::registered_slab(const void* p) const {
  for (std::size_t i = 0; i < slab_size_count; ++i) {
    const auto base = reinterpret_cast<std::uintptr_t>(p) & ~(slab_sizes[i] - 1);
    if (!checked_slabs.count(base)) continue;
    auto* s = reinterpret_cast<slab*>(base);
    if (geom[s->cls].slab_bytes == slab_sizes[i]) return s;  // p is inside it, not past its end
  }
  return nullptr;
}

void slab_state::mark_allocated(void* p, int c, std::size_t bytes, std::size_t alignment) {
  const header_window headers(*this);
  slab* s = slab_of(p, c);
  const auto& g = geom[static_cast<std::size_t>(c)];
  const std::size_t i = slab_index(s, p, g.offset, g.size);
  if (slab_bit_set(s, i)) {
    fmt::print(stderr,
               "bsalloc: slab_resource {}: allocate: object {} handed out twice "
               "(heap corruption: a write after free?)\n",
               static_cast<const void*>(self), p);
    std::abort();
  }
  records(s)[i].store(record_of(bytes, alignment), std::memory_order_relaxed);
}

// c: the class (bytes, alignment) maps to, -1 for the large path.
bool slab_state::check_deallocate(void* p, std::size_t bytes, std::size_t alignment, int c) {
  (void)c;
  const header_window headers(*this);
  std::lock_guard lock(checked_lock);
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  if (slab* s = registered_slab(p)) {
    const auto& g = geom[s->cls];
    const std::size_t off = addr - reinterpret_cast<std::uintptr_t>(s);
    if (off < g.offset)  // e.g. a large block freed twice after its memory became this slab
      bad(p, bytes, alignment,
          "pointer is not a live allocation of this resource (it points into a slab header: a "
          "double free or a foreign pointer)");
    if ((off - g.offset) % g.size != 0 || (off - g.offset) / g.size >= g.capacity)
      bad(p, bytes, alignment, "pointer is not the start of an object");
    const std::size_t i = slab_index(s, p, g.offset, g.size);
    if (!slab_bit(s, i)) bad(p, bytes, alignment, "double free");
    const std::uint32_t r = records(s)[i].load(std::memory_order_relaxed);
    if (record_bytes(r) != bytes)
      bad(p, bytes, alignment,
          fmt::format("size does not match the allocation ({} bytes)", record_bytes(r)));
    if (record_alignment(r) != alignment)
      bad(p, bytes, alignment,
          fmt::format("alignment does not match the allocation (alignment {})",
                      record_alignment(r)));
    slab_bit_clear(s, i);
    return false;
  }
  std::lock_guard large_guard(large_lock);
  if (const large_record* r = large.find(addr)) {
    if (r->bytes != bytes)
      bad(p, bytes, alignment,
          fmt::format("size does not match the allocation ({} bytes, from the upstream)",
                      r->bytes));
    if (r->alignment != alignment)
      bad(p, bytes, alignment,
          fmt::format("alignment does not match the allocation (alignment {}, from the upstream)",
                      r->alignment));
    // Unlinked here, under the same lock as the check: of two racing frees of the block, the
    // second finds no record and aborts as a double free.
    large_record gone;
    large.erase(addr, gone);
    --large_objects;
    large_bytes -= gone.bytes;
    return true;
  }
  bad(p, bytes, alignment,
      "pointer is not a live allocation of this resource (foreign pointer or double free)");
}

}  // namespace bsalloc::detail
