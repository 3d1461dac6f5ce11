// SPDX-License-Identifier: Apache-2.0
// bsalloc::detail::large_table — see large_table.hpp.
#include "large_table.hpp"

#include <sys/mman.h>

#include <bit>
#include <cstdio>
#include <cstdlib>

namespace bsalloc::detail {
namespace {

large_record* map_records(std::size_t n) noexcept {
  void* m = ::mmap(nullptr, n * sizeof(large_record), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return m == MAP_FAILED ? nullptr : static_cast<large_record*>(m);  // zero-filled: all empty
}

}  // namespace

bool large_table::grow() noexcept {
  const std::size_t cap = cap_ ? cap_ * 2 : 256;  // 256 records: 6 KiB, a page and a half
  large_record* fresh = map_records(cap);
  if (!fresh) return false;
  large_record* old = slots_;
  const std::size_t old_cap = cap_;
  slots_ = fresh;
  cap_ = cap;
  shift_ = 64 - static_cast<unsigned>(std::countr_zero(cap));
  size_ = 0;
  for (std::size_t i = 0; i < old_cap; ++i)
    if (old[i].p) {
      std::size_t j = home(old[i].p);
      while (slots_[j].p) j = (j + 1) & (cap_ - 1);
      slots_[j] = old[i];
      ++size_;
    }
  if (old) ::munmap(old, old_cap * sizeof(large_record));
  return true;
}

bool large_table::insert(const large_record& r) noexcept {
  if ((size_ + 1) * 2 > cap_ && !grow()) return false;
  std::size_t i = home(r.p);
  while (slots_[i].p) i = (i + 1) & (cap_ - 1);
  slots_[i] = r;
  ++size_;
#ifndef NDEBUG
  if (size_ * 2 > cap_) std::abort();  // L1: never over half full
#endif
  return true;
}

const large_record* large_table::find(std::uintptr_t p) const noexcept {
  if (!cap_ || !p) return nullptr;
  for (std::size_t i = home(p);; i = (i + 1) & (cap_ - 1)) {
    if (slots_[i].p == p) return &slots_[i];
    if (!slots_[i].p) return nullptr;
  }
}

bool large_table::erase(std::uintptr_t p, large_record& out) noexcept {
  const large_record* r = find(p);
  if (!r) return false;
  out = *r;
  std::size_t hole = static_cast<std::size_t>(r - slots_);
  // Backward shift: move later records of the run into the hole when their home allows it.
  for (std::size_t j = (hole + 1) & (cap_ - 1); slots_[j].p; j = (j + 1) & (cap_ - 1)) {
    const std::size_t h = home(slots_[j].p);
    // j's record may move to `hole` iff its home is not in (hole, j] (cyclically).
    const bool home_between = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j);
    if (!home_between) {
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole] = large_record{};
  --size_;
  return true;
}

void large_table::reset() noexcept {
  if (slots_) ::munmap(slots_, cap_ * sizeof(large_record));
  slots_ = nullptr;
  cap_ = size_ = 0;
  shift_ = 64;
}

const char* large_table::check() const noexcept {
  std::size_t n = 0;
  for (std::size_t i = 0; i < cap_; ++i) {
    if (!slots_[i].p) continue;
    ++n;
    for (std::size_t j = home(slots_[i].p); j != i; j = (j + 1) & (cap_ - 1))
      if (!slots_[j].p) return "L1: a large record is cut off from its home slot";
  }
  if (n != size_) return "L1: large record count wrong";
  if (cap_ && size_ * 2 > cap_) return "L1: large table over half full";
  return nullptr;
}

}  // namespace bsalloc::detail
