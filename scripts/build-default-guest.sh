#!/usr/bin/env bash
# Builds keel's default guest into OUTDIR (see DESIGN.md, "The default guest"):
#
#   OUTDIR/vmlinuz             Debian's linux-image-cloud-amd64 kernel (bzImage)
#   OUTDIR/initramfs.cpio.gz   busybox-static, the kernel's virtio modules, scripts/default-guest/init
#   OUTDIR/disk.ext4           a small ext4 data disk made with `mke2fs -d` (no root, no loop device)
#   OUTDIR/kernel-release      the kernel's release string (uname -r)
#
# Usage: scripts/build-default-guest.sh OUTDIR
#
# Downloads are cached in $KEEL_CACHE_DIR (default ~/.cache/keel): after the first run the script
# works offline. It is idempotent: when its inputs have not changed it says so and does nothing.
set -euo pipefail

die() { echo "build-default-guest: error: $*" >&2; exit 1; }
say() { echo "build-default-guest: $*"; }

(($# == 1)) || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
guest_src=$here/default-guest
mkdir -p "$1" || die "cannot create output directory $1"
out=$(cd "$1" && pwd)
cache=${KEEL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keel}
mkdir -p "$cache/debs" || die "cannot create cache directory $cache"

meta_package=linux-image-cloud-amd64
# Modules the guest needs (drivers for keel's virtio-pci devices, ext4 for the data disk, the ACPI
# power button and evdev so busybox acpid sees it, isofs for a cloud-init seed, pvpanic-mmio for
# keel's pvpanic device: a panic is reported to the host). Each is loaded with its dependencies from
# modules.dep; one that is built into the kernel is skipped.
wanted_modules=(virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_blk virtio_net
                net_failover failover virtio_console virtio_rng ext4 jbd2 mbcache crc16 crc32c
                button evdev isofs pvpanic pvpanic_mmio)

for tool in apt-cache apt-get dpkg-deb cpio gzip mke2fs nasm busybox readelf flock sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found; run scripts/install-deps.sh"
done
busybox=$(command -v busybox)
# Debian's busybox-static; a dynamically linked busybox would need its libraries in the initramfs.
if ! readelf -lW "$busybox" 2>/dev/null | grep -q 'LOAD'; then
  die "$busybox is not an ELF executable"
elif readelf -lW "$busybox" | grep -q 'INTERP'; then
  die "$busybox is dynamically linked; install busybox-static (scripts/install-deps.sh)"
fi

# One build at a time per output directory (ctest may run two fixtures that both build it).
exec 9>"$out/.build.lock"
flock 9

# --- 1. The kernel package: resolve the versioned package behind the meta package, download once.
# The meta package depends on exactly one versioned image package, usually pinned with "(= VERSION)".
depends=$(apt-cache show --no-all-versions "$meta_package" 2>/dev/null | sed -n 's/^Depends: //p' | head -n1 || true)
package=$(grep -oE 'linux-image-[0-9][^ ,]*-cloud-amd64' <<<"$depends" | head -n1 || true)
deb=
if [[ -n $package ]]; then
  version=$(sed -n "s/.*$package (= \([^)]*\)).*/\1/p" <<<"$depends")
  if [[ -z $version ]]; then
    version=$(apt-cache show --no-all-versions "$package" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
  fi
  [[ -n $version ]] || die "apt-cache knows $meta_package -> $package but not its version"
  deb=$cache/debs/${package}_${version//:/%3a}_amd64.deb
  if [[ ! -s $deb ]]; then
    say "downloading $package $version"
    tmp=$(mktemp -d "$cache/debs/.download.XXXXXX")
    if (cd "$tmp" && apt-get download -q "$package=$version" 2>&1 | grep -v '^W: Download is performed unsandboxed'); then :; fi
    downloaded=$(find "$tmp" -name '*.deb' | head -n1)
    if [[ -n $downloaded ]]; then
      mv "$downloaded" "$deb"
    else
      say "warning: could not download $package $version (offline?)"
      deb=
    fi
    rm -rf "$tmp"
  fi
fi
if [[ -z $deb ]]; then
  # Offline, or apt knows no such package: fall back to the newest kernel already in the cache.
  deb=$(find "$cache/debs" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*.deb' | sort -V | tail -n1)
  [[ -n $deb ]] || die "cannot resolve or download $meta_package and none is cached in $cache/debs; run 'apt-get update' with network access"
  say "using cached $(basename "$deb")"
fi

# --- 2. Up to date? The stamp names every input; matching outputs mean there is nothing to do.
stamp_inputs=$(
  basename "$deb"
  dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || sha256sum "$busybox"
  cat "$0" "$guest_src/init" "$guest_src/udhcpc.script" "$guest_src/keel-progress.asm" | sha256sum
)
stamp=$(sha256sum <<<"$stamp_inputs" | cut -d' ' -f1)
if [[ -f $out/.stamp && $(cat "$out/.stamp") == "$stamp" && -s $out/vmlinuz &&
      -s $out/initramfs.cpio.gz && -s $out/disk.ext4 ]]; then
  say "up to date in $out (kernel $(cat "$out/kernel-release" 2>/dev/null))"
  exit 0
fi

# --- 3. Unpack the kernel package (cached) and index its modules with busybox depmod.
unpacked=$cache/unpacked/$(basename "$deb" .deb)
if [[ ! -f $unpacked/.done ]]; then
  say "unpacking $(basename "$deb")"
  rm -rf "$unpacked"
  mkdir -p "$unpacked"
  dpkg-deb -x "$deb" "$unpacked" || die "dpkg-deb cannot unpack $deb (corrupt download? delete it and rerun)"
  for dir in "$unpacked"/lib/modules/*/; do
    # Debian generates modules.dep at install time (postinst); do the same, without root.
    busybox depmod -b "$unpacked" "$(basename "$dir")" || die "depmod failed for $dir"
  done
  touch "$unpacked/.done"
fi
releases=("$unpacked"/lib/modules/*)
((${#releases[@]} == 1)) && [[ -d ${releases[0]} ]] || die "expected one lib/modules/<release> in $deb"
release=$(basename "${releases[0]}")
moddir=$unpacked/lib/modules/$release
vmlinuz=$unpacked/boot/vmlinuz-$release
[[ -s $vmlinuz ]] || die "$deb has no boot/vmlinuz-$release"
[[ -s $moddir/modules.dep ]] || die "no modules.dep in $moddir"

# --- 4. Resolve the wanted modules (and their dependencies) to an ordered list of .ko files.
declare -A dep_line=()   # module path -> its dependencies (paths), from modules.dep
declare -A path_of=()    # module name (dashes as underscores) -> path
while IFS= read -r line; do
  path=${line%%:*}
  dep_line[$path]=${line#*:}
  name=$(basename "$path"); name=${name%%.ko*}
  path_of[${name//-/_}]=$path
done <"$moddir/modules.dep"
declare -A builtin=()
while IFS= read -r path; do
  name=$(basename "$path"); name=${name%%.ko*}
  builtin[${name//-/_}]=1
done <"$moddir/modules.builtin"
# Aliases (crc32c -> crc32c_generic or crc32c_intel): built-in ones, then modular ones.
builtin_alias() {
  tr '\0' '\n' <"$moddir/modules.builtin.modinfo" | sed -n "s/^\([^.]*\)\.alias=\(crypto-\)\{0,1\}$1\$/\1/p" | head -n1
}
module_alias() {
  awk -v a="$1" '$1 == "alias" && ($2 == a || $2 == "crypto-" a) { print $3; exit }' "$moddir/modules.alias"
}

declare -A placed=()
ordered=()
place() {  # place PATH: its dependencies first, then itself
  local path=$1 dep
  [[ -n ${placed[$path]:-} ]] && return
  placed[$path]=1
  [[ -v dep_line[$path] ]] || die "$path is listed as a dependency but missing from modules.dep"
  for dep in ${dep_line[$path]}; do place "$dep"; done
  ordered+=("$path")
}
for want in "${wanted_modules[@]}"; do
  if [[ -n ${path_of[$want]:-} ]]; then
    place "${path_of[$want]}"
  elif [[ -n ${builtin[$want]:-} ]]; then
    say "module $want: built into the kernel"
  elif target=$(builtin_alias "$want") && [[ -n $target ]]; then
    say "module $want: built into the kernel (as $target)"
  elif target=$(module_alias "$want") && [[ -n $target && -n ${path_of[${target//-/_}]:-} ]]; then
    place "${path_of[${target//-/_}]}"
  else
    die "kernel $release has no module or built-in named $want"
  fi
done

# --- 5. The initramfs tree, with fixed ownership and timestamps so the archive is reproducible.
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,mnt,root,etc/keel,lib/modules}
cp "$busybox" "$root/bin/busybox"
while IFS= read -r applet; do
  [[ $applet == bin/busybox || -e $root/$applet ]] && continue
  ln -s /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)
nasm -f bin -o "$root/bin/keel-progress" "$guest_src/keel-progress.asm" || die "cannot assemble keel-progress"
chmod 755 "$root/bin/keel-progress"
install -m 755 "$guest_src/init" "$root/init"
install -m 755 "$guest_src/udhcpc.script" "$root/etc/keel/udhcpc.script"
: >"$root/etc/keel/modules"
for path in "${ordered[@]}"; do
  dest=$release/${path%%.ko*}.ko
  mkdir -p "$root/lib/modules/$(dirname "$dest")"
  case $path in
    *.ko) cp "$moddir/$path" "$root/lib/modules/$dest" ;;
    *.ko.xz) xz -dc "$moddir/$path" >"$root/lib/modules/$dest" || die "cannot decompress $path" ;;
    *.ko.zst) zstd -qdc "$moddir/$path" >"$root/lib/modules/$dest" || die "cannot decompress $path" ;;
    *) die "unsupported module file $path" ;;
  esac
  echo "$dest" >>"$root/etc/keel/modules"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "keel" >"$root/etc/hostname"
# The ACPI power button (`keel shutdown`): busybox acpid runs /etc/acpi/PWRF/00000080 for it.
# PID 1 is /init (a shell), which ignores busybox poweroff's signal, so power off directly.
mkdir -p "$root/etc/acpi/PWRF"
cat >"$root/etc/acpi/PWRF/00000080" <<'SCRIPT'
#!/bin/sh
echo "keel-init: power button pressed, powering off" >/dev/console
sync
umount /mnt/data 2>/dev/null || mount -o remount,ro /mnt/data 2>/dev/null
poweroff -f
SCRIPT
chmod 755 "$root/etc/acpi/PWRF/00000080"
# For the same reason `poweroff`, `reboot` or `halt` typed at the shell would do nothing (busybox
# ash runs its applets directly, whatever PATH says): the login shell's profile makes them
# functions that sync, unmount the data disk and act at once.
cat >"$root/etc/profile" <<'SCRIPT'
keel_power() { sync; umount /mnt/data 2>/dev/null || mount -o remount,ro /mnt/data 2>/dev/null; busybox "$1" -f; }
poweroff() { keel_power poweroff; }
reboot() { keel_power reboot; }
halt() { keel_power halt; }
SCRIPT

# newc entry without data (directories and device nodes), so no mknod (root) is needed.
newc_entry() {  # newc_entry NAME MODE RDEV_MAJOR RDEV_MINOR INO
  local name=$1 namesize=$((${#1} + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$5" "$2" 0 0 1 0 0 0 0 "$3" "$4" "$namesize" 0
  printf '%s\0' "$name"
  local pad=$(((4 - (110 + namesize) % 4) % 4))
  ((pad)) && head -c "$pad" /dev/zero
  return 0
}
find "$root" -exec touch -h -d @0 {} +
{
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet --reproducible) ||
    die "cpio failed"
  # The kernel unpacks concatenated archives: add /dev/console so init has a console at once.
  newc_entry dev/console $((0020000 | 0600)) 5 1 900001
  newc_entry TRAILER!!! 0 0 0 0
} | gzip -9n >"$work/initramfs.cpio.gz"

# --- 6. The data disk: an ext4 image with a few known files, built from a directory (no root).
disk=$work/disk
mkdir -p "$disk"
echo "keel default guest data disk" >"$disk/README"
seq 1 1000 >"$disk/numbers.txt"
(cd "$disk" && sha256sum numbers.txt >numbers.sha256)
find "$disk" -exec touch -h -d @0 {} +
E2FSPROGS_FAKE_TIME=1 mke2fs -q -F -t ext4 -L keel-data -U 6b65656c-0000-4000-8000-000000000001 \
  -E hash_seed=6b65656c-0000-4000-8000-000000000002,root_owner=0:0 -d "$disk" \
  "$work/disk.ext4" 64M >/dev/null || die "mke2fs failed"

# --- 7. Publish atomically.
cp "$vmlinuz" "$work/vmlinuz"
echo "$release" >"$work/kernel-release"
for f in vmlinuz initramfs.cpio.gz disk.ext4 kernel-release; do mv -f "$work/$f" "$out/$f"; done
echo "$stamp" >"$out/.stamp"

say "kernel   $out/vmlinuz ($release, from $(basename "$deb"))"
say "initrd   $out/initramfs.cpio.gz ($(stat -c %s "$out/initramfs.cpio.gz") bytes, busybox + ${#ordered[@]} modules: $(for p in "${ordered[@]}"; do n=$(basename "$p"); printf '%s ' "${n%%.ko*}"; done))"
say "disk     $out/disk.ext4 (ext4, 64 MiB, label keel-data)"
