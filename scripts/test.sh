#!/usr/bin/env bash
# Sets up everything and runs every test: the README's test command, and what CI runs. Then the
# fuzz targets are built with clang and each runs for a few seconds (scripts/fuzz.sh; set
# KEEL_FUZZ_SECONDS=0 to skip them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
ctest --test-dir build --output-on-failure -j2 "$@"
fuzz_seconds=${KEEL_FUZZ_SECONDS:-5}
if ((fuzz_seconds > 0)); then
  scripts/fuzz.sh "$fuzz_seconds"
fi
