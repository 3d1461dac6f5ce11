// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::frame_arena — bump allocation with an O(1) reset, the engine's per-frame scratch.
//
//   bsalloc::frame_arena scratch;                  // chunks from global_page_resource()
//   std::pmr::vector<draw_command> draws{&scratch};
//   ...
//   scratch.reset();                               // O(1): everything reusable, chunks kept
//
//   bsalloc::frame_ring<3> frames{buffer_span};    // 3 frames in flight over one fixed buffer
//   auto& f = frames.next_frame();                 // resets the oldest frame's arena
//
// Glossary
//   chunk    a run of memory the arena bumps through: from the upstream (a header at its start,
//            given back only by release() and the destructor), or the caller's buffer (a fixed
//            arena: no upstream, exactly one chunk, described inside the arena object).
//   current  the chunk being bumped through; ptr_ is its next free byte, end_ its end.
//   marker   a position (chunk, byte, bytes used) returned by mark(); rewind(m) frees
//            everything allocated after it.
//   epoch    bumped by reset() and release(): markers from an older epoch are stale.
//
// Invariants (check_invariants() verifies them)
//   F1  no chunk: first_ == cur_ == ptr_ == end_ == nullptr. Otherwise cur_ is on the list from
//       first_, cur_->begin <= ptr_ <= end_ == cur_->end.
//   F2  used() == used_before_ + (ptr_ - cur_->begin) <= capacity_ == sum over chunks of
//       (end - begin); chunks_ == length of the list.
//   F3  chunks after cur_ hold nothing (they are kept from earlier frames, reused in order).
//   F4  under ASan every byte of every chunk that is not handed out is poisoned.
//
// Requests: any size, any power-of-two alignment (another throws std::invalid_argument).
// deallocate() of the most recent allocation gives its bytes back; any other is a no-op.
// Running out: with an upstream, a new chunk is taken (the upstream's std::bad_alloc
// propagates); a fixed arena calls the out-of-memory handler (out_of_memory.hpp), retries once
// if it returns true, then throws std::bad_alloc and stays usable.
// Thread safety: none; one arena belongs to one thread at a time (like a frame).
// Cost: allocate is a few instructions inline; reset() is O(1) — unless a debug fill or ASan is
// on, which touch every byte freed.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <bsalloc/debug_fill.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/stats.hpp>

namespace bsalloc {

struct frame_arena_options {
  /// Bytes of the first chunk taken from the upstream (its 64-byte header included); each
  /// further chunk doubles, up to max_chunk_bytes. A larger request gets a chunk of its own
  /// size; chunks of a page or more are whole pages.
  std::size_t chunk_bytes = std::size_t{64} << 10;
  std::size_t max_chunk_bytes = std::size_t{4} << 20;
  debug_fill fill;   ///< on_free is written by reset()/rewind()/LIFO deallocate
  std::string name;  ///< in out-of-memory reports and bulk-free events
};

struct frame_arena_stats {
  std::size_t used_bytes = 0;      ///< handed out now (alignment padding included)
  std::size_t peak_bytes = 0;      ///< highest used_bytes since construction
  std::size_t capacity_bytes = 0;  ///< usable bytes of all chunks
  std::size_t chunks = 0;
  bool fixed = false;  ///< a caller's buffer, no upstream
};

std::string to_string(const frame_arena_stats& s);
std::string to_json(const frame_arena_stats& s);

class frame_arena : public std::pmr::memory_resource {
 public:
  struct marker {
    const frame_arena* owner = nullptr;
    std::uint64_t epoch = 0;
    const void* chunk = nullptr;
    std::byte* pos = nullptr;
    std::size_t used = 0;
  };

  /// Chunks from global_page_resource().
  frame_arena();
  explicit frame_arena(std::pmr::memory_resource* upstream, frame_arena_options options = {});
  /// A fixed arena over the caller's buffer: never calls any upstream.
  explicit frame_arena(std::span<std::byte> buffer, frame_arena_options options = {});
  ~frame_arena() override;
  frame_arena(const frame_arena&) = delete;
  frame_arena& operator=(const frame_arena&) = delete;

  /// Everything becomes reusable; chunks are kept, nothing is called upstream. O(1).
  void reset() noexcept;
  /// The current position, for rewind().
  marker mark() const noexcept { return marker{this, epoch_, cur_, ptr_, used_bytes()}; }
  /// Frees everything allocated after `m`. Throws std::invalid_argument (and changes nothing)
  /// for a marker of another arena, one taken before the last reset()/release(), or one that
  /// lies after the current position (its allocations were rewound already). A marker made
  /// stale by rewinding to an older one and allocating past it again is not detected:
  /// rewinding to it frees what lies after its position (safe for the arena; stats stay
  /// exact). O(chunks before the marker's).
  void rewind(const marker& m);
  /// Gives every chunk back to the upstream (a fixed arena just resets).
  void release() noexcept;

  std::size_t used_bytes() const noexcept {
    return cur_ == nullptr ? 0 : used_before_ + static_cast<std::size_t>(ptr_ - cur_->begin);
  }
  frame_arena_stats stats() const noexcept;
  /// Verifies F1–F3; throws std::logic_error naming the broken invariant.
  void check_invariants() const;
  /// The upstream, or nullptr for a fixed arena.
  std::pmr::memory_resource* upstream_resource() const noexcept { return upstream_; }
  const frame_arena_options& options() const noexcept { return options_; }
  std::string_view name() const noexcept { return options_.name; }

  /// Calls f(const std::byte* begin, std::size_t bytes) for each chunk's used range, in
  /// allocation order: every live allocation lies in one of them (a bump arena keeps no
  /// per-object record). Same thread only.
  template <class F>
  void for_each_used(F&& f) const {
    for (const chunk* c = first_; c != nullptr; c = c->next) {
      if (c == cur_) {
        if (ptr_ != c->begin)
          f(static_cast<const std::byte*>(c->begin), std::size_t(ptr_ - c->begin));
        return;
      }
      if (c->used != 0) f(static_cast<const std::byte*>(c->begin), c->used);
    }
  }

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    const auto cur = reinterpret_cast<std::uintptr_t>(ptr_);
    const auto end = reinterpret_cast<std::uintptr_t>(end_);
    const std::uintptr_t aligned = (cur + alignment - 1) & ~(std::uintptr_t{alignment} - 1);
    // A power of two (std::has_single_bit would be a popcount call without -mpopcnt).
    const bool power_of_two = alignment != 0 && (alignment & (alignment - 1)) == 0;
    if (power_of_two && aligned < end && bytes <= end - aligned) [[likely]] {
      auto* p = reinterpret_cast<std::byte*>(aligned);
      ptr_ = p + bytes;
      if (debug_) [[unlikely]]
        on_hand_out(p, bytes);
      return p;
    }
    return allocate_slow(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t) override {
    auto* b = static_cast<std::byte*>(p);
    if (cur_ != nullptr && b + bytes == ptr_ && b >= cur_->begin) give_back_last(b);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

 private:
  struct chunk {
    chunk* next;
    std::byte* begin;
    std::byte* end;
    std::size_t used;   // bytes used when the arena moved past it (valid for chunks before cur_)
    std::size_t bytes;  // taken from the upstream, header included (0: the fixed buffer)
  };

  [[gnu::noinline]] void* allocate_slow(std::size_t bytes, std::size_t alignment);
  [[gnu::noinline]] void give_back_last(std::byte* p) noexcept;
  [[gnu::noinline]] void on_hand_out(std::byte* p, std::size_t bytes) noexcept;
  void* try_chunk(chunk* c, std::size_t bytes, std::size_t alignment) noexcept;
  void* add_chunk(std::size_t bytes, std::size_t alignment);
  void set_current(chunk* c) noexcept;
  void free_range(std::byte* from, std::byte* to) noexcept;  // fills and poisons
  void free_after(chunk* c, std::byte* pos) noexcept;        // everything after (c, pos)
  void notify(bulk_free_kind kind, std::size_t before) noexcept;
  void note_peak() noexcept {
    const std::size_t u = used_bytes();
    if (u > peak_) peak_ = u;
  }

  std::byte* ptr_ = nullptr;
  std::byte* end_ = nullptr;
  chunk* cur_ = nullptr;
  chunk* first_ = nullptr;
  std::size_t used_before_ = 0;  // bytes used in the chunks before cur_
  std::size_t peak_ = 0;         // highest used_bytes() noted (at every decrease and stats())
  std::size_t capacity_ = 0;
  std::size_t chunks_ = 0;
  std::size_t next_chunk_bytes_ = 0;
  std::uint64_t epoch_ = 0;
  bool debug_ = false;  // a fill or ASan: on_hand_out runs for every allocation
  std::pmr::memory_resource* upstream_ = nullptr;
  chunk fixed_{};  // the fixed arena's one chunk
  frame_arena_options options_;
};

/// N frame arenas for N frames in flight: next_frame() resets the oldest and makes it current.
/// With a buffer, each arena is a fixed arena over 1/N of it (64-byte aligned slices).
template <std::size_t N>
class frame_ring {
  static_assert(N >= 1, "a frame ring needs at least one frame");

 public:
  explicit frame_ring(std::pmr::memory_resource* upstream = &global_page_resource(),
                      const frame_arena_options& options = {})
      : arenas_(make(std::make_index_sequence<N>{}, upstream, options)) {}
  explicit frame_ring(std::span<std::byte> buffer, const frame_arena_options& options = {})
      : arenas_(make(std::make_index_sequence<N>{}, buffer, options)) {}

  /// Starts a frame: the oldest arena is reset and becomes current. Returns it.
  frame_arena& next_frame() noexcept {
    index_ = frames_ == 0 ? 0 : (index_ + 1) % N;
    ++frames_;
    arenas_[index_].reset();
    return arenas_[index_];
  }
  /// The current frame's arena (arena 0 before the first next_frame()).
  frame_arena& current() noexcept { return arenas_[index_]; }
  frame_arena& operator[](std::size_t i) noexcept { return arenas_[i]; }
  const frame_arena& operator[](std::size_t i) const noexcept { return arenas_[i]; }
  static constexpr std::size_t size() noexcept { return N; }
  /// next_frame() calls so far.
  std::uint64_t frames() const noexcept { return frames_; }

 private:
  static frame_arena_options named(const frame_arena_options& o, std::size_t i) {
    frame_arena_options r = o;
    r.name = (o.name.empty() ? std::string("frame") : o.name) + "[" + std::to_string(i) + "]";
    return r;
  }
  static std::span<std::byte> slice(std::span<std::byte> b, std::size_t i) noexcept {
    const auto base = reinterpret_cast<std::uintptr_t>(b.data());
    const std::uintptr_t first = (base + 63) & ~std::uintptr_t{63};
    const std::size_t usable = b.size() > first - base ? b.size() - (first - base) : 0;
    const std::size_t each = (usable / N) & ~std::size_t{63};
    return {reinterpret_cast<std::byte*>(first) + i * each, each};
  }
  template <std::size_t... I>
  static std::array<frame_arena, N> make(std::index_sequence<I...>,
                                         std::pmr::memory_resource* upstream,
                                         const frame_arena_options& o) {
    return {{frame_arena(upstream, named(o, I))...}};
  }
  template <std::size_t... I>
  static std::array<frame_arena, N> make(std::index_sequence<I...>, std::span<std::byte> buffer,
                                         const frame_arena_options& o) {
    return {{frame_arena(slice(buffer, I), named(o, I))...}};
  }

  std::array<frame_arena, N> arenas_;
  std::size_t index_ = 0;
  std::uint64_t frames_ = 0;
};

}  // namespace bsalloc

template <>
struct fmt::formatter<bsalloc::frame_arena_stats>
    : bsalloc::detail::stats_formatter<bsalloc::frame_arena_stats> {};
