// SPDX-License-Identifier: Apache-2.0
// A game loop on object pools: entities and projectiles come from their own typed slab caches
// and live in pool_ptrs. Dead entities are handed to a clean-up thread, which destroys them
// there: a pool_ptr frees its object on any thread, without a reference to its pool.
//
// Prints the pools' stats each simulated second and at the end; exits non-zero if one of its
// own checks fails.
#include <bsalloc/bsalloc.hpp>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace {

struct vec2 {
  float x = 0, y = 0;
};

std::atomic<long> entities_alive{0};

struct entity {
  std::uint32_t id;
  vec2 pos, vel;
  float health = 100;
  std::uint32_t kills = 0;
  std::array<char, 24> name{};

  entity(std::uint32_t i, vec2 p, vec2 v) : id(i), pos(p), vel(v) {
    fmt::format_to_n(name.data(), name.size() - 1, "grunt-{}", i);
    ++entities_alive;
  }
  entity(const entity&) = delete;
  entity& operator=(const entity&) = delete;
  ~entity() { --entities_alive; }
};

struct projectile {
  vec2 pos, vel;
  std::uint32_t shooter;
  int ttl;  // frames left
};

using entity_pool = bsalloc::object_pool<entity>;
using projectile_pool = bsalloc::object_pool<projectile>;

// Entities to destroy, handed over to the clean-up thread.
class graveyard {
 public:
  void bury(std::vector<entity_pool::pointer>&& dead) {
    if (dead.empty()) return;
    {
      std::lock_guard<std::mutex> g(m_);
      for (auto& e : dead) queue_.push_back(std::move(e));
    }
    dead.clear();
    cv_.notify_one();
  }
  void close() {
    {
      std::lock_guard<std::mutex> g(m_);
      closed_ = true;
    }
    cv_.notify_one();
  }
  // The clean-up thread: destroys what it is given until closed and empty.
  void run() {
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      cv_.wait(lock, [&] { return closed_ || !queue_.empty(); });
      if (queue_.empty()) return;
      std::deque<entity_pool::pointer> batch;
      batch.swap(queue_);
      lock.unlock();
      destroyed += static_cast<long>(batch.size());
      batch.clear();  // ~entity runs and the slots go back, on this thread
      lock.lock();
    }
  }
  long destroyed = 0;  // written by the clean-up thread only

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<entity_pool::pointer> queue_;
  bool closed_ = false;
};

}  // namespace

int main() {
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      fmt::print(stderr, "entity_pool: check failed: {}\n", what);
      ++failures;
    }
  };

  entity_pool entities;  // slabs from bsalloc::global_page_resource()
  projectile_pool projectiles;
  graveyard grave;
  std::thread cleaner([&] { grave.run(); });

  std::mt19937 rng(2024);
  std::uniform_real_distribution<float> coord(0.f, 1000.f), speed(-3.f, 3.f);
  std::vector<entity_pool::pointer> world;
  std::vector<projectile_pool::pointer> shots;
  std::uint32_t next_id = 0;
  long spawned = 0, shots_fired = 0;
  constexpr int frames = 1800;  // 30 simulated seconds at 60 frames a second

  for (int frame = 0; frame < frames; ++frame) {
    // Waves: more spawns early on, fewer later, so the population rises and falls.
    const int spawn = frame < frames / 2 ? 40 : 8;
    for (int i = 0; i < spawn; ++i) {
      world.push_back(
          entities.make(next_id++, vec2{coord(rng), coord(rng)}, vec2{speed(rng), speed(rng)}));
      ++spawned;
    }
    // Move, and fire now and then.
    for (auto& e : world) {
      e->pos.x += e->vel.x;
      e->pos.y += e->vel.y;
      if (rng() % 16 == 0) {
        shots.push_back(
            projectiles.make(projectile{e->pos, vec2{e->vel.x * 4, e->vel.y * 4}, e->id, 30}));
        ++shots_fired;
      }
    }
    // Projectiles hit a random entity or expire.
    for (auto& s : shots) {
      s->pos.x += s->vel.x;
      s->pos.y += s->vel.y;
      if (--s->ttl == 0 || world.empty()) {
        s.reset();
        continue;
      }
      if (rng() % 8 == 0) {
        entity& target = *world[rng() % world.size()];
        target.health -= 35;
        s.reset();
      }
    }
    std::erase(shots, nullptr);
    // The dead leave the world for the graveyard (destroyed on the clean-up thread).
    std::vector<entity_pool::pointer> dead;
    for (auto& e : world)
      if (e->health <= 0) dead.push_back(std::move(e));
    std::erase(world, nullptr);
    grave.bury(std::move(dead));

    if (frame % 600 == 599) {
      fmt::print("second {:>2}: {} entities, {} projectiles in flight\n{}", (frame + 1) / 60,
                 world.size(), shots.size(), entities.stats());
      entities.check_invariants();
      projectiles.check_invariants();
    }
  }

  const auto peak = entities.stats().peak_objects;
  world.clear();
  shots.clear();
  grave.close();
  cleaner.join();

  const auto es = entities.stats();
  const auto ps = projectiles.stats();
  fmt::print("\nafter the last frame:\n{}{}", es, ps);
  fmt::print("as JSON: {:j}\n", es);
  fmt::print("{} entities spawned ({} destroyed on the clean-up thread), {} projectiles fired\n",
             spawned, grave.destroyed, shots_fired);

  check(entities_alive == 0, "every entity destroyed exactly once");
  check(es.objects_in_use == 0 && ps.objects_in_use == 0, "no object left in a pool");
  check(grave.destroyed > 0, "entities died and were destroyed on the clean-up thread");
  check(peak > 1000 && peak < static_cast<std::size_t>(spawned), "the population rose and fell");
  check(es.slabs <= 1 && ps.slabs <= 1, "at most the one cached empty slab is kept");
  check(entities.trim() + projectiles.trim() > 0 && entities.stats().slabs == 0,
        "trim gives the cached slabs back");
  entities.check_invariants();
  projectiles.check_invariants();
  if (failures) return 1;
  fmt::print("entity_pool: all checks passed\n");
  return 0;
}
