#!/usr/bin/env bash
# Runs every test with Node's test runner. Node 20 does not expand globs or load .ts by itself:
# the shell lists the files and tsx loads them. Tests start the compiled daemon, so build first.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build:ts
shopt -s globstar nullglob
# Tests that measure the cache's behaviour under a timed scan run alone afterwards: sharing two
# cores with another test file skews their timing, not what they check.
alone=(test/cache/cache-e2e.test.ts)
files=()
for f in test/**/*.test.ts; do
  [[ " ${alone[*]} " == *" $f "* ]] || files+=("$f")
done
if [ ${#files[@]} -eq 0 ]; then echo "no test files" >&2; exit 1; fi
status=0
node --import tsx --test --test-concurrency="${TEST_CONCURRENCY:-2}" "$@" "${files[@]}" || status=$?
node --import tsx --test --test-concurrency=1 "$@" "${alone[@]}" || status=$?
exit $status
