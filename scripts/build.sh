#!/usr/bin/env bash
# Configures and builds keel into ./build (Release with debug info), plus the default guest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja >/dev/null
ninja -C build
ninja -C build default-guest
