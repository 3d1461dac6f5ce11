// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc: every public header but <bsalloc/boost_pmr.hpp> (which needs Boost.Container).
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <bsalloc/budget.hpp>
#include <bsalloc/debug_fill.hpp>
#include <bsalloc/frame_arena.hpp>
#include <bsalloc/object_pool.hpp>  // with locks.hpp and pool_ptr.hpp
#include <bsalloc/out_of_memory.hpp>
#include <bsalloc/page_resource.hpp>
#include <bsalloc/sampler.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/stats.hpp>
#include <bsalloc/version.hpp>
