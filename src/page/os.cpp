// SPDX-License-Identifier: Apache-2.0
// The page layer's OS interface: every mmap, madvise and munmap of bsalloc's page layer goes
// through here, so that tests can make the Nth call fail (detail::os_fault_injection).
#include <sys/mman.h>

#include "internal.hpp"

namespace bsalloc::detail {

os_fault_injection_t os_fault_injection;

namespace {

// True if this call is the one the test asked to fail. A countdown: N means the Nth call from
// now fails, once; 0 means never.
bool inject(std::atomic<long>& countdown) noexcept {
  long n = countdown.load(std::memory_order_relaxed);
  while (n > 0) {
    if (countdown.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return n == 1;
  }
  return false;
}

}  // namespace

void* os_map(std::size_t bytes) noexcept {
  if (inject(os_fault_injection.mmap)) return nullptr;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void* os_map_aligned(std::size_t bytes, std::size_t align) noexcept {
  if (align <= page_size) return os_map(bytes);
  // Reserve size + alignment, then give back the unaligned head and the tail. A failure to
  // trim only leaves unused address space mapped (never touched, so never resident).
  void* raw = os_map(bytes + align);
  if (!raw) return nullptr;
  const auto raw_addr = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t base = align_up(raw_addr, align);
  if (base > raw_addr) ::munmap(raw, base - raw_addr);
  const std::uintptr_t end = raw_addr + bytes + align;
  if (end > base + bytes) ::munmap(reinterpret_cast<void*>(base + bytes), end - (base + bytes));
  return reinterpret_cast<void*>(base);
}

bool os_unmap(void* p, std::size_t bytes) noexcept {
  if (inject(os_fault_injection.munmap)) return false;
  return ::munmap(p, bytes) == 0;
}

bool os_purge(void* p, std::size_t bytes) noexcept {
  if (inject(os_fault_injection.madvise)) return false;
  return ::madvise(p, bytes, MADV_DONTNEED) == 0;
}

void os_hugepage(void* p, std::size_t bytes) noexcept {
#ifdef MADV_HUGEPAGE
  (void)::madvise(p, bytes, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace bsalloc::detail
