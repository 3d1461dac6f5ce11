#pragma once
// bsalloc: every public header.
#include <bsalloc/object_pool.hpp>  // with locks.hpp and pool_ptr.hpp
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/stats.hpp>
#include <bsalloc/version.hpp>
