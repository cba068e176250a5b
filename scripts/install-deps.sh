#!/usr/bin/env bash
# Installs everything keel needs to build, test and boot its default guest, from Debian's packages.
# Idempotent: packages already present are skipped. Run as root on Debian 12.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config nasm
  libgtest-dev libgmock-dev libbenchmark-dev
  libzydis-dev libxbyak-dev libslirp-dev libglib2.0-dev liburing-dev nlohmann-json3-dev libcli11-dev
  libfmt-dev libspdlog-dev libsqlite3-dev libseccomp-dev
  libboost1.81-dev
  zlib1g-dev liblzma-dev liblz4-dev libzstd-dev
  ccache busybox-static cpio e2fsprogs acpica-tools fio qemu-system-x86 iproute2 python3 curl
  clang libclang-rt-14-dev
  qemu-utils libext2fs-dev libisofs-dev fdisk gdisk mtools dosfstools xorriso mmdebstrap
  nodejs chromium prometheus
  libxen-dev  # Xen's public headers: the PVH start_info structure and ELF note numbers
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm: Debian's, unless the node installed already brings its own.
if ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends npm
fi
# The web console's packages (esbuild, xterm.js, uPlot; puppeteer-core for the browser tests),
# as web/package-lock.json pins them, from the npm registry.
web="$(dirname "$0")/../web"
if [ ! -d "$web/node_modules" ] || [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
  echo "install-deps: npm ci in web/"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
