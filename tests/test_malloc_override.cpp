// SPDX-License-Identifier: Apache-2.0
// A program linked with bsalloc::malloc_override: malloc and operator new are bsalloc's, with no
// preload. The robustness points of a replaced malloc: new-handler, fork from a multi-threaded
// parent, thread-local destructors after the thread cache is gone, dlopen / dlclose, a thread
// that exits holding cached objects, glibc's __libc_* names. Without the replacement (sanitizer
// builds: a replaced malloc cannot be combined with the sanitizers' own) only a check that malloc
// was left alone runs.
#include <bsalloc/malloc.h>

#include <dlfcn.h>
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

#ifdef BSALLOC_TEST_MALLOC_OVERRIDE
#define OVERRIDE_ONLY
#else
#define OVERRIDE_ONLY *doctest::skip()
#endif

#ifdef BSALLOC_TEST_MALLOC_OVERRIDE

extern "C" void* __libc_malloc(std::size_t);
extern "C" void __libc_free(void*);

namespace {

// Before any static constructor of this program or of bsalloc ran (priority 101 is the first
// a program may use): malloc and new already work, and are bsalloc's.
int early_owned = -1;
[[gnu::constructor(101)]] void early_calls() {
  void* p = std::malloc(50);
  auto* s = new std::string(200, 'e');
  early_owned = bsalloc_malloc_owns(p) && bsalloc_malloc_owns(s);
  delete s;
  std::free(p);
}

int handler_calls = 0;
// Larger than any address space; volatile so that the compiler does not see the constant.
volatile std::size_t too_much = (std::size_t{1} << 62) + 4096;
void counting_handler() {
  ++handler_calls;
  std::set_new_handler(nullptr);  // the next failure throws
}

struct tls_user {
  std::vector<std::string>* v = nullptr;
  ~tls_user() {
    // Runs at thread exit, maybe after bsalloc's thread cache was flushed and dropped.
    auto* fresh = new std::vector<std::string>(50, std::string(100, 'x'));
    delete fresh;
    delete v;
    void* p = std::malloc(3000);
    std::free(p);
  }
};
thread_local tls_user t_user;

}  // namespace

TEST_CASE("malloc override: malloc, new and the C API are bsalloc's") {
  void* p = std::malloc(100);
  CHECK(bsalloc_malloc_owns(p));
  std::free(p);
  auto* i = new int(5);
  CHECK(bsalloc_malloc_owns(i));
  delete i;
  auto* arr = new double[1000];
  CHECK(bsalloc_malloc_owns(arr));
  delete[] arr;
  struct alignas(256) over {
    char c[300];
  };
  auto* o = new over;
  CHECK(bsalloc_malloc_owns(o));
  CHECK(reinterpret_cast<std::uintptr_t>(o) % 256 == 0);
  delete o;
  void* l = __libc_malloc(70000);
  CHECK(bsalloc_malloc_owns(l));
  __libc_free(l);
  const std::size_t before = bsalloc_malloc_objects_in_use();
  std::vector<std::unique_ptr<std::string>> keep;
  for (int k = 0; k < 1000; ++k) keep.push_back(std::make_unique<std::string>(40, 'a'));
  CHECK(bsalloc_malloc_objects_in_use() >= before + 1000);  // the stats see them
}

TEST_CASE("malloc override: calls before any static constructor ran") {
  CHECK(early_owned == 1);
}

TEST_CASE("malloc override: operator new calls the new-handler, then throws bad_alloc") {
  handler_calls = 0;
  std::set_new_handler(counting_handler);
  bool thrown = false;
  try {
    void* volatile p = ::operator new(too_much);
    (void)p;
  } catch (const std::bad_alloc&) {
    thrown = true;
  }
  CHECK(thrown);
  CHECK(handler_calls == 1);
  CHECK(::operator new(too_much, std::nothrow) == nullptr);
  CHECK(::operator new[](too_much, std::align_val_t{64}, std::nothrow) == nullptr);
  std::set_new_handler(nullptr);
}

TEST_CASE("malloc override: fork from a multi-threaded parent, the child allocates") {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&stop, t] {
      std::vector<void*> held;
      unsigned x = static_cast<unsigned>(t) + 1;
      while (!stop.load(std::memory_order_relaxed)) {
        x = x * 1103515245u + 12345u;
        held.push_back(std::malloc(x % 100000 + 1));
        if (held.size() > 64) {
          for (void* p : held) std::free(p);
          held.clear();
        }
      }
      for (void* p : held) std::free(p);
    });
  for (int round = 0; round < 20; ++round) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::alarm(30);  // a deadlocked child ends
      std::vector<std::string> v;
      for (int k = 0; k < 2000; ++k) v.emplace_back(static_cast<std::size_t>(k % 300), 'c');
      void* big = std::malloc(5 << 20);
      std::memset(big, 1, 5 << 20);
      std::free(big);
      std::thread([] { std::free(std::malloc(64)); }).join();
      ::_exit(bsalloc_malloc_owns(v.back().data()) ? 0 : 3);
    }
    int status = 0;
    REQUIRE(bsalloc_test::wait_child(pid, status) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  stop = true;
  for (auto& t : threads) t.join();
}

TEST_CASE("malloc override: thread-local destructors after the thread cache is gone") {
  for (int round = 0; round < 20; ++round) {
    std::thread([] {
      // Cached objects when the thread exits, and a thread_local whose destructor allocates and
      // frees — before or after bsalloc's own thread-exit flush, whichever the runtime picks.
      std::vector<void*> held;
      for (int k = 0; k < 300; ++k) held.push_back(std::malloc(static_cast<std::size_t>(k) + 1));
      for (void* p : held) std::free(p);
      t_user.v = new std::vector<std::string>(10, std::string(64, 'y'));
    }).join();
  }
  CHECK(bsalloc_malloc_owns(std::unique_ptr<int>(new int(1)).get()));
}

TEST_CASE("malloc override: dlopen and dlclose of a library that allocates") {
  for (int round = 0; round < 5; ++round) {
    void* h = ::dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = ::dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
    REQUIRE_MESSAGE(h != nullptr, ::dlerror());
    CHECK(::dlsym(h, "this_symbol_does_not_exist") == nullptr);
    CHECK(::dlerror() != nullptr);  // the loader allocated its message: freed by the next call
    CHECK(::dlclose(h) == 0);
  }
  void* p = std::malloc(77);
  CHECK(bsalloc_malloc_owns(p));
  std::free(p);
}

TEST_CASE("malloc override: a foreign pointer is handed to the next allocator") {
  using fn = void* (*)(std::size_t);
  auto next_malloc = reinterpret_cast<fn>(::dlsym(RTLD_NEXT, "malloc"));
  REQUIRE(reinterpret_cast<void*>(next_malloc) != nullptr);
  void* foreign = next_malloc(300);  // glibc's: memory a program got before the preload
  REQUIRE(foreign != nullptr);
  CHECK_FALSE(bsalloc_malloc_owns(foreign));
  CHECK(malloc_usable_size(foreign) >= 300);
  std::memset(foreign, 2, 300);
  void* moved = std::realloc(foreign, 600);
  REQUIRE(moved != nullptr);
  CHECK(static_cast<unsigned char*>(moved)[299] == 2);
  std::free(moved);  // no crash: glibc frees it
}

#else  // sanitizer builds: not linked with the replacement

TEST_CASE("malloc override: without the replacement, malloc stays the process's") {
  void* p = std::malloc(100);
  CHECK_FALSE(bsalloc_malloc_owns(p));
  std::free(p);
  void* q = bsalloc_malloc(100);
  CHECK(bsalloc_malloc_owns(q));
  bsalloc_free(q);
}

#endif
