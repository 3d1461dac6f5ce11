// SPDX-License-Identifier: Apache-2.0
// Live page_resources and fork safety. Every page_resource registers here while it lives; the
// pthread_atfork handlers (installed once, at static initialisation or with the first
// resource, whichever comes first) take the registry's mutex and then every live resource's
// locks before fork(), and release them in the parent and the child, so that a child forked
// from a multi-threaded parent can allocate and free through every page_resource.
//
// Lock order: registry mutex, then each resource's mutex_, then its core locks. Nothing takes
// the registry mutex while holding a resource lock.
#include <pthread.h>

#include <mutex>
#include <new>

#include "internal.hpp"

namespace bsalloc::detail {

struct page_access {
  static page_resource*& next(page_resource& r) { return r.live_next_; }
  static page_resource*& prev(page_resource& r) { return r.live_prev_; }
  static void lock_all(page_resource& r) { r.lock_all(); }
  static void unlock_all(page_resource& r) { r.unlock_all(); }
  static void after_fork_child(page_resource& r) { r.after_fork_child(); }
};

namespace {

struct registry {
  std::mutex mutex;
  page_resource* head = nullptr;
};

registry& the_registry() noexcept {  // never destroyed: resources may outlive static dtors
  alignas(registry) static std::byte storage[sizeof(registry)];
  static registry* const r = ::new (storage) registry();
  return *r;
}

void prepare() noexcept {
  global_page_resource_mutex.lock();  // no construction of global_page_resource() in flight
  registry& g = the_registry();
  g.mutex.lock();
  for (page_resource* r = g.head; r; r = page_access::next(*r)) page_access::lock_all(*r);
}

void parent() noexcept {
  registry& g = the_registry();
  for (page_resource* r = g.head; r; r = page_access::next(*r)) page_access::unlock_all(*r);
  g.mutex.unlock();
  global_page_resource_mutex.unlock();
}

void child() noexcept {
  registry& g = the_registry();
  for (page_resource* r = g.head; r; r = page_access::next(*r)) {
    page_access::after_fork_child(*r);
    page_access::unlock_all(*r);
  }
  g.mutex.unlock();
  global_page_resource_mutex.unlock();
}

}  // namespace

void install_page_fork_handlers() {
  static const bool installed = [] {
    (void)the_registry();
    return ::pthread_atfork(prepare, parent, child) == 0;
  }();
  (void)installed;
}

// Early, so that layers above (which install theirs later) run their prepare handlers first:
// pthread_atfork runs prepare handlers in reverse order of installation, and the slab layer's
// locks come before the page layer's.
namespace {
[[maybe_unused]] const bool installed_at_startup = (install_page_fork_handlers(), true);
}  // namespace

void register_resource(page_resource* r) {
  install_page_fork_handlers();
  registry& g = the_registry();
  std::lock_guard lock(g.mutex);
  page_access::prev(*r) = nullptr;
  page_access::next(*r) = g.head;
  if (g.head) page_access::prev(*g.head) = r;
  g.head = r;
}

void unregister_resource(page_resource* r) noexcept {
  registry& g = the_registry();
  std::lock_guard lock(g.mutex);
  page_resource* const prev = page_access::prev(*r);
  page_resource* const next = page_access::next(*r);
  if (prev == nullptr && g.head != r) return;  // not registered (any more): nothing to unlink
  if (prev)
    page_access::next(*prev) = next;
  else
    g.head = next;
  if (next) page_access::prev(*next) = prev;
  page_access::prev(*r) = page_access::next(*r) = nullptr;
}

}  // namespace bsalloc::detail
