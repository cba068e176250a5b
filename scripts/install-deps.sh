#!/usr/bin/env bash
# Installs everything keel needs to build, test and boot its default guest, from Debian's packages.
# Idempotent: packages already present are skipped. Run as root on Debian 12.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config nasm
  libgtest-dev libgmock-dev libbenchmark-dev
  libzydis-dev libxbyak-dev libslirp-dev libglib2.0-dev liburing-dev nlohmann-json3-dev libcli11-dev
  libfmt-dev libspdlog-dev libsqlite3-dev libseccomp-dev
  zlib1g-dev liblzma-dev liblz4-dev libzstd-dev
  ccache busybox-static cpio e2fsprogs acpica-tools fio qemu-system-x86 iproute2 python3 curl
  clang libclang-rt-14-dev
  qemu-utils libext2fs-dev libisofs-dev fdisk gdisk mtools dosfstools xorriso mmdebstrap
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
