#!/usr/bin/env bash
# Runs kvm-unit-tests' x86 tests (a checkout the user built, not part of keel) on keel's emu and
# kvm engines and on QEMU TCG, and prints one row per test with each one's result.
#
#   git clone https://gitlab.com/kvm-unit-tests/kvm-unit-tests && cd kvm-unit-tests
#   ./configure --arch=x86_64 && make
#   scripts/kvm-unit-tests.sh /path/to/kvm-unit-tests [TEST...]
#
# The tests are multiboot kernels (x86/NAME.flat, ELF32); each runs as QEMU runs it:
#   keel run --accel emu|kvm --kernel x86/NAME.flat --cmdline "TEST_ARGS" --cpus SMP
#            --memory $MEMORY --isa-debug-exit
# and reports through isa-debug-exit, whose status is (code << 1) | 1: 1 = PASS, 77 = SKIP (the
# suite writes 77 >> 1 when every check was skipped, as QEMU's runner reads it), 127 = ABORT
# (abort(), an assertion or an unexpected exception), other odd = FAIL(code).
# TIMEOUT: no status within the time limit; ERROR(n): the VMM exited with an even status n
# without the test reporting (QEMU's 0 under --no-reboot is a guest reset, e.g. a triple fault).
# Tests come from x86/unittests.cfg (the [sections]; arch = i386 ones are left out). QEMU-only
# options in a test's qemu_params (-cpu flags, extra devices) are not translated for keel: such
# rows are marked '*'. A test limited to one accelerator (accel = kvm|tcg) is 'n/a' elsewhere.
#
# Environment: KEEL (default build/keel next to this script), QEMU (qemu-system-x86_64), ENGINES
# (default "emu kvm tcg"), MEMORY (default 256M), TIMEOUT (seconds per run, default the test's own
# timeout or 90), LOGS (directory for each run's output, default a new one under /tmp).
set -u

here=$(cd "$(dirname "$0")/.." && pwd)
KEEL=${KEEL:-$here/build/keel}
QEMU=${QEMU:-qemu-system-x86_64}
ENGINES=${ENGINES:-"emu kvm tcg"}
MEMORY=${MEMORY:-256M}
kut=${1:-}
if [[ -z "$kut" || ! -f "$kut/x86/unittests.cfg" ]]; then
  echo "usage: $0 KVM_UNIT_TESTS_DIR [TEST...]  (a built checkout: x86/unittests.cfg and x86/*.flat)" >&2
  exit 2
fi
shift
kut=$(cd "$kut" && pwd)
LOGS=${LOGS:-$(mktemp -d /tmp/keel-kvm-unit-tests.XXXXXX)}
mkdir -p "$LOGS"
[[ -x "$KEEL" ]] || { echo "keel binary $KEEL not found (build it, or set KEEL)" >&2; exit 2; }
if [[ " $ENGINES " == *" tcg "* ]] && ! command -v "$QEMU" >/dev/null; then
  echo "$QEMU not found: QEMU TCG column left out" >&2
  ENGINES=${ENGINES/tcg/}
fi
max_smp=$(nproc)

# One section of unittests.cfg -> the variables below; called at each section's end.
declare -A want=()
for t in "$@"; do want[$t]=1; done
names=() files=() smps=() params=() args=() arches=() accels=() timeouts=()
name=""
flush() {
  [[ -z "$name" ]] && return
  names+=("$name"); files+=("$file"); smps+=("$smp"); params+=("$qparams"); args+=("$targs")
  arches+=("$arch"); accels+=("$accel"); timeouts+=("$timeout")
}
while IFS= read -r line || [[ -n "$line" ]]; do
  line=${line%%#*}
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  if [[ "$line" =~ ^\[(.*)\]$ ]]; then
    flush
    name=${BASH_REMATCH[1]} file="" smp=1 qparams="" targs="" arch="" accel="" timeout=""
    continue
  fi
  [[ "$line" =~ ^([a-z_]+)[[:space:]]*=[[:space:]]*(.*)$ ]] || continue
  key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
  case $key in
    file) file=$value ;;
    smp) smp=$value ;;
    qemu_params|extra_params) qparams=$value ;;
    test_args) targs=$value ;;
    arch) arch=$value ;;
    accel) accel=$value ;;
    timeout) timeout=$value ;;
  esac
done < "$kut/x86/unittests.cfg"
flush

# Status of one run -> a word: PASS, SKIP, ABORT, FAIL(code), TIMEOUT, ERROR(exit status).
verdict() {
  local rc=$1
  if (( rc == 124 || rc == 137 )); then echo TIMEOUT
  elif (( rc % 2 == 1 )); then
    local code=$(( rc >> 1 ))
    if (( rc == 1 )); then echo PASS; elif (( rc == 77 )); then echo SKIP
    elif (( rc == 127 )); then echo ABORT; else echo "FAIL($code)"; fi
  else echo "ERROR($rc)"
  fi
}

# A QEMU option string's -m value (MiB or with a suffix), if any.
qemu_memory() { [[ " $1 " =~ [[:space:]]-m[[:space:]]+([0-9]+[MGmg]?) ]] && echo "${BASH_REMATCH[1]}"; }

printf '%-28s' test; for e in $ENGINES; do printf ' %-12s' "$e"; done; printf '\n'
declare -A totals=()
for i in "${!names[@]}"; do
  n=${names[$i]}
  (( ${#want[@]} )) && [[ -z "${want[$n]:-}" ]] && continue
  [[ "${arches[$i]}" == i386 ]] && continue
  flat="$kut/x86/${files[$i]}"
  [[ -f "$flat" ]] || { printf '%-28s not built (%s)\n' "$n" "${files[$i]}"; continue; }
  smp=$(MAX_SMP=$max_smp; eval "echo ${smps[$i]}")
  targs=$(eval "echo ${args[$i]}")
  qp=${params[$i]}
  mem=$(qemu_memory "$qp"); mem=${mem:-$MEMORY}
  [[ "$mem" =~ ^[0-9]+$ ]] && mem="${mem}M"
  t=${TIMEOUT:-${timeouts[$i]:-90}}; t=${t%s}
  # QEMU options other than -m/-smp/-append have no keel equivalent.
  rest=" $qp "
  for opt in -m -smp; do
    [[ "$rest" =~ (.*)[[:space:]]$opt[[:space:]]+[^[:space:]]+(.*) ]] && rest="${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
  done
  rest=${rest//[[:space:]]/}
  mark=""; [[ -n "$rest" ]] && mark="*"
  printf '%-28s' "$n$mark"
  for e in $ENGINES; do
    log="$LOGS/$n.$e.log"
    if [[ ( "${accels[$i]}" == kvm && "$e" != kvm ) || ( "${accels[$i]}" == tcg && "$e" == kvm ) ]]; then
      r="n/a"
    elif [[ "$e" == tcg ]]; then
      eval "timeout -k 5 $t $QEMU --no-reboot -nodefaults -device pc-testdev \
        -device isa-debug-exit,iobase=0xf4,iosize=0x4 -display none -serial stdio \
        -device pci-testdev -machine accel=tcg -m $mem -smp $smp -kernel '$flat' \
        ${targs:+-append \"$targs\"} $qp" > "$log" 2>&1 < /dev/null
      r=$(verdict $?)
    else
      timeout -k 5 "$t" "$KEEL" run --accel "$e" --kernel "$flat" --cpus "$smp" --memory "$mem" \
        --isa-debug-exit ${targs:+--cmdline "$targs"} > "$log" 2>&1 < /dev/null
      r=$(verdict $?)
    fi
    word=${r%%[(]*}
    totals[$e,$word]=$(( ${totals[$e,$word]:-0} + 1 ))
    printf ' %-12s' "$r"
  done
  printf '\n'
done
printf '\n%-28s' totals
for e in $ENGINES; do
  s=""
  for k in PASS SKIP FAIL ABORT TIMEOUT ERROR n/a; do
    [[ -n "${totals[$e,$k]:-}" ]] && s+="${k,,}=${totals[$e,$k]} "
  done
  printf ' %s: %s' "$e" "$s"
done
printf '\n(* = the test passes QEMU options keel does not translate; logs in %s)\n' "$LOGS"
