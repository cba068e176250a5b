#!/usr/bin/env bash
# Builds keel's tests with ThreadSanitizer in ./build-tsan and runs the emu engine's unit,
# platform and several-vCPU tests under it (issue 11: the emu threads and their handoffs).
# Usage: scripts/tsan.sh [extra gtest filter]. CI runs it with the default filter; a longer run
# widens the filter, e.g. scripts/tsan.sh '*Emu*:*GuestConformance*:EmuLinux.FourVcpus*'.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build-tsan -G Ninja -DKEEL_TSAN=ON >/dev/null
ninja -C build-tsan keel_tests keel test_guests
filter="${1:-*EmuCpu*:*EmuPlatform*:EmuSmp.*:*GuestConformance*/emu}"
# Generated code is not instrumented; what it calls (handlers, the MMU, the platform) is.
# Races on guest RAM are the guest's (tests/tsan.supp says why); everything else fails the run.
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp ${TSAN_OPTIONS:-}" \
  build-tsan/tests/keel_tests --gtest_filter="$filter"
