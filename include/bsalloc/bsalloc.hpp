#pragma once
// bsalloc: every public header.
#include <bsalloc/page_resource.hpp>
#include <bsalloc/slab_resource.hpp>
#include <bsalloc/stats.hpp>
#include <bsalloc/version.hpp>
