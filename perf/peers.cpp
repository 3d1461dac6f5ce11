// SPDX-License-Identifier: Apache-2.0
// The peers: every allocator measured, each behind one std::pmr::memory_resource*.
#include <dlfcn.h>
#include <malloc.h>

#include <cstdlib>
#include <memory_resource>
#include <new>

#include <boost/container/pmr/global_resource.hpp>
#include <boost/container/pmr/synchronized_pool_resource.hpp>

#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include "bench.hpp"

namespace bench {
namespace {

constexpr std::size_t max_align = alignof(std::max_align_t);

/// malloc/free behind std::pmr::memory_resource: the malloc family (glibc, or jemalloc,
/// mimalloc, tcmalloc by LD_PRELOAD). Over-aligned requests use aligned_alloc.
class malloc_resource final : public std::pmr::memory_resource {
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    void* p = alignment <= max_align
                  ? std::malloc(bytes)
                  : std::aligned_alloc(alignment, (bytes + alignment - 1) & ~(alignment - 1));
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void* p, std::size_t, std::size_t) override { std::free(p); }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
};

template <class F>
F* symbol(const char* name) {
  return reinterpret_cast<F*>(dlsym(RTLD_DEFAULT, name));
}

/// Which malloc this process runs with: the preloaded library exports its own API.
std::string_view loaded_malloc() {
  if (symbol<void()>("mallctl") != nullptr) return "jemalloc";
  if (symbol<void()>("mi_malloc") != nullptr) return "mimalloc";
  if (symbol<void()>("tc_malloc") != nullptr) return "tcmalloc";
  return "glibc";
}

/// Asks whichever malloc is loaded to return its free memory to the OS.
void trim_malloc() {
  if (auto* mallctl =
          symbol<int(const char*, void*, std::size_t*, void*, std::size_t)>("mallctl")) {
    mallctl("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
    mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0);  // MALLCTL_ARENAS_ALL
  } else if (auto* mi_collect = symbol<void(bool)>("mi_collect")) {
    mi_collect(true);
  } else if (auto* release = symbol<void()>("MallocExtension_ReleaseFreeMemory")) {
    release();
  } else {
    malloc_trim(0);
  }
}

class malloc_peer final : public peer {
 public:
  std::pmr::memory_resource* resource() override { return &res_; }
  peer_kind kind() const override { return peer_kind::malloc_family; }
  void trim() override { trim_malloc(); }

 private:
  malloc_resource res_;
};

/// A std::pmr pool (or any resource with release()) over the default upstream (glibc malloc).
template <class Pool>
class pool_peer final : public peer {
 public:
  std::pmr::memory_resource* resource() override { return &pool_; }
  peer_kind kind() const override { return peer_kind::pmr; }
  void trim() override {
    pool_.release();
    trim_malloc();
  }

 private:
  Pool pool_;
};

/// boost::container::pmr::synchronized_pool_resource behind std::pmr::memory_resource. Boost's
/// pools ignore over-alignment, so over-aligned requests go to aligned operator new (the
/// workloads make none).
class boost_sync_resource final : public std::pmr::memory_resource {
 public:
  void release() { pool_.release(); }

 private:
  void* do_allocate(std::size_t bytes, std::size_t alignment) override {
    if (alignment > max_align) return ::operator new (bytes, std::align_val_t{alignment});
    return pool_.allocate(bytes, alignment);
  }
  void do_deallocate(void* p, std::size_t bytes, std::size_t alignment) override {
    if (alignment > max_align) return ::operator delete (p, std::align_val_t{alignment});
    pool_.deallocate(p, bytes, alignment);
  }
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
  boost::container::pmr::synchronized_pool_resource pool_{
      boost::container::pmr::new_delete_resource()};
};

class page_peer final : public peer {
 public:
  std::pmr::memory_resource* resource() override { return &pages_; }
  peer_kind kind() const override { return peer_kind::pmr; }
  void trim() override { pages_.trim(); }
  std::string stats() override { return bsalloc::to_string(pages_.stats()); }

 private:
  // As global_page_resource() is configured: with the per-core run cache.
  bsalloc::page_resource pages_{
      bsalloc::page_resource_options{.cache_bytes_per_core = bsalloc::global_cache_bytes_per_core}};
};

class slab_peer final : public peer {
 public:
  slab_peer() = default;
  explicit slab_peer(const bsalloc::slab_resource_options& o) : slab_({}, o) {}
  std::pmr::memory_resource* resource() override { return &slab_; }
  peer_kind kind() const override { return peer_kind::pmr; }
  void trim() override {
    slab_.trim();
    bsalloc::global_page_resource().trim();
  }
  std::string stats() override {
    return bsalloc::to_string(slab_.stats()) + "\nupstream:\n" +
           bsalloc::to_string(bsalloc::global_page_resource().stats());
  }

 private:
  bsalloc::slab_resource slab_;
};

/// object_pool<T> is typed: the `objects` workload makes its own pool; this peer only marks it.
class object_pool_peer final : public peer {
 public:
  std::pmr::memory_resource* resource() override { return nullptr; }
  peer_kind kind() const override { return peer_kind::object_pool; }
  void trim() override { bsalloc::global_page_resource().trim(); }
};

/// Does nothing: the call harness's own cost, subtracted from the callgrind counts.
class null_resource final : public std::pmr::memory_resource {
  void* do_allocate(std::size_t, std::size_t) override { return block_; }
  void do_deallocate(void*, std::size_t, std::size_t) override {}
  bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override {
    return this == &o;
  }
  alignas(64) std::byte block_[1 << 16];
};

class null_peer final : public peer {
 public:
  std::pmr::memory_resource* resource() override { return &res_; }
  peer_kind kind() const override { return peer_kind::baseline; }
  void trim() override {}

 private:
  null_resource res_;
};

}  // namespace

std::vector<std::string> peer_names() {
  std::vector<std::string> names;
  for (const char* n : {"slab", "object_pool", "page", "std_sync", "std_unsync", "boost_sync",
                        "glibc", "jemalloc", "mimalloc", "tcmalloc"}) {
    names.emplace_back(n);
  }
  return names;
}

std::unique_ptr<peer> make_peer(std::string_view name, std::string& error) {
  if (name == "glibc" || name == "jemalloc" || name == "mimalloc" || name == "tcmalloc") {
    if (loaded_malloc() != name) {
      error = "peer " + std::string(name) + " asked for, but this process runs with " +
              std::string(loaded_malloc()) + " (LD_PRELOAD?)";
      return nullptr;
    }
    return std::make_unique<malloc_peer>();
  }
  if (name == "std_sync")
    return std::make_unique<pool_peer<std::pmr::synchronized_pool_resource>>();
  if (name == "std_unsync") {
    return std::make_unique<pool_peer<std::pmr::unsynchronized_pool_resource>>();
  }
  if (name == "boost_sync") return std::make_unique<pool_peer<boost_sync_resource>>();
  if (name == "page") return std::make_unique<page_peer>();
  if (name == "slab") return std::make_unique<slab_peer>();
  // Not in peer_names() (full runs leave it out): hardened mode's cost, run by name.
  if (name == "slab_hardened") {
    bsalloc::slab_resource_options o;
    o.hardened = true;
    return std::make_unique<slab_peer>(o);
  }
  if (name == "object_pool") return std::make_unique<object_pool_peer>();
  if (name == "null") return std::make_unique<null_peer>();
  error = "unknown peer " + std::string(name);
  return nullptr;
}

}  // namespace bench
