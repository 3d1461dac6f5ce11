// SPDX-License-Identifier: Apache-2.0
#pragma once
// The records of a slab_resource's large blocks (requests no class serves, passed to the
// upstream): pointer, bytes, alignment, kept out of band so that nothing is written into the
// user's block. An open-addressing hash table (linear probing, deletion by backward shift) in
// memory mapped from the OS, so that it never calls the upstream or malloc.
//
// Invariants (check() verifies them): size_ < cap_ / 2 + 1; every record sits in the probe run
// that starts at its home slot (no empty slot between home and record).
// Thread safety: none; slab_state::large_lock guards it.
#include <cstddef>
#include <cstdint>
#include <utility>

namespace bsalloc::detail {

struct large_record {
  std::uintptr_t p = 0;  // 0: an empty slot
  std::size_t bytes = 0;
  std::size_t alignment = 0;
};

class large_table {
 public:
  large_table() = default;
  large_table(const large_table&) = delete;
  large_table& operator=(const large_table&) = delete;
  ~large_table() { reset(); }

  /// Adds a record; false when no memory could be had for growing.
  bool insert(const large_record& r) noexcept;
  /// The record of p, or nullptr.
  const large_record* find(std::uintptr_t p) const noexcept;
  /// Removes p's record into `out`; false if there is none.
  bool erase(std::uintptr_t p, large_record& out) noexcept;
  /// Calls f(record) for each record.
  template <class F>
  void for_each(F f) const {
    for (std::size_t i = 0; i < cap_; ++i)
      if (slots_[i].p) f(slots_[i]);
  }
  std::size_t size() const noexcept { return size_; }
  /// Exchanges the contents of two tables.
  void swap(large_table& other) noexcept {
    std::swap(slots_, other.slots_);
    std::swap(cap_, other.cap_);
    std::swap(size_, other.size_);
    std::swap(shift_, other.shift_);
  }
  /// Forgets every record and gives the table's memory back.
  void reset() noexcept;
  /// Verifies the invariants; returns what is broken or nullptr.
  const char* check() const noexcept;

 private:
  std::size_t home(std::uintptr_t p) const noexcept {
    return static_cast<std::size_t>((p * 0x9E3779B97F4A7C15ull) >> shift_);
  }
  bool grow() noexcept;

  large_record* slots_ = nullptr;
  std::size_t cap_ = 0;  // 0 or a power of two
  std::size_t size_ = 0;
  unsigned shift_ = 64;
};

}  // namespace bsalloc::detail
