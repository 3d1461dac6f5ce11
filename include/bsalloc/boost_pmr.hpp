// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc::boost_pmr_adaptor — Boost.Container's pmr containers on any std::pmr resource.
//
//   bsalloc::slab_resource pool;
//   bsalloc::boost_pmr_adaptor boost_pool{&pool};
//   boost::container::pmr::flat_map<int, int> m{&boost_pool};
//   boost::container::pmr::small_vector<int, 8> v{&boost_pool};
//
// boost::container::pmr::memory_resource is its own class (Boost.Container predates and
// parallels std::pmr), so a std::pmr::memory_resource cannot be passed where Boost wants one.
// This adaptor is one: every call is forwarded to the std resource, unchanged.
//
// Linking: Boost.Container's pmr polymorphic_allocator refers to
// boost::container::pmr::get_default_resource(), which lives in the compiled libboost_container
// (Debian: libboost-container-dev). Link `bsalloc::boost_pmr` (or Boost::container) when you
// include this header; bsalloc::bsalloc alone does not pull Boost.Container's library in.
//
// Thread safety and lifetime: those of the wrapped resource; the adaptor holds only a pointer,
// which must outlive every container using the adaptor.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <cstddef>
#include <memory_resource>

#include <boost/container/pmr/memory_resource.hpp>

namespace bsalloc {

class boost_pmr_adaptor final : public boost::container::pmr::memory_resource {
 public:
  explicit boost_pmr_adaptor(std::pmr::memory_resource* upstream) noexcept : upstream_(upstream) {}
  std::pmr::memory_resource* upstream_resource() const noexcept { return upstream_; }

 protected:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    return upstream_->allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    upstream_->deallocate(p, bytes, alignment);
  }
  /// Equal when both adapt equal std resources (as std::pmr compares resources).
  bool do_is_equal(const boost::container::pmr::memory_resource& other) const noexcept override {
    if (this == &other) return true;
    const auto* o = dynamic_cast<const boost_pmr_adaptor*>(&other);
    return o != nullptr && upstream_->is_equal(*o->upstream_);
  }

 private:
  std::pmr::memory_resource* upstream_;
};

}  // namespace bsalloc
