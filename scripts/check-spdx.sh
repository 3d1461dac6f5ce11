#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Lists the project's source, build and script files that lack an SPDX-License-Identifier line
# in their first five lines (bsalloc is Apache-2.0: see LICENSE). Files are those git tracks or
# would track (not ignored), or every file under the tree when it is not a git checkout.
#   scripts/check-spdx.sh [root]      exit 0 when every file has one, 1 otherwise
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  files=$(git ls-files --cached --others --exclude-standard)
else
  files=$(find . -type f -not -path './.git/*' -not -path './build*' | sed 's|^\./||')
fi
missing=0
total=0
while IFS= read -r f; do
  case "$f" in
    *.cpp | *.hpp | *.h | *.c | *.cmake | *.in | CMakeLists.txt | */CMakeLists.txt | *.sh | *.py | *.supp) ;;
    *) continue ;;
  esac
  [ -f "$f" ] || continue
  total=$((total + 1))
  if ! head -n 5 "$f" | grep -q "SPDX-License-Identifier: Apache-2.0"; then
    echo "$f"
    missing=$((missing + 1))
  fi
done <<<"$files"
echo "check-spdx: $((total - missing)) of $total files have the SPDX header, $missing lack it" >&2
[ "$missing" -eq 0 ]
