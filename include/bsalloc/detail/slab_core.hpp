// SPDX-License-Identifier: Apache-2.0
#pragma once
// The slab core: what slab_resource (src/slab/) and object_pool share. Lock-agnostic — every
// function here runs under whatever lock guards the lists it is given (a core cache's lock, a
// pool's lock); none allocates, none takes a lock, none knows the front.
//
// Glossary (the same words in both fronts)
//   slab       slab_bytes of memory from the upstream, aligned to its own size: the header
//              (slab_header_size bytes, or its colour area: below), then in checked mode the
//              allocation bitmap (one bit per object) and the front's per-object records, then
//              `capacity` objects from `first_object` on. The slab of an object is found by masking
//              its address.
//   free       objects given back to the slab, LIFO, linked through their first word (the front
//              reads and writes the links: plain, hardened or memcheck-aware).
//   untouched  objects never handed out. They are handed out in address order from object
//              `start` (the slab's colour) on, wrapping from the last object to the first:
//              [tail, end) then [first, start), or [tail, start) once wrapped. A new slab is not
//              written beyond its header until its objects are used.
//   colour     `start`: slabs are aligned to their size, so without it the objects each slab
//              hands out first all sit at the same offsets and compete for the same few cache
//              sets (many slabs with a few hot objects each: many resources, many classes). A
//              front picks a start spread over the slab per slab (slab_colour); 0 = no colour,
//              then [tail, end) is all that is untouched and `tail` only grows (the hardened
//              checks rely on that and use no colour).
//   header colour  the header itself sits at one of slab_header_colours line offsets in the
//              first slab_colour_area bytes, chosen by the slab's address (slab_header_offset):
//              headers at the slab start all fall in one set of every cache (64 KiB-aligned
//              slabs, 1 MiB-aligned ones: one L1 set, two L2 sets), so a walk over many slabs
//              (a flush of a container's nodes, free() with no size) missed to L3 at every
//              header. A front colours the headers of slabs of colour_min_slab_bytes and up (the
//              area is 1.5 % of a 64 KiB slab) where nothing reads a header at the slab start
//              (slab_resource: not checked, not hardened, not under memcheck); a mask of 0 keeps
//              the header at the start. The area before and after the header is unused.
//   lists      per owner (a core cache's class, a pool): partial (some objects free, some out),
//              full (none free), empty (none out; at most max_empty are kept, the rest go back
//              upstream once no lock is held). Doubly linked through the headers.
//
// Invariants (slab_check_lists() in detail/slab_walk.hpp verifies them; the lock of the lists
// guards every field but magic, cls, owner, capacity and res, which never change while the slab is
// live)
//   S1 used + |free| + untouched == capacity; the free list holds distinct objects already handed
//      out (slab_handed_out); start < capacity, and tail is object (start + capacity - untouched)
//      wrapped to [0, capacity) (the end of the slab, not object 0, when start is 0).
//   S2 a slab is on exactly one list of its owner, `list` says which: full iff no free object
//      and nothing untouched, empty iff used == 0; back links hold; `slabs` and `empty_count`
//      count them; the header is the front's (magic, res, cls, owner).
//   S3 (the front's) the objects its users and thread caches hold == sum of used.
//   S4 empty_count <= max_empty.
//   S5 checked mode: bit i of the bitmap set => object i is out (neither free nor untouched);
//      set bits == used where no thread cache holds objects, <= used otherwise.
#include <bsalloc/detail/config.hpp>
#include <bsalloc/detail/slab_geometry.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace bsalloc::detail {

enum : std::uint8_t { list_partial, list_full, list_empty };

/// The header of a slab. Owner: the front's state the slab belongs to (slab_state, a pool's
/// control block).
template <class Owner>
struct slab_header {
  std::uint32_t magic;      // the front's constant while the slab is live; 0 once given back
  std::uint16_t cls;        // size class (slab_resource); 0 (object_pool)
  std::uint16_t owner;      // core cache that owns the slab (slab_resource); 0 (object_pool)
  std::uint32_t used;       // objects out of the slab: with users or in thread caches
  std::uint32_t capacity;   // objects the slab holds
  std::uint32_t untouched;  // objects never handed out, from `tail` on
  std::uint8_t list;        // list_partial, list_full or list_empty
  std::uint8_t colour;  // the header's offset from the slab start, in lines (slab_header_offset)
  std::uint16_t start;  // colour: the first object handed out; never changes while live
  void* free;           // objects given back, LIFO, linked through their first word
  char* tail;           // the first untouched object
  slab_header* prev;    // neighbours on its list
  slab_header* next;
  Owner* res;
};
static_assert(sizeof(slab_header<void>) <= slab_header_size, "the header fits its 64 bytes");
/// The start of the slab whose header is s.
template <class Owner>
[[gnu::always_inline]] inline std::uintptr_t slab_base(const slab_header<Owner>* s) noexcept {
  return reinterpret_cast<std::uintptr_t>(s) - std::uintptr_t{s->colour} * slab_header_size;
}
// object_pool reads magic, cls and owner as one 8-byte word (pool_slab_word).
static_assert(offsetof(slab_header<void>, cls) == 4 && offsetof(slab_header<void>, owner) == 6);

// -- geometry -------------------------------------------------------------------------------------

/// The header of the slab that holds p (slab_bytes a power of two; colour_mask the front's for
/// slabs of that size).
template <class Slab>
[[gnu::always_inline]] inline Slab* slab_at(const void* p, std::size_t slab_bytes,
                                            std::uintptr_t colour_mask = 0) noexcept {
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(p) & ~(slab_bytes - 1);
  return reinterpret_cast<Slab*>(base + slab_header_offset(base, colour_mask));
}

/// Index of object p in the slab whose header is s.
template <class Owner>
inline std::size_t slab_index(const slab_header<Owner>* s, const void* p, std::size_t first_object,
                              std::size_t size) noexcept {
  return (reinterpret_cast<std::uintptr_t>(p) - slab_base(s) - first_object) / size;
}

/// A colour for a new slab at `mem` of `capacity` objects (see the glossary): spread over the
/// whole slab by a multiplicative hash of the slab's number, so that neighbouring slabs differ.
inline std::uint16_t slab_colour(const void* mem, std::size_t slab_bytes,
                                 std::uint32_t capacity) noexcept {
  const std::uint64_t n = reinterpret_cast<std::uintptr_t>(mem) / slab_bytes;
  const std::uint64_t h = (n * 0x9E3779B97F4A7C15ull) >> 32;
  const std::uint32_t span = capacity < 65536 ? capacity : 65535;
  return span < 2 ? 0 : static_cast<std::uint16_t>(h % span);
}

/// A new slab's header in `mem` (not yet on any list): everything untouched, handed out from
/// object `start` on (size: the objects' size; start 0: no colour); the header `at` bytes in
/// (slab_header_offset; 0: at mem).
template <class Owner>
slab_header<Owner>* slab_carve(void* mem, std::uint32_t magic, std::uint16_t cls,
                               std::uint16_t owner, std::uint32_t capacity,
                               std::size_t first_object, Owner* res, std::uint16_t start = 0,
                               std::size_t size = 0, std::uintptr_t at = 0) noexcept {
  const auto base = reinterpret_cast<std::uintptr_t>(mem);
  return ::new (reinterpret_cast<void*>(base + at))
      slab_header<Owner>{magic,
                         cls,
                         owner,
                         0,
                         capacity,
                         capacity,
                         list_partial,
                         static_cast<std::uint8_t>(at / slab_header_size),
                         start,
                         nullptr,
                         static_cast<char*>(mem) + first_object + start * size,
                         nullptr,
                         nullptr,
                         res};
}

/// Whether object i of s has been handed out (it is out, or free), not untouched.
template <class Owner>
inline bool slab_handed_out(const slab_header<Owner>* s, std::size_t i) noexcept {
  const std::size_t rel = (i + s->capacity - s->start) % s->capacity;  // order of handing out
  return rel < s->capacity - s->untouched;
}

/// The index of p in s if p is the start of an object s has handed out (S1's test for the free
/// list, and a front's for objects it holds outside the slab); capacity otherwise.
template <class Owner>
inline std::size_t slab_handed_index(const slab_header<Owner>* s, const void* p,
                                     std::size_t first_object, std::size_t size) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p), base = slab_base(s);
  if (a < base + first_object || (a - base - first_object) % size != 0) return s->capacity;
  const std::size_t i = (a - base - first_object) / size;
  return i < s->capacity && slab_handed_out(s, i) ? i : s->capacity;
}

/// The index of the k-th object s handed out (k < capacity - untouched).
template <class Owner>
inline std::size_t slab_nth_handed(const slab_header<Owner>* s, std::size_t k) noexcept {
  const std::size_t i = s->start + k;
  return i < s->capacity ? i : i - s->capacity;
}

// -- lists ----------------------------------------------------------------------------------------

template <class Owner>
struct slab_lists {
  using slab = slab_header<Owner>;
  slab* partial = nullptr;
  slab* full = nullptr;
  slab* empty = nullptr;
  std::uint32_t empty_count = 0;
  std::uint32_t slabs = 0;  // on the three lists

  slab*& head(std::uint8_t which) noexcept {
    return which == list_partial ? partial : which == list_full ? full : empty;
  }
  slab* const& head(std::uint8_t which) const noexcept {
    return which == list_partial ? partial : which == list_full ? full : empty;
  }
};

template <class Owner>
inline void slab_link(slab_header<Owner>*& head, slab_header<Owner>* s) noexcept {
  s->prev = nullptr;
  s->next = head;
  if (head) head->prev = s;
  head = s;
}
template <class Owner>
inline void slab_unlink(slab_header<Owner>*& head, slab_header<Owner>* s) noexcept {
  if (s->prev)
    s->prev->next = s->next;
  else
    head = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = nullptr;
}
/// s moves to the front of list `to`.
template <class Owner>
inline void slab_move(slab_lists<Owner>& l, slab_header<Owner>* s, std::uint8_t to) noexcept {
  slab_unlink(l.head(s->list), s);
  if (s->list == list_empty) --l.empty_count;
  s->list = to;
  slab_link(l.head(to), s);
  if (to == list_empty) ++l.empty_count;
}
/// A new slab joins the partial list.
template <class Owner>
inline void slab_adopt(slab_lists<Owner>& l, slab_header<Owner>* s) noexcept {
  s->list = list_partial;
  slab_link(l.partial, s);
  ++l.slabs;
}
/// s leaves the lists (to be given back upstream once no lock is held).
template <class Owner>
inline void slab_forget(slab_lists<Owner>& l, slab_header<Owner>* s) noexcept {
  slab_unlink(l.head(s->list), s);
  if (s->list == list_empty) --l.empty_count;
  --l.slabs;
}

// -- take one, put back one ----------------------------------------------------------------------

/// The slab to take from: the partial list's head, else an empty slab (moved to partial), else
/// nullptr (the caller carves a new slab). Partly used slabs fill first.
template <class Owner>
[[gnu::always_inline]] inline slab_header<Owner>* slab_to_take(slab_lists<Owner>& l) noexcept {
  slab_header<Owner>* s = l.partial;
  if (s) [[likely]]
    return s;
  if ((s = l.empty)) slab_move(l, s, list_partial);
  return s;
}

/// One object out of s (which has a free or an untouched one); next_of(p) reads a free object's
/// link, fresh(p) is told of an object that comes from the untouched tail.
template <class Owner, class NextOf, class Fresh>
[[gnu::always_inline]] inline void* slab_take(slab_header<Owner>* s, std::size_t size,
                                              NextOf&& next_of, Fresh&& fresh) {
  void* p = s->free;
  if (p) {
    s->free = next_of(p);
  } else {
    p = s->tail;
    // A relaxed atomic store (a plain store on x86): hardened slab_resources read a slab's tail
    // without its lock, to refuse pointers into the untouched part (they use no colour).
    char* next = s->tail + size;
    if (--s->untouched == s->start && s->start != 0) [[unlikely]]
      next -= std::size_t{s->capacity} * size;  // past the last object: on from the first
    std::atomic_ref<char*>(s->tail).store(next, std::memory_order_relaxed);
    fresh(p);
  }
  ++s->used;
  return p;
}
/// Up to k objects from s's untouched tail, in address order and at most to the slab's end, with
/// one store of the tail: linked first to last, the last to `chain`, and `chain` becomes the
/// first. Returns how many (0 when s has none untouched). A refill's path through a fresh slab
/// (no careful path: it is not told of the fresh objects one by one).
template <class Owner, class SetNext>
[[gnu::always_inline]] inline std::uint32_t slab_take_fresh(slab_header<Owner>* s, std::size_t size,
                                                            std::uint32_t k, void*& chain,
                                                            SetNext&& set_next) {
  const std::uint32_t untouched = s->untouched;
  const std::uint32_t to_end =
      s->start != 0 && untouched > s->start ? untouched - s->start : untouched;
  const std::uint32_t m = std::min(k, to_end);
  if (m == 0) return 0;
  char* const first = s->tail;
  char* const last = first + std::size_t{m - 1} * size;
  for (char* p = first; p != last; p += size) set_next(p, p + size);
  set_next(last, chain);
  chain = first;
  char* next = last + size;
  if (untouched - m == s->start && s->start != 0)
    next -= std::size_t{s->capacity} * size;  // past the last object: on from the first
  s->untouched = untouched - m;
  s->used += m;
  std::atomic_ref<char*>(s->tail).store(next, std::memory_order_relaxed);
  return m;
}
/// s has nothing left to hand out: it goes to the full list (S2).
template <class Owner>
[[gnu::always_inline]] inline bool slab_exhausted(const slab_header<Owner>* s) noexcept {
  return !s->free && !s->untouched;
}

/// Object p goes back into s; set_next(p, next) writes its link.
template <class Owner, class SetNext>
[[gnu::always_inline]] inline void slab_put(slab_header<Owner>* s, void* p, SetNext&& set_next) {
  set_next(p, s->free);
  s->free = p;
  --s->used;
}
/// Puts back a run of count objects of s, head .. tail, already chained by their own links:
/// only the tail's link is written.
template <class Owner, class SetNext>
[[gnu::always_inline]] inline void slab_put_chain(slab_header<Owner>* s, void* head, void* tail,
                                                  std::uint32_t count, SetNext&& set_next) {
  set_next(tail, s->free);
  s->free = head;
  s->used -= count;
}
/// slab_settle's slow case: s, just emptied, takes the place of the slab at the empty list's
/// tail (linked at the head, the list's tail has been empty longest), which is returned.
template <class Owner>
[[gnu::noinline]] slab_header<Owner>* slab_keep_newest_empty(slab_lists<Owner>& l,
                                                             slab_header<Owner>* s) noexcept {
  slab_header<Owner>* oldest = l.empty;
  while (oldest->next) oldest = oldest->next;
  slab_forget(l, oldest);
  slab_move(l, s, list_empty);
  return oldest;
}
/// After slab_put: a full slab becomes partial; an emptied one is kept on the empty list (S4:
/// at most max_empty are). When the list is full, the slab that has been empty longest leaves
/// the lists and is returned — the one just emptied, whose lines are in cache and whose pages
/// are resident, is the one worth keeping — and the caller gives it back upstream once no lock
/// is held. max_empty 0: s itself is returned.
template <class Owner>
[[gnu::always_inline]] inline slab_header<Owner>* slab_settle(slab_lists<Owner>& l,
                                                              slab_header<Owner>* s,
                                                              std::size_t max_empty) noexcept {
  if (s->list == list_full) [[unlikely]]
    slab_move(l, s, list_partial);
  if (s->used != 0) [[likely]]
    return nullptr;
  if (l.empty_count < max_empty) {
    slab_move(l, s, list_empty);
    return nullptr;
  }
  if (max_empty == 0) {
    slab_forget(l, s);
    return s;
  }
  return slab_keep_newest_empty(l, s);
}

// -- checked mode: the allocation bitmap ---------------------------------------------------------

inline std::atomic<std::uint64_t>* slab_bitmap(const void* s) noexcept {
  return reinterpret_cast<std::atomic<std::uint64_t>*>(
      const_cast<char*>(static_cast<const char*>(s)) + slab_header_size);
}
inline void slab_bitmap_init(void* s, std::size_t words) noexcept {
  for (std::size_t w = 0; w < words; ++w)
    ::new (static_cast<char*>(s) + slab_header_size + w * 8) std::atomic<std::uint64_t>(0);
}
inline bool slab_bit(const void* s, std::size_t i) noexcept {
  return slab_bitmap(s)[i / 64].load(std::memory_order_relaxed) >> (i % 64) & 1;
}
/// Sets bit i; returns whether it was set already.
inline bool slab_bit_set(const void* s, std::size_t i) noexcept {
  const std::uint64_t bit = std::uint64_t{1} << (i % 64);
  return slab_bitmap(s)[i / 64].fetch_or(bit, std::memory_order_relaxed) & bit;
}
inline void slab_bit_clear(const void* s, std::size_t i) noexcept {
  slab_bitmap(s)[i / 64].fetch_and(~(std::uint64_t{1} << (i % 64)), std::memory_order_relaxed);
}

}  // namespace bsalloc::detail
