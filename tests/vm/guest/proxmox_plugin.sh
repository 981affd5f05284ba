#!/bin/sh
# The Proxmox VE storage plugin (proxmox/QBDPlugin.pm) on a host with NBD devices: its harness
# (tests/proxmox/plugin_test.pl, PVE's base classes stubbed) in attach mode against qbd-master in
# the guest: alloc, list, resize, status, then activate_volume attaches /dev/qbd/vm-100-disk-0 (a
# block device of the volume's size), again is a no-op, data written through it reads back after
# a detach and an attach, volume_resize while attached, deactivate_volume detaches, free_image of
# an attached disk detaches and deletes it. The plugin, harness and stubs are under /qbd
# (tests/vm/build.sh); the harness's PASS/FAIL lines are relayed as this script's.
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=400m tmpfs $D
qbd_guest_conf $D 3 10810 "state_dir = $D/state"
qbd_guest_start $D || die master "qbd-master did not start"
command -v perl >/dev/null || die perl "no perl in the image (tests/vm/build.sh)"

perl /qbd/tests/proxmox/plugin_test.pl http://127.0.0.1:10810 attach >/tmp/plugin.out 2>&1
rc=$?
grep -E '^(PASS|FAIL|NOTE): ' /tmp/plugin.out
# Lines that are none of those (a perl error, a missing module) say why the harness stopped.
grep -vE '^(PASS|FAIL|NOTE): ' /tmp/plugin.out | sed 's/^/    | /'
FAILS=$((FAILS + $(grep -c '^FAIL: ' /tmp/plugin.out)))
grep -q '^PASS: status of an unreachable daemon' /tmp/plugin.out ||
  fail harness-end "plugin_test.pl did not run to its end (exit $rc)"
[ $rc = 0 ] || [ "$(grep -c '^FAIL: ' /tmp/plugin.out)" != 0 ] ||
  fail harness-exit "plugin_test.pl exited $rc without a FAIL line"
[ $FAILS -eq 0 ] || show $D/master.log 30
kill -TERM "$MASTER_PID"
wait "$MASTER_PID"
dmesg | grep -iE 'I/O error' && fail dmesg "I/O errors in the kernel log"
[ $FAILS -eq 0 ]
