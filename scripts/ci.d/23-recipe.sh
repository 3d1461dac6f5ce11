#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# CI step: the Conan recipe and the CMake build agree (options, requirements, package id inputs,
# version, licence, package_info). The Conan client is not run: scripts/check-recipe.py reads
# conanfile.py with Python's ast and the CMake files as text.
set -euo pipefail
root=${BSALLOC_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
python3 "$root/scripts/check-recipe.py" "$root"
