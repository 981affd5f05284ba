#!/usr/bin/env bash
# The real kernel NBD client, in a VM: tests/vm/build.sh builds (or reuses, from build/vm) Debian
# 12's kernel and an initramfs, tests/vm/run.sh boots it in qemu (TCG) with this build's
# qbd-master and qbdctl and runs one guest script of tests/vm/guest/. The guest's PASS/FAIL lines
# are this test's, prefixed "vm/"; a guest that does not report its end is a failure.
#   QBD_VM_TESTS: the guest scripts to run (names under tests/vm/guest/ without .sh); default the
#   essential ones: attach_fs (qbdctl attach, ext4, detach, attach, e2fsck, checksums),
#   attach_restart (qbd-master SIGTERM and SIGKILL under a writing guest), attach_lvm (qbd's LVM
#   thin stack: provisioned, across restarts, grown, a foreign PV refused), proxmox_plugin (the
#   Proxmox plugin's harness in attach mode) and attach_migrate (a live migration between two
#   qbd-masters through the plugin, the target writing across the take-over); about 2.5 minutes
#   in TCG. `make test-vm` runs them
#   all (also nbd_client_fs: Debian's nbd-client against qbd-master, attach_stall,
#   attach_ioctl, attach_upgrade and systemd_unit: qbd-master.service under systemd as PID 1).
#   attach_upgrade needs the qbd-master and qbdctl of an older commit (QBD_UPGRADE_FROM):
#   tests/vm/build-old.sh builds them from git history first (minutes, once; cached in build/vm),
#   which is why it is not among the essential ones; without that commit (a shallow clone) it
#   fails with "old-binary".
. "$(dirname "$0")/lib.sh"

VM_DIR=$(cd "$IT_DIR/../vm" && pwd)
tests=${QBD_VM_TESTS:-attach_fs attach_restart attach_lvm proxmox_plugin attach_migrate}
for t in $tests; do
  old_bin=""
  if [ "$t" = attach_upgrade ]; then
    start=$(date +%s%N)
    if ! old_bin=$("$VM_DIR/build-old.sh" 2>"$T/build-old.err"); then
      fail "vm/$t/old-binary" "$(grep 'build-old.sh:' "$T/build-old.err" | tail -n 1)"
      # More than the message: the end of the failed build's log.
      [ "$(wc -l <"$T/build-old.err")" -gt 1 ] && show "$T/build-old.err" 30
      continue
    fi
    echo "    old binaries: $old_bin ($((($(date +%s%N) - start) / 1000000)) ms)"
  fi
  start=$(date +%s%N)
  QBD_VM_CONSOLE="$T/$t.console" QBD_BIN="$QBD_BIN" QBD_OLD_BIN="$old_bin" \
    "$VM_DIR/run.sh" "$VM_DIR/guest/$t.sh" >"$T/$t.out" 2>"$T/$t.err"
  rc=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  sed -nE 's/^(PASS|FAIL): /\1: vm\/'"$t"'\//p' "$T/$t.out"
  grep -E '^(QBD-VM|    \| )' "$T/$t.out" | grep -v '^QBD-VM-END' | sed 's/^/    /'
  if [ $rc -eq 0 ]; then
    pass "vm/$t ($ms ms with image and boot)"
  else
    fail "vm/$t" "guest script failed or did not finish (exit $rc, $ms ms); console follows"
    show "$T/$t.err" 10
    show "$T/$t.out" 40
    show "$T/$t.console" 60
  fi
done
