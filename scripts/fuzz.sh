#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/*.cc) with Debian's clang 14 into build-fuzz/ and runs each
# for SECONDS (default 5), growing its corpus in build-fuzz/corpus/NAME. CI (scripts/test.sh) runs
# every target for the default; a long run of chosen targets (binaries in build-fuzz/fuzz/):
#   scripts/fuzz.sh 3600 fuzz_http_api fuzz_virtio_pci
# A crash stops the script with the target's log and leaves the reproducer (crash-*) in build-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
shift || true
if [ ! -f build-fuzz/build.ninja ]; then
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DKEEL_FUZZ=ON >/dev/null
fi
ninja -C build-fuzz fuzz
targets=("$@")
if ((${#targets[@]} == 0)); then
  for f in fuzz/*.cc; do targets+=("$(basename "$f" .cc)"); done
fi
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  if ! (cd build-fuzz && "fuzz/$t" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 \
          "corpus/$t" >"$t.log" 2>&1); then
    tail -60 "build-fuzz/$t.log"
    echo "fuzz: $t failed (log: build-fuzz/$t.log)" >&2
    exit 1
  fi
done
