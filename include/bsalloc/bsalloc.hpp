// SPDX-License-Identifier: Apache-2.0
#pragma once
// bsalloc: every public header.
#include <bsalloc/detail/requires_cxx20.hpp>  // first: one clear error before C++20

#include <bsalloc/object_pool.hpp>  // with locks.hpp and pool_ptr.hpp
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/stats.hpp>
#include <bsalloc/version.hpp>
