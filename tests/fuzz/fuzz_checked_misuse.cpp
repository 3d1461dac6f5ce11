// SPDX-License-Identifier: Apache-2.0
// Fuzz target: misuse in checked mode, which must abort with a message naming the resource, the
// pointer and the problem (README, "Bad input"). Each input builds a checked slab_resource (or
// a checked object_pool), allocates and frees what the input says, then makes ONE bad call in a
// forked child: double free, foreign pointer, interior pointer, a size or alignment of another
// class, a wrong size for a large block, a non-power-of-two alignment; or, as a control, a good
// call that must not abort. The parent checks the child's fate and message, then cleans up with
// good calls and checks that everything went back upstream.
#include <bsalloc/object_pool.hpp>
#include <bsalloc/slab_resource.hpp>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace bsalloc_fuzz;

struct expectation {
  bool abort = true;
  bool throws = false;       // std::invalid_argument, not an abort (the child exits 3 with what())
  const char* problem = "";  // a substring of the message (checked with slab-mismatch-message)
};

void judge(const child_result& r, const expectation& e, const void* p, const std::string& what,
           const char* who) {
  if (!e.abort) {
    FUZZ_CHECK(r.exited_zero, what + ": a good call did not return normally; stderr:\n" + r.err);
    return;
  }
  if (e.throws)
    FUZZ_CHECK(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 3,
               what + ": no std::invalid_argument (status " +
                   num(static_cast<std::size_t>(r.status)) + "); stderr:\n" + r.err);
  else
    FUZZ_CHECK(r.aborted, what + ": not aborted (status " +
                              num(static_cast<std::size_t>(r.status)) + "); stderr:\n" + r.err);
  FUZZ_CHECK(r.err.find(who) != std::string::npos,
             what + ": message does not name the resource: " + r.err);
  FUZZ_CHECK(r.err.find(hex(p)) != std::string::npos,
             what + ": message does not name " + hex(p) + ": " + r.err);
  FUZZ_CHECK(r.err.find(e.problem) != std::string::npos,
             what + ": message does not say \"" + e.problem + "\": " + r.err);
}

std::size_t pick_size(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0:
      return in.ConsumeIntegralInRange<std::size_t>(1025, 70000);
    case 1:
      return in.ConsumeIntegralInRange<std::size_t>(129, 1024);
    default:
      return in.ConsumeIntegralInRange<std::size_t>(1, 128);
  }
}

void slab_case(FuzzedDataProvider& in) {
  bsalloc::slab_resource_options knobs;
  knobs.checked = true;
  knobs.thread_cache = in.ConsumeBool();
  knobs.min_slab_bytes = pow2(in, 12, 16);
  knobs.caches = in.ConsumeIntegralInRange<std::size_t>(1, 2);
  std::pmr::pool_options pool;
  pool.largest_required_pool_block =
      in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<std::size_t>(1, 70000);
  checking_upstream up(&bsalloc::global_page_resource());
  {
    bsalloc::slab_resource res(pool, knobs, &up);
    const std::size_t largest = res.options().largest_required_pool_block;
    auto class_of = [&](std::size_t b, std::size_t a) {
      const int c = bsalloc::slab_resource::size_class(b, a);
      return c < 0 || bsalloc::slab_resource::class_size(c) > largest ? -1 : c;
    };
    shadow model;
    std::vector<std::pair<std::uintptr_t, live_block>> freed;
    const std::size_t n = in.ConsumeIntegralInRange<std::size_t>(1, 40);
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t bytes = pick_size(in);
      const std::size_t align = pow2(in, 0, in.ConsumeBool() ? 4 : 12);
      model.add(res.allocate(bytes, align), bytes, align, static_cast<std::uint8_t>(i));
      if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {  // free one at random
        auto it = model.pick(in.ConsumeIntegral<std::size_t>());
        const auto a = it->first;
        const live_block lb = model.remove(a);
        res.deallocate(reinterpret_cast<void*>(a), lb.size, lb.align);
        freed.emplace_back(a, lb);
      }
    }
    // Freed and not handed out again: double-free candidates.
    std::erase_if(freed, [&](const auto& f) { return model.blocks().count(f.first) != 0; });

    void* p = nullptr;
    std::size_t bytes = 0, align = 1;
    expectation e;
    std::string what;
    static std::byte foreign[256];
    const int kind = in.ConsumeIntegralInRange<int>(0, 6);
    if (kind == 0) {  // double free
      if (freed.empty()) return;
      const auto& f = freed[in.ConsumeIntegralInRange<std::size_t>(0, freed.size() - 1)];
      p = reinterpret_cast<void*>(f.first), bytes = f.second.size, align = f.second.align;
      e.problem = class_of(bytes, align) < 0 ? "not a live allocation" : "double free";
      what = "double free";
    } else if (kind == 1) {  // foreign pointer
      p = foreign + 16 * in.ConsumeIntegralInRange<std::size_t>(0, 15);
      bytes = pick_size(in), align = 16;
      e.problem = "not";
      what = "foreign pointer";
    } else {
      if (model.empty()) return;
      auto it = model.pick(in.ConsumeIntegral<std::size_t>());
      p = reinterpret_cast<void*>(it->first), bytes = it->second.size, align = it->second.align;
      const int cls = class_of(bytes, align);
      if (kind == 2) {  // interior pointer, right size
        if (bytes < 16 || cls < 0) return;
        p = static_cast<std::byte*>(p) +
            8 * in.ConsumeIntegralInRange<std::size_t>(1, (bytes - 8) / 8);
        e.problem = "not the start of an object";
        what = "interior pointer";
      } else if (kind == 3) {  // a size of another class (or small for large and back)
        const std::size_t other = pick_size(in);
        if (class_of(other, align) == cls && (cls >= 0 || other == bytes)) return;
        bytes = other;
        e.problem = "does not match";
        what = "wrong size";
      } else if (kind == 4) {  // an alignment of another class
        const std::size_t other = pow2(in, 0, 12);
        if (class_of(bytes, other) == cls) return;
        align = other;
        e.problem = "does not match";
        what = "wrong alignment";
      } else if (kind == 5) {  // not a power of two
        align = in.PickValueInArray<std::size_t>({0, 3, 12, 24, 48});
        e.problem = "not a power of two";
        e.throws = true;  // the documented outcome in every mode: std::invalid_argument
        what = "bad alignment";
      } else {  // control: the right call
        e.abort = false;
        what = "good call";
      }
    }
    const auto r = run_in_child([&] {
      try {
        res.deallocate(p, bytes, align);
      } catch (const std::invalid_argument& ex) {
        std::fputs(ex.what(), stderr);
        std::fflush(stderr);
        std::_Exit(3);
      }
    });
    judge(r, e, p, what + " deallocate(" + hex(p) + ", " + num(bytes) + ", " + num(align) + ")",
          "bsalloc: slab_resource");
    // The parent never made the bad call: clean up with good ones.
    while (!model.empty()) {
      const auto a = model.pick(0)->first;
      const live_block lb = model.remove(a);
      res.deallocate(reinterpret_cast<void*>(a), lb.size, lb.align);
    }
    try {
      res.check_invariants();
    } catch (const std::logic_error& ex) {
      fail(std::string("check_invariants: ") + ex.what());
    }
  }
  FUZZ_CHECK(up.live_count() == 0, "slab_resource left blocks upstream");
}

struct node {
  std::uint64_t a, b, c;
};

void pool_case(FuzzedDataProvider& in) {
  using pool_t = bsalloc::object_pool<node>;
  bsalloc::object_pool_options o;
  o.checked = true;
  pool_t pool(o), other(o);
  std::vector<node*> live, freed;
  const std::size_t n = in.ConsumeIntegralInRange<std::size_t>(1, 40);
  for (std::size_t i = 0; i < n; ++i) {
    live.push_back(pool.make(node{i, i, i}).release());
    if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
      const std::size_t k = in.ConsumeIntegralInRange<std::size_t>(0, live.size() - 1);
      pool.destroy(live[k]);
      freed.push_back(live[k]);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
    }
  }
  std::erase_if(freed,
                [&](node* f) { return std::find(live.begin(), live.end(), f) != live.end(); });
  node* theirs = other.make(node{1, 2, 3}).release();
  void* p = nullptr;
  std::string what;
  expectation e;
  std::function<void()> call;
  const int kind = in.ConsumeIntegralInRange<int>(0, 4);
  if (kind == 0) {
    if (!freed.empty()) {
      node* f = freed[in.ConsumeIntegralInRange<std::size_t>(0, freed.size() - 1)];
      p = f, what = "double free", e.problem = "";
      call = in.ConsumeBool() ? std::function<void()>([&, f] { pool.deallocate(f); })
                              : std::function<void()>([f] { pool_t::dispose(f); });
    }
  } else if (kind == 1) {
    p = theirs, what = "another pool's object";
    call = [&] { pool.destroy(theirs); };
  } else if (kind == 2) {
    if (!live.empty()) {
      auto* q = reinterpret_cast<std::byte*>(
                    live[in.ConsumeIntegralInRange<std::size_t>(0, live.size() - 1)]) +
                in.ConsumeIntegralInRange<std::size_t>(1, sizeof(node) - 1);
      p = q, what = "interior pointer";
      call = [&, q] { pool.deallocate(reinterpret_cast<node*>(q)); };
    }
  } else if (kind == 3) {
    static node outside;
    p = &outside, what = "foreign pointer";
    call = [&] { pool.deallocate(&outside); };
  } else {
    if (!live.empty()) {
      node* q = live.back();  // freed in the child only: the parent frees it below
      p = q, what = "good call", e.abort = false;
      call = [&, q] { pool.destroy(q); };
    }
  }
  if (call) {
    const auto r = run_in_child(call);
    judge(r, e, p, "object_pool " + what, "bsalloc: object_pool<");
  }
  for (node* q : live) pool.destroy(q);
  other.destroy(theirs);
  try {
    pool.check_invariants();
  } catch (const std::logic_error& ex) {
    fail(std::string("check_invariants: ") + ex.what());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0)
    pool_case(in);
  else
    slab_case(in);
  return 0;
}
