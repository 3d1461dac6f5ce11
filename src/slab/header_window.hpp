// SPDX-License-Identifier: Apache-2.0
#pragma once
// Memcheck and slab headers. Under memcheck (slab_state::valgrind) every slab header is
// no-access, so that a stray write into one through a user's pointer is reported; the slab
// layer's own uses of headers happen inside a window that makes every live header of the
// resource defined (hardened.cpp keeps the resource's live slabs and the windows open on it,
// counted: windows nest and overlap across threads; the last one to close makes the headers
// no-access again). Off memcheck a window is one test of a flag that the caller's cache line
// already holds. Opened where a slow path starts to touch headers: refill, flush, draining,
// the careful deallocation (hardened), checked mode's records, the walks. A resource with more
// than 128 live slabs stops guarding (hardened.cpp: a window costs a request per live slab).
#include "state.hpp"

namespace bsalloc::detail {

void headers_open(const slab_state& st) noexcept;
void headers_close(const slab_state& st) noexcept;

class header_window {
 public:
  explicit header_window(const slab_state& st) noexcept : st_(st.valgrind ? &st : nullptr) {
    if (st_) [[unlikely]]
      headers_open(*st_);
  }
  ~header_window() {
    if (st_) [[unlikely]]
      headers_close(*st_);
  }
  header_window(const header_window&) = delete;
  header_window& operator=(const header_window&) = delete;

 private:
  const slab_state* st_;
};

}  // namespace bsalloc::detail
