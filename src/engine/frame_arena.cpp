// SPDX-License-Identifier: Apache-2.0
// frame_arena's slow paths: new chunks, rewind, release, debug fills and poisoning, stats.
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/out_of_memory.hpp>

#include <algorithm>
#include <bit>
#include <iterator>
#include <limits>
#include <new>
#include <stdexcept>

#include <fmt/format.h>

#include "../format.hpp"

namespace bsalloc {
namespace {

constexpr std::size_t chunk_alignment = 64;
constexpr std::string_view type_name = "frame_arena";

std::size_t header_bytes() noexcept {
  return 64;  // >= sizeof(chunk), keeps the usable part 64-byte aligned
}

}  // namespace

frame_arena::frame_arena() : frame_arena(&global_page_resource()) {}

frame_arena::frame_arena(std::pmr::memory_resource* upstream, frame_arena_options options)
    : upstream_(upstream), options_(std::move(options)) {
  if (upstream_ == nullptr) throw std::invalid_argument("frame_arena: null upstream");
  if (options_.chunk_bytes == 0) options_.chunk_bytes = page_size;
  options_.max_chunk_bytes = std::max(options_.max_chunk_bytes, options_.chunk_bytes);
  next_chunk_bytes_ = options_.chunk_bytes;
  debug_ = asan_enabled || options_.fill.on_allocate.has_value();
}

frame_arena::frame_arena(std::span<std::byte> buffer, frame_arena_options options)
    : options_(std::move(options)) {
  fixed_ = chunk{nullptr, buffer.data(), buffer.data() + buffer.size(), 0, 0};
  first_ = &fixed_;
  capacity_ = buffer.size();
  chunks_ = 1;
  set_current(first_);
  debug_ = asan_enabled || options_.fill.on_allocate.has_value();
  detail::poison(buffer.data(), buffer.size());
}

frame_arena::~frame_arena() {
  if (upstream_ != nullptr) {
    release();
  } else {
    detail::unpoison(fixed_.begin, static_cast<std::size_t>(fixed_.end - fixed_.begin));
  }
}

void frame_arena::set_current(chunk* c) noexcept {
  cur_ = c;
  ptr_ = c == nullptr ? nullptr : c->begin;
  end_ = c == nullptr ? nullptr : c->end;
}

void frame_arena::on_hand_out(std::byte* p, std::size_t bytes) noexcept {
  detail::unpoison(p, bytes);
  if (options_.fill.on_allocate) std::memset(p, *options_.fill.on_allocate, bytes);
}

void frame_arena::free_range(std::byte* from, std::byte* to) noexcept {
  if (from >= to) return;
  const auto n = static_cast<std::size_t>(to - from);
  if (options_.fill.on_free) {
    detail::unpoison(from, n);
    std::memset(from, *options_.fill.on_free, n);
  }
  detail::poison(from, n);
}

void frame_arena::free_after(chunk* c, std::byte* pos) noexcept {
  if (!asan_enabled && !options_.fill.on_free) return;  // nothing to touch: O(1)
  if (c == nullptr) {
    c = first_;
    pos = c == nullptr ? nullptr : c->begin;
  }
  for (; c != nullptr; c = c->next) {
    std::byte* upto = c == cur_ ? ptr_ : c->begin + c->used;
    free_range(pos, upto);
    if (c == cur_) return;
    if (c->next != nullptr) pos = c->next->begin;
  }
}

void frame_arena::notify(bulk_free_kind kind, std::size_t before) noexcept {
  const std::size_t after = used_bytes();
  if (get_bulk_free_hook() == nullptr) return;
  bulk_free_event e;
  e.kind = kind;
  e.resource_type = type_name;
  e.name = options_.name;
  e.resource = this;
  e.bytes = before > after ? before - after : 0;
  detail::notify_bulk_free(e);
}

void frame_arena::reset() noexcept {
  note_peak();
  const std::size_t before = used_bytes();
  free_after(nullptr, nullptr);
  used_before_ = 0;
  ++epoch_;
  set_current(first_);
  notify(bulk_free_kind::reset, before);
}

void frame_arena::rewind(const marker& m) {
  auto refuse = [](const char* why) {
    throw std::invalid_argument(std::string("frame_arena::rewind: ") + why);
  };
  if (m.owner != this) refuse("marker of another arena");
  if (m.epoch != epoch_) refuse("stale marker (taken before a reset/release)");
  auto* const c = static_cast<chunk*>(const_cast<void*>(m.chunk));
  // Where the marker lies now: its chunk must be the current one or one before it, its byte
  // inside what that chunk has handed out. The bytes before it are recounted (not taken from
  // the marker): rewinds to older markers may have moved things since it was taken.
  std::size_t before_c = 0;
  if (c != nullptr) {
    const chunk* k = first_;
    for (; k != nullptr && k != c && k != cur_; k = k->next) before_c += k->used;
    if (k != c) refuse("marker after the current position (rewound past it already)");
    std::byte* const limit = c == cur_ ? ptr_ : c->begin + c->used;
    if (m.pos < c->begin || m.pos > limit)
      refuse("marker after the current position (rewound past it already)");
  }
  const std::size_t before = used_bytes();
  note_peak();
  free_after(c, m.pos);
  if (c == nullptr) {
    used_before_ = 0;
    set_current(first_);
  } else {
    cur_ = c;
    ptr_ = m.pos;
    end_ = c->end;
    used_before_ = before_c;
  }
  notify(bulk_free_kind::rewind, before);
}

void frame_arena::release() noexcept {
  note_peak();
  const std::size_t before = used_bytes();
  if (upstream_ == nullptr) {
    free_after(nullptr, nullptr);
    used_before_ = 0;
    set_current(first_);
  } else {
    for (chunk* c = first_; c != nullptr;) {
      chunk* next = c->next;
      const std::size_t bytes = c->bytes;
      detail::unpoison(c, bytes);
      upstream_->deallocate(c, bytes, chunk_alignment);
      c = next;
    }
    first_ = nullptr;
    set_current(nullptr);
    used_before_ = 0;
    capacity_ = 0;
    chunks_ = 0;
    next_chunk_bytes_ = options_.chunk_bytes;
  }
  ++epoch_;
  notify(bulk_free_kind::release, before);
}

void frame_arena::give_back_last(std::byte* p) noexcept {
  note_peak();
  std::byte* old = ptr_;
  ptr_ = p;
  free_range(p, old);
}

void* frame_arena::try_chunk(chunk* c, std::size_t bytes, std::size_t alignment) noexcept {
  const auto begin = reinterpret_cast<std::uintptr_t>(c == cur_ ? ptr_ : c->begin);
  const auto end = reinterpret_cast<std::uintptr_t>(c->end);
  const std::uintptr_t aligned = (begin + alignment - 1) & ~(std::uintptr_t{alignment} - 1);
  if (aligned < begin || aligned > end || bytes > end - aligned) return nullptr;
  if (c != cur_) {
    if (cur_ != nullptr) {
      cur_->used = static_cast<std::size_t>(ptr_ - cur_->begin);
      used_before_ += cur_->used;
    }
    set_current(c);
  }
  auto* p = reinterpret_cast<std::byte*>(aligned);
  ptr_ = p + bytes;
  if (debug_) on_hand_out(p, bytes);
  return p;
}

void* frame_arena::add_chunk(std::size_t bytes, std::size_t alignment) {
  const std::size_t hdr = header_bytes();
  const std::size_t pad = alignment > chunk_alignment ? alignment - chunk_alignment : 0;
  constexpr std::size_t half = std::numeric_limits<std::size_t>::max() / 2;
  if (pad > half - hdr || bytes > half - hdr - pad) throw std::bad_alloc();  // no wrap below
  std::size_t total = next_chunk_bytes_;                                     // header included
  if (total < hdr + pad + bytes) total = hdr + pad + bytes;
  if (total >= page_size) total = (total + page_size - 1) & ~(page_size - 1);  // no tail waste
  const std::size_t usable = total - hdr;
  void* mem = upstream_->allocate(total, chunk_alignment);  // its std::bad_alloc propagates
  auto* c = ::new (mem) chunk{nullptr, static_cast<std::byte*>(mem) + hdr,
                              static_cast<std::byte*>(mem) + total, 0, total};
  detail::poison(c->begin, usable);
  if (cur_ == nullptr) {
    c->next = first_;
    first_ = c;
  } else {
    c->next = cur_->next;
    cur_->next = c;
  }
  capacity_ += usable;
  ++chunks_;
  if (next_chunk_bytes_ < options_.max_chunk_bytes)
    next_chunk_bytes_ = std::min(next_chunk_bytes_ * 2, options_.max_chunk_bytes);
  return try_chunk(c, bytes, alignment);
}

void* frame_arena::allocate_slow(std::size_t bytes, std::size_t alignment) {
  if (!std::has_single_bit(alignment))
    throw std::invalid_argument(
        fmt::format("frame_arena: alignment {} is not a power of two", alignment));
  if (bytes == 0) bytes = 1;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (cur_ != nullptr) {
      if (void* p = try_chunk(cur_, bytes, alignment)) return p;
      // The first kept chunk after the current one that holds the request becomes the next
      // one (moved up if it was further on: F3 holds, and the arena grows only when no kept
      // chunk can serve a request, so a repeating frame stops taking chunks).
      chunk* const old = cur_;
      for (chunk* prev = old; prev->next != nullptr; prev = prev->next) {
        chunk* const c = prev->next;
        if (void* p = try_chunk(c, bytes, alignment)) {
          if (prev != old) {
            prev->next = c->next;
            c->next = old->next;
            old->next = c;
          }
          return p;
        }
      }
    }
    if (upstream_ != nullptr) return add_chunk(bytes, alignment);
    if (attempt == 0 &&
        !detail::report_out_of_memory(type_name, options_.name, this, bytes, alignment,
                                      [this] { return to_string(stats()); }))
      break;
  }
  throw detail::reported_bad_alloc();
}

frame_arena_stats frame_arena::stats() const noexcept {
  frame_arena_stats s;
  s.used_bytes = used_bytes();
  s.peak_bytes = std::max(peak_, s.used_bytes);
  s.capacity_bytes = capacity_;
  s.chunks = chunks_;
  s.fixed = upstream_ == nullptr;
  return s;
}

void frame_arena::check_invariants() const {
  auto fail = [](const char* what) { throw std::logic_error(std::string("frame_arena: ") + what); };
  if (first_ == nullptr) {
    if (cur_ != nullptr || ptr_ != nullptr || end_ != nullptr || capacity_ != 0 || chunks_ != 0)
      fail("F1: no chunk, but a position or capacity");
    return;
  }
  std::size_t n = 0, cap = 0, before = 0;
  bool seen = false;
  for (const chunk* c = first_; c != nullptr; c = c->next) {
    ++n;
    cap += static_cast<std::size_t>(c->end - c->begin);
    if (c == cur_) {
      seen = true;
    } else if (!seen) {
      before += c->used;
      if (c->used > static_cast<std::size_t>(c->end - c->begin)) fail("F2: chunk used > size");
    }
  }
  if (!seen) fail("F1: the current chunk is not on the list");
  if (ptr_ < cur_->begin || ptr_ > end_ || end_ != cur_->end) fail("F1: position outside chunk");
  if (n != chunks_) fail("F2: chunk count");
  if (cap != capacity_) fail("F2: capacity");
  if (before != used_before_) fail("F2: bytes used before the current chunk");
  if (used_bytes() > capacity_) fail("F2: used > capacity");
}

std::string to_string(const frame_arena_stats& s) {
  return fmt::format("frame_arena{}: {} used (peak {}), {} capacity in {} chunk{}\n",
                     s.fixed ? " (fixed)" : "", detail::human_bytes(s.used_bytes),
                     detail::human_bytes(s.peak_bytes), detail::human_bytes(s.capacity_bytes),
                     s.chunks, s.chunks == 1 ? "" : "s");
}

std::string to_json(const frame_arena_stats& s) {
  return fmt::format(
      "{{\"used_bytes\":{},\"peak_bytes\":{},\"capacity_bytes\":{},\"chunks\":{},\"fixed\":{}}}",
      s.used_bytes, s.peak_bytes, s.capacity_bytes, s.chunks, s.fixed);
}

}  // namespace bsalloc
