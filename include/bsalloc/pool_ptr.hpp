// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::pool_ptr<T, Lock, SlabBytes> — the owning pointer object_pool<T, Lock, SlabBytes>
// hands out: move-only like std::unique_ptr, the size of one pointer. Its destructor runs ~T
// and gives the slot back to the pool it came from, found by masking the object's address to
// its slab (object_pool::dispose): it needs no reference to the pool, may run on any thread
// (unless the lock policy is null_lock: then `thread_safe` is false and the pointer belongs to
// the pool's one thread), and may outlive every handle of the pool.
//
// pool_ptr<Node> may be named while Node is incomplete (a tree or list node holding pointers
// to its children): nothing about T is needed until a pool_ptr is destroyed or reset.
//
// This header depends on locks.hpp only (object_pool is declared, not defined): object_pool.hpp
// includes it, not the other way round. Destroying or resetting a pool_ptr instantiates
// object_pool<T, Lock, SlabBytes>::dispose, so include <bsalloc/object_pool.hpp> where that
// happens (every pool_ptr comes from a pool, so its code has it already).
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <compare>
#include <cstddef>
#include <functional>
#include <utility>

#include <bsalloc/locks.hpp>

namespace bsalloc {

/// SlabBytes == auto_slab_bytes: the pool chooses (64 KiB, or more so that 8 objects fit).
inline constexpr std::size_t auto_slab_bytes = 0;

template <class T, class Lock = yield_lock, std::size_t SlabBytes = auto_slab_bytes>
class object_pool;

template <class T, class Lock = yield_lock, std::size_t SlabBytes = auto_slab_bytes>
class pool_ptr {
 public:
  using element_type = T;
  using pointer = T*;
  using pool_type = object_pool<T, Lock, SlabBytes>;
  /// False for null_lock pools: the pointer must then be used and destroyed on the pool's thread.
  static constexpr bool thread_safe = is_thread_safe_lock_v<Lock>;

  constexpr pool_ptr() noexcept = default;
  constexpr pool_ptr(std::nullptr_t) noexcept {}
  /// Takes ownership of a live object in a slot of a pool of this type (what release()
  /// returned, or an object constructed in place in a slot from allocate()).
  explicit pool_ptr(T* object) noexcept : p_(object) {}
  pool_ptr(pool_ptr&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
  pool_ptr& operator=(pool_ptr&& other) noexcept {
    reset(std::exchange(other.p_, nullptr));
    return *this;
  }
  pool_ptr& operator=(std::nullptr_t) noexcept {
    reset();
    return *this;
  }
  pool_ptr(const pool_ptr&) = delete;
  pool_ptr& operator=(const pool_ptr&) = delete;
  ~pool_ptr() {
    if (p_) pool_type::dispose(p_);
  }

  T* get() const noexcept { return p_; }
  T& operator*() const noexcept { return *p_; }
  T* operator->() const noexcept { return p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

  /// Gives up ownership: the object stays alive in its slot; pool_type::dispose(p) (or
  /// pool.destroy(p), or a new pool_ptr) must end it.
  [[nodiscard]] T* release() noexcept { return std::exchange(p_, nullptr); }
  /// Destroys the owned object (if any) and owns `object` instead.
  void reset(T* object = nullptr) noexcept {
    if (T* old = std::exchange(p_, object)) pool_type::dispose(old);
  }
  void swap(pool_ptr& other) noexcept { std::swap(p_, other.p_); }
  friend void swap(pool_ptr& a, pool_ptr& b) noexcept { a.swap(b); }

  friend bool operator==(const pool_ptr& a, const pool_ptr& b) noexcept { return a.p_ == b.p_; }
  friend bool operator==(const pool_ptr& a, std::nullptr_t) noexcept { return a.p_ == nullptr; }
  friend std::strong_ordering operator<=>(const pool_ptr& a, const pool_ptr& b) noexcept {
    return std::compare_three_way{}(a.p_, b.p_);
  }

 private:
  T* p_ = nullptr;
};

}  // namespace bsalloc

template <class T, class Lock, std::size_t SlabBytes>
struct std::hash<bsalloc::pool_ptr<T, Lock, SlabBytes>> {
  std::size_t operator()(const bsalloc::pool_ptr<T, Lock, SlabBytes>& p) const noexcept {
    return std::hash<T*>{}(p.get());
  }
};
