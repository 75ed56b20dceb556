#!/usr/bin/env bash
# Runs every test with Node's test runner. Node 20 does not expand globs or load .ts by itself:
# the shell lists the files and tsx loads them. Tests start the compiled daemon, so build first.
set -euo pipefail
cd "$(dirname "$0")/.."
npm run --silent build:ts
shopt -s globstar nullglob
files=(test/**/*.test.ts)
if [ ${#files[@]} -eq 0 ]; then echo "no test files" >&2; exit 1; fi
exec node --import tsx --test --test-concurrency="${TEST_CONCURRENCY:-2}" "$@" "${files[@]}"
