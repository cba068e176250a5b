#!/usr/bin/env bash
# Builds an ext4 image holding the host's fio (Debian's package), its shared-library closure and
# the dynamic loader, for benchmarks that run fio inside the default guest (whose initramfs has
# busybox only). Made with `mke2fs -d`: no root, no loop device.
#
#   IMAGE:/fio           the fio binary
#   IMAGE:/lib/          every library `ldd fio` names
#   IMAGE:/ld.so         the dynamic loader
#
# In the guest:  mount -o ro /dev/vdX /t && /t/ld.so --library-path /t/lib /t/fio ...
#
# Usage: scripts/build-fio-disk.sh IMAGE
set -euo pipefail

die() { echo "build-fio-disk: error: $*" >&2; exit 1; }
(($# == 1)) || { echo "usage: $0 IMAGE" >&2; exit 2; }
for tool in fio ldd mke2fs readelf; do
  command -v "$tool" >/dev/null || die "'$tool' not found; run scripts/install-deps.sh"
done
fio=$(readlink -f "$(command -v fio)")

work=$(mktemp -d "${TMPDIR:-/tmp}/keel-fio-disk.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/lib"
cp "$fio" "$work/root/fio"
interp=$(readelf -lW "$fio" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[[ -n $interp ]] || die "$fio names no program interpreter"
cp -L "$interp" "$work/root/ld.so"
# "libfoo.so.1 => /path (0x...)": copy each under its soname, the name the loader looks for.
while read -r soname arrow path _; do
  [[ $arrow == "=>" && -f $path ]] || continue
  cp -L "$path" "$work/root/lib/$soname"
done < <(ldd "$fio")
(($(ls "$work/root/lib" | wc -l) > 0)) || die "ldd found no libraries for $fio"

size_kib=$(( $(du -sk "$work/root" | cut -f1) * 5 / 4 + 8192 ))
mke2fs -q -F -t ext4 -L keel-fio -d "$work/root" "$work/image" "${size_kib}k" >/dev/null ||
  die "mke2fs failed"
mv -f "$work/image" "$1"
