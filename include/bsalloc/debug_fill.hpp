// SPDX-License-Identifier: Apache-2.0
#pragma once
// Debug fills, ASan poisoning and bulk-free events: the tools that make use-after-free and
// use-after-reset visible.
//
//   debug_fill        bytes written over memory when it is handed out and when it is freed (or
//                     reset/rewound); off by default. frame_arena takes one in its options;
//                     fill_resource wraps any other resource with one.
//   ASan poisoning    under AddressSanitizer a frame_arena poisons what reset()/rewind() free and
//                     unpoisons what it hands out, so a use after reset is reported.
//   bulk-free hook    set_bulk_free_hook(fn): told about every reset()/rewind()/release() that
//                     frees many objects at once (profilers and sanitizers otherwise see them
//                     as leaks: no per-object free ever happens).
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <cstddef>
#include <cstring>
#include <memory_resource>
#include <optional>
#include <string_view>

#include <bsalloc/detail/config.hpp>  // BSALLOC_ASAN: defined (to 1) only under ASan

#ifdef BSALLOC_ASAN
#include <sanitizer/asan_interface.h>
#endif

namespace bsalloc {

/// Fill patterns; std::nullopt leaves memory as it is (the default: no cost).
struct debug_fill {
  std::optional<unsigned char> on_allocate;  ///< e.g. 0xCD: uninitialised reads stand out
  std::optional<unsigned char> on_free;      ///< e.g. 0xDD: reads after free stand out
};

/// Was this build compiled with AddressSanitizer (and does it poison frame arenas)?
#ifdef BSALLOC_ASAN
inline constexpr bool asan_enabled = true;
#else
inline constexpr bool asan_enabled = false;
#endif

enum class bulk_free_kind { reset, rewind, release };

/// What the bulk-free hook is told (the views are valid during the call only): `resource` freed
/// `bytes` of objects at once.
struct bulk_free_event {
  bulk_free_kind kind = bulk_free_kind::reset;
  std::string_view resource_type;  ///< "frame_arena", ...
  std::string_view name;
  const void* resource = nullptr;
  std::size_t bytes = 0;  ///< bytes in use before the event minus after it
};

using bulk_free_hook = void (*)(const bulk_free_event&) noexcept;

/// Installs the hook (nullptr: none, the default); returns the previous one. Called from the
/// thread doing the reset/release, with no bsalloc lock held.
bulk_free_hook set_bulk_free_hook(bulk_free_hook hook) noexcept;
bulk_free_hook get_bulk_free_hook() noexcept;

namespace detail {

void notify_bulk_free(const bulk_free_event& event) noexcept;

inline void poison(const void* p, std::size_t n) noexcept {
#ifdef BSALLOC_ASAN
  __asan_poison_memory_region(p, n);
#else
  (void)p;
  (void)n;
#endif
}
inline void unpoison(const void* p, std::size_t n) noexcept {
#ifdef BSALLOC_ASAN
  __asan_unpoison_memory_region(p, n);
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace detail

/// Wraps any resource with debug fills: writes `fill.on_allocate` over each block handed out and
/// `fill.on_free` over each block given back (before passing it upstream). Stateless apart from
/// the fill; thread-safe if the upstream is.
class fill_resource : public std::pmr::memory_resource {
 public:
  fill_resource(std::pmr::memory_resource* upstream, debug_fill fill) noexcept
      : upstream_(upstream), fill_(fill) {}
  std::pmr::memory_resource* upstream_resource() const noexcept { return upstream_; }
  const debug_fill& fill() const noexcept { return fill_; }

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    void* p = upstream_->allocate(bytes, alignment);
    if (fill_.on_allocate) std::memset(p, *fill_.on_allocate, bytes);
    return p;
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    if (fill_.on_free) std::memset(p, *fill_.on_free, bytes);
    upstream_->deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& other) const noexcept override {
    return this == &other;
  }

 private:
  std::pmr::memory_resource* upstream_;
  debug_fill fill_;
};

}  // namespace bsalloc
