#!/usr/bin/env bash
# Runs every Go fuzz target in the module briefly (FUZZTIME, default 5s).
# Each target's seed corpus also runs as a plain test in `go test`.
set -euo pipefail
fuzztime="${FUZZTIME:-5s}"
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
  pkg="./$(dirname "${file#./}")"
  grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //' | while read -r target; do
    echo "fuzz $pkg $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
  done
done
