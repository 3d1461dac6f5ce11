#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every source, build and script file carries the Apache-2.0 SPDX header (scripts/check-spdx.sh).
set -euo pipefail
bash "$BSALLOC_ROOT/scripts/check-spdx.sh" "$BSALLOC_ROOT"
