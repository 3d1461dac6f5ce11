// SPDX-License-Identifier: Apache-2.0
// The bad-input matrix: every bad input × every resource × every mode, each cell the documented
// outcome, each outcome asserted (exceptions in process, aborts in a forked child whose stderr
// must name the resource, the pointer and the problem). The README's bad-input table is this
// table: a test renders it and compares it with the README, byte for byte. To change a row,
// change it here, run this test, paste the table it prints into the README.
//
// Adding a mode is one more entry in `modes` plus one more outcome per row. A resource that has
// no such mode (hardened: only slab_resource, budget_resource over one, and the malloc API) is not
// run in it, and its cells show only the modes it has (has_mode).
//
// The malloc API (include/bsalloc/malloc.h: bsalloc_free, bsalloc_realloc,
// bsalloc_malloc_usable_size, bsalloc_aligned_alloc, ...) is a column too: its engine is one per
// process, its mode chosen by BSALLOC_CHECKED / BSALLOC_HARDENED when it starts (docs/malloc.md),
// so each of its cells runs in a forked child that sets them before its first call (this process
// never calls it). The child checks its own outcome and reports it by its exit code (no doctest
// assertion runs in a child).
#include <bsalloc/malloc.h>
#include <bsalloc/budget.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/object_pool.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <memory_resource>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "support.hpp"

namespace {

constexpr std::size_t max_bytes = std::numeric_limits<std::size_t>::max();

// ---------------------------------------------------------------------------------------------
// The axes
// ---------------------------------------------------------------------------------------------

struct mode {
  std::string_view name;
  bool checked;   // slab_resource_options::checked, object_pool_options::checked
  bool hardened;  // slab_resource_options::hardened (alone: checked off)
};
constexpr std::array modes{mode{"unchecked", false, false}, mode{"checked", true, false},
                           mode{"hardened", false, true}};
constexpr std::size_t mode_count = modes.size();
constexpr std::size_t hardened_mode = 2;

enum class input {
  double_free,
  foreign,
  interior,
  wrong_size,
  wrong_alignment,
  bad_alignment,
  zero_size,
  size_max,
  huge_alignment,
  other_resource,
  never_handed_out,
};

constexpr std::string_view describe(input in) {
  switch (in) {
    case input::double_free:
      return "double free";
    case input::foreign:
      return "foreign pointer (memory no bsalloc resource manages)";
    case input::interior:
      return "pointer inside an allocation, not its start";
    case input::wrong_size:
      return "deallocate with another size than allocated";
    case input::wrong_alignment:
      return "deallocate with another alignment than allocated";
    case input::bad_alignment:
      return "alignment not a power of two (0, 3, 48)";
    case input::zero_size:
      return "`allocate(0)`";
    case input::size_max:
      return "`allocate(SIZE_MAX)`";
    case input::huge_alignment:
      return "huge alignment (2^40, 2^63)";
    case input::other_resource:
      return "pointer from another resource of the same type";
    case input::never_handed_out:
      return "pointer to an object of a fresh slab that was never handed out";
  }
  return "?";
}

enum class resource { page, slab, pool, arena, budget, malloc_api };
constexpr std::array resources{resource::page,  resource::slab,   resource::pool,
                               resource::arena, resource::budget, resource::malloc_api};

// Hardened mode exists for slab_resource only (a budget's column is a budget over one; the malloc
// API's slab layer is one: BSALLOC_HARDENED=1).
constexpr bool has_mode(resource r, std::size_t m) {
  return m != hardened_mode || r == resource::slab || r == resource::budget ||
         r == resource::malloc_api;
}

constexpr std::string_view describe(resource r) {
  switch (r) {
    case resource::page:
      return "page_resource";
    case resource::slab:
      return "slab_resource";
    case resource::pool:
      return "object_pool";
    case resource::arena:
      return "frame_arena";
    case resource::budget:
      return "budget_resource";
    case resource::malloc_api:
      return "bsalloc_free & co.";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

enum class kind {
  invalid_argument,  // throws std::invalid_argument (what() holds `message`); nothing changed
  bad_alloc,         // throws std::bad_alloc; nothing changed, the resource stays usable
  aborts,            // prints a line naming the resource, the pointer and `message`, aborts
  ignored,           // does nothing (the arena keeps no per-object record)
  accepted,          // frees the allocation as it was made (the argument is not used)
  pointer,           // returns a usable pointer (the next allocation may follow at once)
  distinct_pointer,  // returns a pointer distinct from every other live one
  undefined,         // undefined behaviour: not run
  not_applicable,    // the API has no such call
  null_errno,        // the malloc API: returns NULL with errno `message` (EINVAL, ENOMEM)
  handed_on,         // the malloc API: not bsalloc's, given to the next allocator's free
  no_argument,       // the malloc API has no such argument (`note` says which)
};

struct outcome {
  kind k;
  std::string_view message = {};  // exception what() / abort line must contain it
  std::string_view note = {};     // said in the table after the outcome
};

constexpr outcome invalid(std::string_view msg, std::string_view note = {}) {
  return {kind::invalid_argument, msg, note};
}
constexpr outcome bad_alloc{kind::bad_alloc};
constexpr outcome abort_with(std::string_view msg) {
  return {kind::aborts, msg};
}
constexpr outcome ignored{kind::ignored, {}, "only the last allocation is given back"};
constexpr outcome undefined{kind::undefined};
constexpr outcome not_applicable{kind::not_applicable};
constexpr outcome null_with(std::string_view err, std::string_view note = {}) {
  return {kind::null_errno, err, note};
}

using per_mode = std::array<outcome, mode_count>;
constexpr per_mode all(outcome o) {
  per_mode r{};
  r.fill(o);
  return r;
}
// Undefined when unchecked, `o` in every checking mode.
constexpr per_mode checked_only(outcome o) {
  per_mode r = all(o);
  r[0] = undefined;
  return r;
}
// Undefined when unchecked, `checked` in checked mode, `hardened` in hardened mode.
constexpr per_mode checking(outcome checked, outcome hardened) {
  return per_mode{undefined, checked, hardened};
}

struct row {
  input in;
  resource res;
  per_mode expect;
};

// The table. Every (input, resource) pair appears once; the README shows it grouped by input.
constexpr outcome slab_bad_align = invalid("is not a power of two");
// A budget refuses a deallocate of more than it holds before its upstream sees it (here it
// holds nothing); within what it holds, its upstream judges the pointer.
constexpr outcome budget_refuses =
    invalid("more than the 0 bytes in use", "when it holds less; else as its upstream");
// Hardened mode knows an object's class, not the request: a size of another class is a pointer
// into no slab of that class; an alignment of the same class frees the object as allocated.
constexpr outcome hardened_size_mismatch = abort_with("not in a slab of this resource");
constexpr outcome hardened_same_class{
    kind::accepted, {}, "its class is the same: the alignment is not checked"};
constexpr row table[] = {
    // double free
    {input::double_free, resource::page, all(invalid("double free"))},
    {input::double_free, resource::slab, checked_only(abort_with("double free"))},
    {input::double_free, resource::pool, checked_only(abort_with("double free"))},
    {input::double_free, resource::arena, all(ignored)},
    {input::double_free, resource::budget, checked_only(abort_with("double free"))},
    {input::double_free, resource::malloc_api, checked_only(abort_with("double free"))},
    // foreign pointer
    {input::foreign, resource::page, all(invalid("not in any region of this resource"))},
    {input::foreign, resource::slab,
     checking(abort_with("not a live allocation of this resource"),
              abort_with("not in this resource's memory"))},
    {input::foreign, resource::pool, checked_only(abort_with("not allocated from this pool"))},
    {input::foreign, resource::arena, all(ignored)},
    {input::foreign, resource::budget, all(budget_refuses)},
    {input::foreign, resource::malloc_api,
     all(outcome{kind::handed_on,
                 {},
                 "its checks apply; misaligned or in the first 64 KiB: abort naming the "
                 "pointer"})},
    // interior pointer
    {input::interior, resource::page, all(invalid("not its start"))},
    {input::interior, resource::slab, checked_only(abort_with("not the start of an object"))},
    {input::interior, resource::pool, checked_only(abort_with("not the start of an object"))},
    {input::interior, resource::arena, all(ignored)},
    {input::interior, resource::budget, checked_only(abort_with("not the start of an object"))},
    {input::interior, resource::malloc_api,
     checking(abort_with("not a live allocation of bsalloc"),
              abort_with("not the start of an object"))},
    // wrong size
    {input::wrong_size, resource::page,
     all(invalid("page count does not match",
                 "when the page count differs; the same page count is the same allocation"))},
    {input::wrong_size, resource::slab,
     checking(abort_with("size does not match the allocation"), hardened_size_mismatch)},
    {input::wrong_size, resource::pool, all(not_applicable)},
    {input::wrong_size, resource::arena, all(ignored)},
    {input::wrong_size, resource::budget,
     checking(abort_with("size does not match the allocation"), hardened_size_mismatch)},
    {input::wrong_size, resource::malloc_api,
     all(outcome{kind::no_argument, {}, "`free` takes no size"})},
    // wrong alignment
    {input::wrong_alignment, resource::page,
     all(outcome{kind::accepted, {}, "the alignment is not used"})},
    {input::wrong_alignment, resource::slab,
     checking(abort_with("alignment does not match the allocation"), hardened_same_class)},
    {input::wrong_alignment, resource::pool, all(not_applicable)},
    {input::wrong_alignment, resource::arena,
     all(outcome{kind::accepted, {}, "the alignment is not used"})},
    {input::wrong_alignment, resource::budget,
     checking(abort_with("alignment does not match the allocation"), hardened_same_class)},
    {input::wrong_alignment, resource::malloc_api,
     all(outcome{kind::no_argument, {}, "`free` takes no alignment"})},
    // alignment not a power of two
    {input::bad_alignment, resource::page, all(invalid("is not a power of two"))},
    {input::bad_alignment, resource::slab, all(slab_bad_align)},
    {input::bad_alignment, resource::pool, all(not_applicable)},
    {input::bad_alignment, resource::arena, all(invalid("is not a power of two"))},
    {input::bad_alignment, resource::budget, all(slab_bad_align)},
    {input::bad_alignment, resource::malloc_api,
     all(null_with("EINVAL", "`aligned_alloc`; `posix_memalign` returns `EINVAL`"))},
    // allocate(0)
    {input::zero_size, resource::page, all(outcome{kind::distinct_pointer, {}, "one page"})},
    {input::zero_size, resource::slab, all(outcome{kind::distinct_pointer})},
    {input::zero_size, resource::pool, all(not_applicable)},
    {input::zero_size, resource::arena, all(outcome{kind::pointer})},
    {input::zero_size, resource::budget, all(outcome{kind::distinct_pointer})},
    {input::zero_size, resource::malloc_api,
     all(outcome{kind::distinct_pointer, {}, "`malloc(0)`"})},
    // allocate(SIZE_MAX)
    {input::size_max, resource::page, all(bad_alloc)},
    {input::size_max, resource::slab, all(bad_alloc)},
    {input::size_max, resource::pool, all(not_applicable)},
    {input::size_max, resource::arena, all(bad_alloc)},
    {input::size_max, resource::budget, all(bad_alloc)},
    {input::size_max, resource::malloc_api,
     all(null_with("ENOMEM", "`malloc`, `aligned_alloc`; `realloc` leaves the block untouched"))},
    // huge alignment
    {input::huge_alignment, resource::page, all(bad_alloc)},
    {input::huge_alignment, resource::slab, all(bad_alloc)},
    {input::huge_alignment, resource::pool, all(not_applicable)},
    {input::huge_alignment, resource::arena, all(bad_alloc)},
    {input::huge_alignment, resource::budget, all(bad_alloc)},
    {input::huge_alignment, resource::malloc_api, all(null_with("ENOMEM", "`aligned_alloc`"))},
    // another resource's pointer
    {input::other_resource, resource::page, all(invalid("not in any region of this resource"))},
    {input::other_resource, resource::slab,
     checking(abort_with("not a live allocation of this resource"),
              abort_with("not in a slab of this resource"))},
    {input::other_resource, resource::pool,
     checked_only(abort_with("not allocated from this pool"))},
    {input::other_resource, resource::arena, all(ignored)},
    {input::other_resource, resource::budget, all(budget_refuses)},
    {input::other_resource, resource::malloc_api,
     all(outcome{kind::no_argument, {}, "one heap per process"})},
    // a pointer to an object never handed out (in a fresh slab, past those taken so far)
    {input::never_handed_out, resource::page, all(invalid("not an allocated block"))},
    {input::never_handed_out, resource::slab,
     checking(abort_with("double free"), abort_with("its slab never handed it out"))},
    {input::never_handed_out, resource::pool, checked_only(abort_with("double free"))},
    {input::never_handed_out, resource::arena, all(ignored)},
    {input::never_handed_out, resource::budget,
     checking(abort_with("double free"), abort_with("its slab never handed it out"))},
    {input::never_handed_out, resource::malloc_api,
     checking(abort_with("double free"), abort_with("its slab never handed it out"))},
};

// ---------------------------------------------------------------------------------------------
// Rendering (the README's table)
// ---------------------------------------------------------------------------------------------

std::string render(const outcome& o) {
  std::string s;
  switch (o.k) {
    case kind::invalid_argument:
      s = fmt::format("`std::invalid_argument`: `{}`", o.message);
      break;
    case kind::bad_alloc:
      s = "`std::bad_alloc`";
      break;
    case kind::aborts:
      s = fmt::format("abort: `{}`", o.message);
      break;
    case kind::ignored:
      s = "ignored";
      break;
    case kind::accepted:
      s = "freed as allocated";
      break;
    case kind::pointer:
      s = "a valid pointer";
      break;
    case kind::distinct_pointer:
      s = "a distinct valid pointer";
      break;
    case kind::undefined:
      s = "undefined (not run)";
      break;
    case kind::not_applicable:
      s = "— (typed: no such argument)";
      break;
    case kind::null_errno:
      s = fmt::format("NULL, `errno` = `{}`", o.message);
      break;
    case kind::handed_on:
      s = "handed to the next allocator's `free`";
      break;
    case kind::no_argument:
      s = "—";
      break;
  }
  if (!o.note.empty()) s += fmt::format(" ({})", o.note);
  return s;
}

bool same(const outcome& a, const outcome& b) {
  return a.k == b.k && a.message == b.message && a.note == b.note;
}

// One cell: the outcome if every mode the resource has agrees, else "mode: outcome" for each.
std::string render(const per_mode& p, resource r) {
  bool uniform = true;
  for (std::size_t m = 0; m < mode_count; ++m)
    uniform = uniform && (!has_mode(r, m) || same(p[m], p[0]));
  if (uniform) return render(p[0]);
  std::string s;
  for (std::size_t m = 0; m < mode_count; ++m) {
    if (!has_mode(r, m)) continue;
    if (m) s += "; ";
    s += fmt::format("{}: {}", modes[m].name, render(p[m]));
  }
  return s;
}

const row* find_row(input in, resource res) {
  for (const row& r : table)
    if (r.in == in && r.res == res) return &r;
  return nullptr;
}

constexpr std::array inputs{input::double_free,    input::foreign,         input::interior,
                            input::wrong_size,     input::wrong_alignment, input::bad_alignment,
                            input::zero_size,      input::size_max,        input::huge_alignment,
                            input::other_resource, input::never_handed_out};

// One markdown table: a row per bad input, a column per resource.
std::string render_table() {
  std::string s = "| Bad input |";
  for (resource r : resources) s += fmt::format(" `{}` |", describe(r));
  s += "\n|---|";
  for (std::size_t i = 0; i < resources.size(); ++i) s += "---|";
  s += "\n";
  for (input in : inputs) {
    s += fmt::format("| {} |", describe(in));
    for (resource r : resources) {
      const row* x = find_row(in, r);
      s += fmt::format(" {} |", x ? render(x->expect, r) : std::string("MISSING"));
    }
    s += "\n";
  }
  return s + "\n";  // a blank line ends the table before the end marker
}

constexpr std::string_view readme_begin =
    "<!-- bad-input matrix: generated by tests/test_bad_input_matrix.cpp, do not edit -->\n";
constexpr std::string_view readme_end = "<!-- end of the bad-input matrix -->";

// ---------------------------------------------------------------------------------------------
// Subjects: one resource (and another of its type) set up for a mode
// ---------------------------------------------------------------------------------------------

alignas(4096) std::byte foreign_buffer[4 * 4096];  // no bsalloc resource manages it

// An object of 64 bytes in p's slab (`slab` bytes, aligned to its size) that no refill has
// handed out, p being the first object a fresh slab handed out. Slab colour starts a slab's
// objects at an index that depends on its address and wraps at the end, and a first refill takes
// at most 128 objects from there: 250 objects back from p if p lies in the slab's upper half,
// else 250 on, stays inside the slab and outside those (an offset of 500 objects from p left
// the slab whenever the colour put p in its last 500 objects: a flaky cell).
template <class T>
T* never_handed_out(T* p, std::size_t slab) {
  const auto off = reinterpret_cast<std::uintptr_t>(p) & (slab - 1);
  return off >= slab / 2 ? p - 250 * 64 / sizeof(T) : p + 250 * 64 / sizeof(T);
}

struct subject {
  virtual ~subject() = default;
  virtual std::pmr::memory_resource& mr() = 0;
  virtual std::pmr::memory_resource& other() = 0;
  virtual void check() = 0;                        // the resource's invariants
  virtual std::size_t unit() const { return 64; }  // the size of a normal allocation
  virtual std::size_t interior_offset() const { return 16; }
  virtual std::size_t wrong_size() const { return 40; }  // another class than unit()
  // From an object just handed out by a fresh resource to one of the same slab never handed out
  // (a 64 KiB slab: min_slab_bytes' default).
  virtual std::byte* untouched(std::byte* p) const { return never_handed_out(p, 64 << 10); }
  virtual std::size_t objects_in_use() { return 0; }  // slab_resource's own count (if any)
};

struct page_subject final : subject {
  bsalloc::page_resource a, b;
  std::pmr::memory_resource& mr() override { return a; }
  std::pmr::memory_resource& other() override { return b; }
  void check() override {
    a.check_invariants();
    b.check_invariants();
  }
  std::size_t unit() const override { return 2 * bsalloc::page_size; }
  std::size_t interior_offset() const override { return bsalloc::page_size; }  // the tail page
  std::byte* untouched(std::byte* p) const override { return p + 64 * bsalloc::page_size; }
  std::size_t wrong_size() const override { return 3 * bsalloc::page_size; }
};

bsalloc::slab_resource_options knobs(const mode& m) {
  bsalloc::slab_resource_options o;
  o.checked = m.checked;
  o.hardened = m.hardened;
  return o;
}

struct slab_subject final : subject {
  bsalloc::slab_resource a, b;
  explicit slab_subject(const mode& m)
      : a(std::pmr::pool_options{}, knobs(m)), b(std::pmr::pool_options{}, knobs(m)) {}
  std::pmr::memory_resource& mr() override { return a; }
  std::pmr::memory_resource& other() override { return b; }
  void check() override {
    a.check_invariants();
    b.check_invariants();
  }
  std::size_t objects_in_use() override { return a.stats().objects_in_use; }
};

struct arena_subject final : subject {
  bsalloc::frame_arena a, b;
  std::pmr::memory_resource& mr() override { return a; }
  std::pmr::memory_resource& other() override { return b; }
  void check() override {
    a.check_invariants();
    b.check_invariants();
  }
};

// Each budget over its own slab_resource in the same mode: the budget forwards every
// deallocate to its upstream, which judges it.
struct budget_subject final : subject {
  bsalloc::slab_resource heap_a, heap_b;
  bsalloc::budget_resource a, b;
  explicit budget_subject(const mode& m)
      : heap_a(std::pmr::pool_options{}, knobs(m)),
        heap_b(std::pmr::pool_options{}, knobs(m)),
        a("matrix_a", std::size_t{1} << 30, &heap_a),
        b("matrix_b", std::size_t{1} << 30, &heap_b) {}
  std::pmr::memory_resource& mr() override { return a; }
  std::pmr::memory_resource& other() override { return b; }
  void check() override {
    a.check_invariants();
    b.check_invariants();
    heap_a.check_invariants();
    heap_b.check_invariants();
  }
  std::size_t objects_in_use() override { return heap_a.stats().objects_in_use; }
};

std::unique_ptr<subject> make_subject(resource r, const mode& m) {
  switch (r) {
    case resource::page:
      return std::make_unique<page_subject>();
    case resource::slab:
      return std::make_unique<slab_subject>(m);
    case resource::arena:
      return std::make_unique<arena_subject>();
    case resource::budget:
      return std::make_unique<budget_subject>(m);
    case resource::pool:        // typed: run_pool_case
    case resource::malloc_api:  // one engine per process: run_malloc_case
      break;
  }
  return nullptr;
}

// The bad call for `in` on a memory_resource subject. Before it, tell() names the pointer it
// passes (for the abort message check); good calls around it are made as usual.
void bad_call(input in, subject& s, const std::function<void(const void*)>& tell) {
  std::pmr::memory_resource& r = s.mr();
  const std::size_t u = s.unit();
  switch (in) {
    case input::double_free: {
      void* p = r.allocate(u, 8);
      r.deallocate(p, u, 8);
      tell(p);
      r.deallocate(p, u, 8);
      return;
    }
    case input::foreign: {
      void* p = foreign_buffer + 4096;
      tell(p);
      r.deallocate(p, u, 8);
      return;
    }
    case input::interior: {
      void* p = r.allocate(u, 8);
      void* q = static_cast<std::byte*>(p) + s.interior_offset();
      tell(q);
      r.deallocate(q, u, 8);
      r.deallocate(p, u, 8);
      return;
    }
    case input::wrong_size: {
      void* p = r.allocate(u, 8);
      tell(p);
      r.deallocate(p, s.wrong_size(), 8);
      return;
    }
    case input::wrong_alignment: {
      void* p = r.allocate(u, 16);
      tell(p);
      r.deallocate(p, u, 64);
      return;
    }
    case input::other_resource: {
      void* p = s.other().allocate(u, 8);
      tell(p);
      r.deallocate(p, u, 8);
      return;
    }
    case input::never_handed_out: {
      void* p = r.allocate(u, 8);
      void* q = s.untouched(static_cast<std::byte*>(p));
      tell(q);
      r.deallocate(q, u, 8);
      r.deallocate(p, u, 8);
      return;
    }
    default:
      return;  // allocation inputs are run by run_allocation
  }
}

// An exception-throwing outcome of an allocation input: the call throws, the resource is
// unchanged and stays usable.
template <class E>
void expect_allocate_throws(subject& s, std::size_t bytes, std::size_t alignment,
                            std::string_view message) {
  CAPTURE(bytes);
  CAPTURE(alignment);
  bool thrown = false;
  try {
    (void)s.mr().allocate(bytes, alignment);
  } catch (const E& e) {
    thrown = true;
    CHECK(std::string_view(e.what()).find(message) != std::string_view::npos);
  }
  CHECK(thrown);
  s.check();
  void* p = s.mr().allocate(s.unit(), 8);  // still usable
  s.mr().deallocate(p, s.unit(), 8);
}

void run_allocation(input in, subject& s, const outcome& o) {
  switch (in) {
    case input::bad_alignment:
      REQUIRE(o.k == kind::invalid_argument);
      for (std::size_t a : {std::size_t{0}, std::size_t{3}, std::size_t{48}})
        expect_allocate_throws<std::invalid_argument>(s, 64, a, o.message);
      return;
    case input::size_max:
      REQUIRE(o.k == kind::bad_alloc);
      for (std::size_t a : {std::size_t{1}, std::size_t{8}, std::size_t{64}})
        expect_allocate_throws<std::bad_alloc>(s, max_bytes, a, "");
      return;
    case input::huge_alignment:
      REQUIRE(o.k == kind::bad_alloc);
      for (std::size_t a : {std::size_t{1} << 40, std::size_t{1} << 63})
        expect_allocate_throws<std::bad_alloc>(s, 64, a, "");
      return;
    case input::zero_size: {
      REQUIRE((o.k == kind::pointer || o.k == kind::distinct_pointer));
      void* p = s.mr().allocate(0, 8);
      void* q = s.mr().allocate(0, 8);
      void* x = s.mr().allocate(8, 8);
      REQUIRE(p != nullptr);
      REQUIRE(q != nullptr);
      if (o.k == kind::distinct_pointer) {
        CHECK(p != q);
        CHECK(x != p);
        CHECK(x != q);
      }
      static_cast<unsigned char*>(x)[0] = 1;  // usable
      s.mr().deallocate(x, 8, 8);
      s.mr().deallocate(q, 0, 8);
      s.mr().deallocate(p, 0, 8);
      s.check();
      return;
    }
    default:
      FAIL("not an allocation input");
  }
}

bool is_allocation_input(input in) {
  return in == input::bad_alignment || in == input::size_max || in == input::huge_alignment ||
         in == input::zero_size;
}

// Checks a child's stderr: the line naming the pointer told, the resource and the message.
void expect_abort(const bsalloc_test::child_result& c, std::string_view who,
                  std::string_view message) {
  CAPTURE(c.err);
  CHECK(c.aborted);
  const std::string tag = "bad pointer: ";
  const auto at = c.err.find(tag);
  REQUIRE(at != std::string::npos);
  const auto eol = c.err.find('\n', at);
  const std::string ptr = c.err.substr(at + tag.size(), eol - at - tag.size());
  const std::string rest = c.err.substr(eol + 1);
  CHECK(rest.find(ptr) != std::string::npos);  // the pointer
  CHECK(rest.find(who) != std::string::npos);  // the resource
  CHECK(rest.find(message) != std::string::npos);
}

void tell_pointer(const void* p) {
  fmt::print(stderr, "bad pointer: {}\n", p);
  std::fflush(stderr);
}

void run_resource_case(const row& x, std::size_t m) {
  const outcome& o = x.expect[m];
  switch (o.k) {
    case kind::undefined:
    case kind::not_applicable:
      return;
    case kind::aborts: {
      const auto c = bsalloc_test::run_in_child([&] {
        auto s = make_subject(x.res, modes[m]);
        bad_call(x.in, *s, tell_pointer);
      });
      // A budget's upstream (a slab_resource) is the one that judges the pointer.
      expect_abort(c, x.res == resource::budget ? "slab_resource" : describe(x.res), o.message);
      return;
    }
    default:
      break;
  }
  auto s = make_subject(x.res, modes[m]);
  if (is_allocation_input(x.in)) return run_allocation(x.in, *s, o);

  const void* told = nullptr;
  auto tell = [&](const void* p) { told = p; };
  switch (o.k) {
    case kind::invalid_argument: {
      bool thrown = false;
      try {
        bad_call(x.in, *s, tell);
      } catch (const std::invalid_argument& e) {
        thrown = true;
        const std::string_view what = e.what();
        CAPTURE(what);
        CHECK(what.find(o.message) != std::string_view::npos);
        CHECK(what.find(fmt::format("{}", told)) != std::string_view::npos);
        CHECK(what.find(describe(x.res)) != std::string_view::npos);
      }
      CHECK(thrown);
      s->check();
      return;
    }
    case kind::ignored: {
      REQUIRE(x.res == resource::arena);
      auto& arena = static_cast<bsalloc::frame_arena&>(s->mr());
      // The arena's position before the bad call, with one allocation after it (so that the bad
      // call is not about the most recent allocation unless the input makes it so).
      void* keep = arena.allocate(64, 8);
      const std::size_t before = arena.used_bytes();
      bad_call(x.in, *s, tell);
      // The bad call's own allocations stay (none was given back by it).
      CHECK(arena.used_bytes() >= before);
      void* p = arena.allocate(64, 8);  // still bumps past everything live
      CHECK(static_cast<std::byte*>(p) >= static_cast<std::byte*>(keep) + 64);
      s->check();
      return;
    }
    case kind::accepted: {
      // Freed as allocated: a page_resource's pages go back; an arena gives the last
      // allocation's bytes back.
      if (x.res == resource::arena) {
        auto& arena = static_cast<bsalloc::frame_arena&>(s->mr());
        const std::size_t before = arena.used_bytes();
        bad_call(x.in, *s, tell);
        CHECK(arena.used_bytes() <= before + 15);  // only the alignment padding may remain
      } else if (x.res == resource::slab || x.res == resource::budget) {
        bad_call(x.in, *s, tell);
        CHECK(s->objects_in_use() == 0);
        void* p = s->mr().allocate(s->unit(), 8);  // still usable
        s->mr().deallocate(p, s->unit(), 8);
      } else {
        auto& pages = static_cast<bsalloc::page_resource&>(s->mr());
        bad_call(x.in, *s, tell);
        CHECK(pages.stats().allocated_bytes == 0);
      }
      s->check();
      return;
    }
    default:
      FAIL((std::string("outcome not handled: ") + render(o)));
  }
}

// object_pool: a typed API (no size, no alignment); its pointer inputs.
struct matrix_object {
  std::array<std::byte, 64> bytes;
};
using matrix_pool = bsalloc::object_pool<matrix_object>;

void pool_bad_call(input in, const mode& m) {
  matrix_pool a(bsalloc::object_pool_options{.checked = m.checked});
  matrix_pool b(bsalloc::object_pool_options{.checked = m.checked});
  switch (in) {
    case input::double_free: {
      matrix_object* p = a.allocate();
      a.deallocate(p);
      tell_pointer(p);
      a.deallocate(p);
      return;
    }
    case input::foreign: {
      auto* p = reinterpret_cast<matrix_object*>(foreign_buffer + 4096);
      tell_pointer(p);
      a.deallocate(p);
      return;
    }
    case input::interior: {
      matrix_object* p = a.allocate();
      auto* q = reinterpret_cast<matrix_object*>(reinterpret_cast<std::byte*>(p) + 16);
      tell_pointer(q);
      a.deallocate(q);
      return;
    }
    case input::other_resource: {
      matrix_object* p = b.allocate();
      tell_pointer(p);
      a.deallocate(p);
      return;
    }
    case input::never_handed_out: {  // checked: no thread cache, the slab's first object
      matrix_object* p = a.allocate();
      tell_pointer(p + 20);
      a.deallocate(p + 20);
      return;
    }
    default:
      return;
  }
}

void run_pool_case(const row& x, std::size_t m) {
  const outcome& o = x.expect[m];
  if (o.k == kind::undefined || o.k == kind::not_applicable) return;
  REQUIRE(o.k == kind::aborts);
  const auto c = bsalloc_test::run_in_child([&] { pool_bad_call(x.in, modes[m]); });
  expect_abort(c, "object_pool", o.message);
}

// The malloc API: every cell in a child that picks the engine's mode before its first call.
void set_malloc_mode(const mode& m) {
  ::setenv("BSALLOC_CHECKED", m.checked ? "1" : "0", 1);
  ::setenv("BSALLOC_HARDENED", m.hardened ? "1" : "0", 1);
}

// The bad call of a cell that aborts.
void malloc_bad_call(input in) {
  auto* p = static_cast<char*>(bsalloc_malloc(64));
  switch (in) {
    case input::double_free:
      bsalloc_free(p);
      tell_pointer(p);
      bsalloc_free(p);
      return;
    case input::interior:
      tell_pointer(p + 16);
      bsalloc_free(p + 16);
      return;
    case input::never_handed_out: {  // p's slab is fresh (the engine's slabs are 1 MiB)
      char* q = never_handed_out(p, std::size_t{1} << 20);
      tell_pointer(q);
      bsalloc_free(q);
      return;
    }
    default:
      return;
  }
}

// A cell that does not abort, checked in the child: 0 when every call had the documented
// outcome, else the number of the first check that failed.
int malloc_outcome(input in) {
  int check = 0;
  auto null_with_errno = [&](void* p, int err) {
    ++check;
    return p == nullptr && errno == err;
  };
  switch (in) {
    case input::foreign: {  // a block of the process's own malloc: handed on
      void* p = std::malloc(64);
      if (p == nullptr) return 1;
      if (bsalloc_malloc_owns(p) || bsalloc_malloc_usable_size(p) < 64) return 2;
      void* q = bsalloc_realloc(p, 256);  // the next allocator's realloc
      if (q == nullptr || bsalloc_malloc_owns(q)) return 3;
      bsalloc_free(q);  // the next allocator's free
      break;
    }
    case input::bad_alignment:
      for (std::size_t a : {std::size_t{0}, std::size_t{3}, std::size_t{48}}) {
        errno = 0;
        if (!null_with_errno(bsalloc_aligned_alloc(a, 64), EINVAL)) return check;
        void* untouched = &check;
        void* out = untouched;
        errno = 0;
        ++check;
        if (bsalloc_posix_memalign(&out, a, 64) != EINVAL || out != untouched || errno != 0)
          return check;
      }
      break;
    case input::zero_size: {
      void* p = bsalloc_malloc(0);
      void* q = bsalloc_malloc(0);
      void* x = bsalloc_malloc(8);
      if (!p || !q || !x || p == q || x == p || x == q) return 1;
      static_cast<unsigned char*>(x)[0] = 1;
      bsalloc_free(x);
      bsalloc_free(q);
      bsalloc_free(p);
      break;
    }
    case input::size_max: {
      errno = 0;
      if (!null_with_errno(bsalloc_malloc(max_bytes), ENOMEM)) return check;
      errno = 0;
      if (!null_with_errno(bsalloc_aligned_alloc(64, max_bytes), ENOMEM)) return check;
      auto* p = static_cast<char*>(bsalloc_malloc(100));
      std::memset(p, 7, 100);
      errno = 0;
      if (!null_with_errno(bsalloc_realloc(p, max_bytes), ENOMEM)) return check;
      if (p[99] != 7) return 20;  // the block untouched
      bsalloc_free(p);
      break;
    }
    case input::huge_alignment:
      for (std::size_t a : {std::size_t{1} << 40, std::size_t{1} << 63}) {
        errno = 0;
        if (!null_with_errno(bsalloc_aligned_alloc(a, 64), ENOMEM)) return check;
      }
      break;
    default:
      return 99;  // not a cell that returns
  }
  bsalloc_malloc_check_invariants();  // aborts if broken
  return 0;
}

void run_malloc_case(const row& x, std::size_t m) {
  const outcome& o = x.expect[m];
  switch (o.k) {
    case kind::undefined:
    case kind::no_argument:
      return;
    case kind::aborts: {
      const auto c = bsalloc_test::run_in_child([&] {
        bsalloc_test::child_body([&] {
          set_malloc_mode(modes[m]);
          malloc_bad_call(x.in);
        });
      });
      expect_abort(c, "bsalloc: ", o.message);
      return;
    }
    default: {
      const auto c = bsalloc_test::run_in_child([&] {
        bsalloc_test::child_body([&] {
          set_malloc_mode(modes[m]);
          return malloc_outcome(x.in);
        });
      });
      CAPTURE(c.err);
      CHECK_FALSE(c.aborted);
      REQUIRE(WIFEXITED(c.status));
      CHECK(WEXITSTATUS(c.status) == 0);  // else: the number of the check that failed
    }
  }
}

}  // namespace

TEST_CASE("bad-input matrix: every (input, resource) has exactly one row") {
  for (input in : inputs)
    for (resource r : resources) {
      CAPTURE(describe(in));
      CAPTURE(describe(r));
      int n = 0;
      for (const row& x : table) n += x.in == in && x.res == r;
      CHECK(n == 1);
    }
}

TEST_CASE("bad-input matrix: every cell has its documented outcome") {
  for (const row& x : table)
    for (std::size_t m = 0; m < mode_count; ++m) {
      if (!has_mode(x.res, m)) continue;
      CAPTURE(describe(x.in));
      CAPTURE(describe(x.res));
      CAPTURE(modes[m].name);
      if (x.res == resource::pool)
        run_pool_case(x, m);
      else if (x.res == resource::malloc_api)
        run_malloc_case(x, m);
      else
        run_resource_case(x, m);
    }
}

TEST_CASE("bad-input matrix: the README's bad-input table is this table") {
  const std::string expected = render_table();
  const std::filesystem::path readme =
      std::filesystem::path(__FILE__).parent_path().parent_path() / "README.md";
  std::ifstream in(readme);
  REQUIRE_MESSAGE(in.good(), (std::string("cannot read ") + readme.string()));
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  const auto b = text.find(readme_begin);
  const auto e = text.find(readme_end);
  REQUIRE_MESSAGE(b != std::string::npos, "README has no bad-input matrix marker");
  REQUIRE(e != std::string::npos);
  const std::string found = text.substr(b + readme_begin.size(), e - b - readme_begin.size());
  if (found != expected)
    FAIL_CHECK((std::string("README's bad-input table differs from the test's; paste this "
                            "between the markers:\n") +
                expected));
}
