#!/usr/bin/env bash
# Runs every Go fuzz target in the module briefly (FUZZTIME, default 20000x).
# Each target's seed corpus also runs as a plain test in `go test`.
set -euo pipefail
# A count, not a duration: go1.26's fuzz coordinator can report a spurious
# "context deadline exceeded" when a duration runs out (golang/go#75804).
fuzztime="${FUZZTIME:-20000x}"
grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r file; do
  pkg="./$(dirname "${file#./}")"
  grep -o '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //' | while read -r target; do
    echo "fuzz $pkg $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
  done
done
