#!/usr/bin/env bash
# Boots the test VM (Debian 12's kernel, tests/vm/build.sh's initramfs) in qemu's software
# emulation and runs one guest script in it.
#   tests/vm/run.sh SCRIPT [QEMU_ARGS...]
# SCRIPT (a busybox sh script) runs as /test/run.sh in the guest, next to /test/lib.sh
# (tests/vm/guest-lib.sh: pass, fail, ...). With QBD_BIN set, qbd-master and qbdctl from that
# directory are in the guest's PATH; with QBD_OLD_BIN too, that directory's are there as
# qbd-master-old and qbdctl-old (tests/vm/build.sh). Its output lines (PASS:/FAIL: among them)
# come back on this script's standard output, from the VM's second serial port; the guest's last
# line is "QBD-VM-END rc=N". Exit status: 0 when that line came with rc=0, 1 otherwise (a missing
# line, a guest that did not power off within QBD_VM_TIMEOUT seconds (300): qemu is killed).
# The console (kernel messages and the script's output) goes to QBD_VM_CONSOLE (default
# $QBD_VM_CACHE/console.log). QBD_VM_MEM (1G), QBD_VM_CPUS (2), QBD_VM_APPEND: kernel arguments.
# A SCRIPT with the line "# qbd-vm: systemd" (or QBD_VM_SYSTEMD=1) boots with systemd as PID 1
# (tests/vm/build.sh's systemd segment) and runs as its qbd-vm-test.service; the systemd units
# of systemd/ are in /usr/lib/systemd/system as `make install PREFIX=/usr` writes them.
set -uo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: $0 SCRIPT [QEMU_ARGS...]" >&2
  exit 2
fi
script=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
cache=${QBD_VM_CACHE:-$src/build/vm}
timeout_s=${QBD_VM_TIMEOUT:-300}
work=$(mktemp -d /tmp/qbd-vm.XXXXXX)
qemu_pid=""
cleanup() {
  [ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

systemd=${QBD_VM_SYSTEMD:-}
grep -qx '# qbd-vm: systemd' "$script" && systemd=1
if [ "$systemd" = 1 ]; then export QBD_VM_SYSTEMD=1; else systemd=""; fi

start=$(date +%s%N)
if [ -n "${QBD_BIN:-}" ]; then
  "$here/build.sh" "$QBD_BIN" "$work/qbd.cpio" >&2 || exit 1
else
  "$here/build.sh" >&2 || exit 1
fi
mkdir -p "$work/t/test"
if [ "$systemd" = 1 ]; then
  # The units exactly as installed; the binaries in the image are QBD_BIN's (install's copies of
  # these placeholders are dropped).
  mkdir -p "$work/stub" "$work/t/usr/lib/systemd"
  for b in "$src"/src/bin/*; do : >"$work/stub/${b##*/}"; done
  make -C "$src" --no-print-directory -s install DESTDIR="$work/inst" PREFIX=/usr \
    INSTALL_BIN="$work/stub" >"$work/install.out" 2>&1 ||
    { echo "run.sh: make install failed:" >&2; cat "$work/install.out" >&2; exit 1; }
  cp -r "$work/inst/usr/lib/systemd/system" "$work/t/usr/lib/systemd/"
fi
cp "$script" "$work/t/test/run.sh"
cp "$here/guest-lib.sh" "$work/t/test/lib.sh"
chmod 755 "$work/t/test/run.sh"
(cd "$work/t" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
  gzip -1 >"$work/test.cpio.gz"
# The uncompressed cpio comes first: the kernel finds the start of a segment that follows a
# compressed one only if that one is compressed too.
cat ${QBD_BIN:+"$work/qbd.cpio"} "$cache/base.cpio.gz" ${systemd:+"$cache/systemd.cpio.gz"} \
  "$work/test.cpio.gz" >"$work/initrd"
built=$(date +%s%N)

console=${QBD_VM_CONSOLE:-$cache/console.log}
: >"$console"
: >"$work/result"
qemu-system-x86_64 -accel tcg -m "${QBD_VM_MEM:-1G}" -smp "${QBD_VM_CPUS:-2}" \
  -nographic -monitor none -no-reboot \
  -kernel "$cache/vmlinuz" -initrd "$work/initrd" \
  -append "console=ttyS0 panic=-1 loglevel=4 edd=off ${QBD_VM_APPEND:-}" \
  -serial "file:$console" -serial "file:$work/result" \
  -netdev user,id=n0 -device e1000,netdev=n0,romfile= \
  "$@" </dev/null >"$work/qemu.out" 2>&1 &
qemu_pid=$!
deadline=$(($(date +%s) + timeout_s))
timed_out=0
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    timed_out=1
    kill -KILL "$qemu_pid" 2>/dev/null
    break
  fi
  sleep 0.2
done
wait "$qemu_pid" 2>/dev/null
qemu_pid=""
end=$(date +%s%N)

tr -d '\r' <"$work/result"
sentinel=$(tr -d '\r' <"$work/result" | grep -E '^QBD-VM-END rc=' | tail -n 1)
echo "QBD-VM: image $(((built - start) / 1000000)) ms, qemu $(((end - built) / 1000000)) ms (boot and script)"
if [ $timed_out -eq 1 ]; then
  echo "FAIL: vm: the guest did not power off within $timeout_s s (qemu killed); console: $console"
  exit 1
fi
if [ -z "$sentinel" ]; then
  echo "FAIL: vm: no QBD-VM-END line from the guest; console: $console"
  tail -n 30 "$console" | sed 's/^/    | /'
  sed 's/^/    | qemu: /' "$work/qemu.out"
  exit 1
fi
case $sentinel in
  "QBD-VM-END rc=0 "*) exit 0 ;;
  *) exit 1 ;;
esac
