// SPDX-License-Identifier: Apache-2.0
// Fuzz target: bsalloc::budget_resource, alone or nested (an inner budget over an outer one),
// over a checking upstream (the global page_resource or a slab_resource underneath; failures on
// the calls the input chooses), with or without tracking, an over-budget handler that allows or
// refuses as the input says, limits changed on the way. Operations: allocate through either
// budget (sizes up to 1 MiB, now and then one near SIZE_MAX or with a bad alignment), deallocate,
// set_limit (also below the bytes in use), switch the handler's answer, stats, budget_report(),
// deallocates the budget must refuse (more than it holds, a wrong size when tracking). A shadow
// model predicts every outcome (served, refused for the limit, allowed over it, refused upstream)
// and checks the counters exactly: in use, peak, count, refused, over_limit, per budget; alignment,
// no overlap and fill patterns of every live block; the tracked allocations; check_invariants()
// every 16 operations. At the end every byte must be back upstream.
#include <bsalloc/budget.hpp>
#include <bsalloc/slab_resource.hpp>

#include <optional>
#include <stdexcept>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace bsalloc_fuzz;

// What the model expects of one budget.
struct expected {
  std::size_t limit = 0;
  std::size_t in_use = 0;
  std::size_t peak = 0;
  std::size_t count = 0;
  std::size_t refused = 0;
  std::size_t over_limit = 0;
  bool allow = false;  // the handler's answer (inner budget only; the outer has none)
  std::size_t handler_calls = 0;
};

void compare(const bsalloc::budget_resource& b, const expected& e) {
  const auto s = b.stats();
  const std::string who = "budget '" + b.name() + "': ";
  FUZZ_CHECK(s.in_use == e.in_use, who + "in_use " + num(s.in_use) + " != " + num(e.in_use));
  FUZZ_CHECK(s.count == e.count, who + "count " + num(s.count) + " != " + num(e.count));
  FUZZ_CHECK(s.peak == e.peak, who + "peak " + num(s.peak) + " != " + num(e.peak));
  FUZZ_CHECK(s.refused == e.refused, who + "refused " + num(s.refused) + " != " + num(e.refused));
  FUZZ_CHECK(s.over_limit == e.over_limit,
             who + "over_limit " + num(s.over_limit) + " != " + num(e.over_limit));
  FUZZ_CHECK(s.limit == e.limit, who + "limit");
  try {
    b.check_invariants();
  } catch (const std::logic_error& ex) {
    fail(std::string("check_invariants: ") + ex.what());
  }
}

struct harness {
  FuzzedDataProvider& in;
  checking_upstream& up;
  bsalloc::budget_resource& outer;
  bsalloc::budget_resource* inner;  // nullptr: one budget
  expected& eo;
  expected& ei;
  shadow model;  // tag: 1 allocated through the inner budget, 0 through the outer

  void check() {
    compare(outer, eo);
    if (inner) compare(*inner, ei);
    FUZZ_CHECK(up.live_bytes() >= eo.in_use, "upstream holds less than the outer budget");
    bsalloc::budget_resource& first = inner ? *inner : outer;
    if (first.tracking()) {
      const auto all = first.allocations();
      std::size_t n = 0;
      for (const auto& [a, lb] : model.blocks()) {
        if (inner && lb.tag != 1) continue;
        FUZZ_CHECK(n < all.size() && all[n].first == reinterpret_cast<const void*>(a) &&
                       all[n].second == lb.size,
                   "tracked allocation " + num(n) + " differs from the model");
        ++n;
      }
      FUZZ_CHECK(n == all.size(), "tracking lists " + num(all.size()) + ", model " + num(n));
    }
  }

  std::size_t size() {
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
        return in.ConsumeIntegralInRange<std::size_t>(4097, std::size_t{1} << 20);
      case 1:
        return in.ConsumeIntegralInRange<std::size_t>(257, 4096);
      default:
        return in.ConsumeIntegralInRange<std::size_t>(0, 256);
    }
  }

  // One budget's limit check for `bytes`: true = goes on; false = refused (counted).
  static bool admit(expected& e, std::size_t bytes, bool has_handler) {
    if (bytes > (SIZE_MAX >> 2) && e.in_use > SIZE_MAX - bytes) {
      ++e.refused;  // more than any address space: no handler asked
      return false;
    }
    if (e.in_use + bytes <= e.limit && e.in_use + bytes >= bytes) return true;
    if (has_handler) {
      ++e.handler_calls;
      if (e.allow) {
        ++e.over_limit;
        return true;
      }
    }
    ++e.refused;
    return false;
  }

  void op_allocate() {
    const bool via_inner = inner != nullptr && in.ConsumeIntegralInRange<int>(0, 3) != 0;
    std::size_t bytes = size();
    std::size_t align = in.ConsumeBool() ? 8 : pow2(in, 0, 12);
    const int odd = in.ConsumeIntegralInRange<int>(0, 31);
    if (odd == 0) bytes = SIZE_MAX - in.ConsumeIntegralInRange<std::size_t>(0, 4096);
    const bool bad_align = odd == 1;
    if (bad_align) align = 3;
    // The model's verdict, budget by budget (inner first), before the upstream.
    expected* chain[2] = {via_inner ? &ei : &eo, via_inner ? &eo : nullptr};
    bool admitted = true;
    for (expected* e : chain) {
      if (e == nullptr || !admitted) continue;
      admitted = admit(*e, bytes, e == &ei);
    }
    const std::size_t failures = up.failures();
    bsalloc::budget_resource& b = via_inner ? *inner : outer;
    void* p = nullptr;
    try {
      p = b.allocate(bytes, align);
    } catch (const std::bad_alloc&) {
      FUZZ_CHECK(!admitted || up.failures() > failures || bytes > (std::size_t{1} << 40),
                 "bad_alloc for " + num(bytes) + " bytes the model admits, no upstream refusal");
      return;
    } catch (const std::invalid_argument&) {
      FUZZ_CHECK(bad_align && admitted, "invalid_argument for alignment " + num(align));
      return;
    }
    FUZZ_CHECK(admitted, "a request of " + num(bytes) + " bytes over the limit was served");
    FUZZ_CHECK(!bad_align, "alignment 3 served");
    for (expected* e : chain) {
      if (e == nullptr) continue;
      e->in_use += bytes;
      e->peak = std::max(e->peak, e->in_use);
      ++e->count;
    }
    model.add(p, bytes, align, in.ConsumeIntegral<std::uint8_t>(), via_inner ? 1 : 0);
  }

  void op_deallocate() {
    if (model.empty()) return;
    const auto it = model.pick(in.ConsumeIntegral<std::size_t>());
    const std::uintptr_t a = it->first;
    const live_block lb = model.remove(a);
    bsalloc::budget_resource& b = lb.tag == 1 ? *inner : outer;
    b.deallocate(reinterpret_cast<void*>(a), lb.size, lb.align);
    for (expected* e : {lb.tag == 1 ? &ei : &eo, lb.tag == 1 ? &eo : nullptr}) {
      if (e == nullptr) continue;
      e->in_use -= lb.size;
      --e->count;
    }
  }

  // Deallocates the budget must refuse with std::invalid_argument naming it, changing nothing
  // (docs/engine.md): more bytes than it holds (past the reach of any lease's unchecked fast
  // path), and in tracking mode a live block with a wrong size. Consumes no input, so that the
  // saved inputs keep their meaning.
  void op_bad_deallocate() {
    bsalloc::budget_resource& b = inner ? *inner : outer;
    const expected& e = inner ? ei : eo;
    static std::byte nowhere[64];
    void* p = model.empty() ? static_cast<void*>(nowhere)
                            : reinterpret_cast<void*>(model.blocks().begin()->first);
    const std::size_t held = up.live_count();
    std::vector<std::size_t> sizes{e.in_use + (std::size_t{1} << 20)};
    if (b.tracking() && !model.empty()) {
      const live_block& lb = model.blocks().begin()->second;
      if (!inner || lb.tag == 1) sizes.push_back(lb.size + 1);
    }
    for (const std::size_t bytes : sizes) {
      try {
        b.deallocate(p, bytes, 8);
        fail("deallocate of " + num(bytes) + " bytes (in use " + num(e.in_use) + ") accepted");
      } catch (const std::invalid_argument& ex) {
        const std::string m = ex.what();
        FUZZ_CHECK(m.find("'" + b.name() + "'") != std::string::npos &&
                       m.find("nothing changed") != std::string::npos,
                   "refusal message: " + m);
      }
      FUZZ_CHECK(up.live_count() == held, "a refused deallocate reached the upstream");
    }
  }

  void op_limit() {
    const bool on_inner = inner != nullptr && in.ConsumeBool();
    expected& e = on_inner ? ei : eo;
    std::size_t limit = in.ConsumeBool()
                            ? in.ConsumeIntegralInRange<std::size_t>(0, std::size_t{8} << 20)
                            : bsalloc::budget_resource::unlimited;
    // A limit below what is in use is legal (set_limit: allocations already made stay; no new
    // one is served while over, unless the handler allows it: the model's admit() checks it).
    // check_invariants() used to report B2 broken for it (regressions/budget/known-*).
    (on_inner ? *inner : outer).set_limit(limit);
    e.limit = limit;
  }

  void op_report() {
    const auto snap = bsalloc::budget_report();
    const auto* s = snap.find(outer.name());
    FUZZ_CHECK(s != nullptr, "budget_report() lacks " + outer.name());
    FUZZ_CHECK(s->in_use == eo.in_use, "budget_report(): in_use differs");
    const std::string text = fmt::format("{}", snap), json = fmt::format("{:j}", snap);
    FUZZ_CHECK(text.find(outer.name()) != std::string::npos, "report text lacks the budget");
    FUZZ_CHECK(!json.empty(), "empty report JSON");
  }

  void run() {
    for (int n = 0; in.remaining_bytes() > 0 && n < 4000; ++n) {
      switch (in.ConsumeIntegralInRange<int>(0, 15)) {
        case 0:
          op_limit();
          break;
        case 1:
          ei.allow = !ei.allow;
          break;
        case 2:
          op_report();
          break;
        case 3:
          print_stats(outer.stats());
          op_bad_deallocate();
          break;
        case 4:
        case 5:
        case 6:
        case 7:
          op_deallocate();
          break;
        default:
          op_allocate();
          break;
      }
      if (n % 16 == 0) check();
    }
    check();
    model.verify_all();
    while (!model.empty()) op_deallocate();  // input used up: picks the lowest address
    check();
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  std::optional<bsalloc::slab_resource> slabs;
  std::pmr::memory_resource* under = &bsalloc::global_page_resource();
  if (in.ConsumeBool()) {
    bsalloc::slab_resource_options k;
    k.checked = in.ConsumeBool();
    k.thread_cache = in.ConsumeBool();
    slabs.emplace(std::pmr::pool_options{}, k);
    under = &*slabs;
  }
  checking_upstream up(under);
  if (in.ConsumeIntegralInRange<int>(0, 3) == 0) {
    up.fail_mask = in.ConsumeIntegral<std::uint64_t>();
    if (in.ConsumeBool()) up.fail_from = in.ConsumeIntegralInRange<std::size_t>(0, 100);
  }
  const bool nested = in.ConsumeBool();
  const bool tracking = in.ConsumeBool();
  expected eo, ei;
  eo.limit = in.ConsumeIntegralInRange<std::size_t>(0, std::size_t{8} << 20);
  ei.limit = in.ConsumeIntegralInRange<std::size_t>(0, std::size_t{4} << 20);
  ei.allow = in.ConsumeBool();
  {
    bsalloc::budget_resource outer("fuzz_outer", eo.limit, &up);
    std::optional<bsalloc::budget_resource> inner;
    if (nested) {
      inner.emplace("fuzz_inner", ei.limit, &outer, [&ei](const bsalloc::over_budget_info& i) {
        FUZZ_CHECK(i.in_use == ei.in_use,
                   "handler told in_use " + num(i.in_use) + ", model " + num(ei.in_use));
        FUZZ_CHECK(i.limit == ei.limit, "handler told another limit");
        return ei.allow;
      });
    }
    if (tracking) (inner ? *inner : outer).set_tracking();
    harness h{in, up, outer, inner ? &*inner : nullptr, eo, ei, {}};
    h.run();
  }
  FUZZ_CHECK(up.live_count() == 0, "budgets left " + num(up.live_count()) + " blocks upstream");
  if (slabs) {
    const auto st = slabs->stats();
    FUZZ_CHECK(st.objects_in_use == 0 && st.large_objects == 0, "blocks left in the slab layer");
    slabs->check_invariants();
  }
  return 0;
}
