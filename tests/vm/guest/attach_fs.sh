#!/bin/sh
# qbd's own attach (qbdctl attach: netlink NBD_CMD_CONNECT from inside qbd-master) in the guest:
# ext4 written, detached, attached again over 2 connections, e2fsck -fn clean, checksums match;
# a second attach refused; the state file and /dev/qbd/NAME follow.
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=600m tmpfs $D
qbd_guest_conf $D 3 10810 "state_dir = $D/state"
ctl() { qbdctl --config $D/qbd.conf "$@"; }
qbd_guest_start $D || die master "qbd-master did not start"
check create ctl create fs --size 256M --replicas 3 || exit 1

dev=$(ctl attach fs 2>/tmp/attach.err)
if [ -b "$dev" ] && [ "$(readlink /dev/qbd/fs)" = "$dev" ]; then
  pass "attach ($dev)"
else
  fail attach "qbdctl attach printed '$dev': $(cat /tmp/attach.err)"
  show $D/master.log
  exit 1
fi
grep -q "\"volume\": \"fs\"" $D/state/attachments.json && pass state-file || fail state-file "no entry for fs"
if ctl attach fs >/tmp/twice.out 2>&1; then
  fail attach-twice "a second attach succeeded: $(cat /tmp/twice.out)"
else
  pass attach-twice-refused
fi
ctl attachments
if wget -q -O - http://127.0.0.1:10810/metrics | grep -q '^qbd_attached_connections{.*kind="live".*volume="fs".*} 1'; then
  pass metrics
else
  fail metrics "no qbd_attached_connections of fs: $(wget -q -O - http://127.0.0.1:10810/metrics | grep attached)"
fi
wget -q -O - http://127.0.0.1:10810/v1/health | grep -q '"device": *"/dev/nbd' && pass health-attachment ||
  fail health-attachment "GET /v1/health does not show the device"
check delete-refused sh -c "! qbdctl --config $D/qbd.conf delete fs --force"
check mkfs mkfs.ext4 -q -F /dev/qbd/fs || exit 1
mkdir -p /mnt/fs
check mount mount /dev/qbd/fs /mnt/fs || exit 1
check detach-mounted-refused sh -c "! qbdctl --config $D/qbd.conf detach fs"
i=0
while [ $i -lt 40 ]; do
  dd if=/dev/urandom of=/mnt/fs/f$i bs=64k count=$((i % 7 + 1)) 2>/dev/null
  i=$((i + 1))
done
dd if=/dev/urandom of=/mnt/fs/big bs=1M count=16 2>/dev/null
(cd /mnt/fs && sha256sum f* big >/tmp/sums)
check umount umount /mnt/fs
check detach ctl detach fs
[ -e /dev/qbd/fs ] && fail detach-link "/dev/qbd/fs is still there" || pass detach-link
grep -q '"volume": "fs"' $D/state/attachments.json && fail detach-state "fs still in the state file" || pass detach-state

dev2=$(ctl attach fs --connections 2) || fail reattach "qbdctl attach --connections 2 failed"
[ -b "$dev2" ] && pass "reattach ($dev2, 2 connections)"
ctl attachments
check e2fsck e2fsck -fn /dev/qbd/fs
check remount mount -o ro /dev/qbd/fs /mnt/fs
check checksums sh -c 'cd /mnt/fs && sha256sum -c /tmp/sums'
umount /mnt/fs
# A device that went away while qbd-master was down (as after a reboot) is connected again at
# its index when qbd-master starts.
kill -KILL $MASTER_PID
wait $MASTER_PID 2>/dev/null
nbd-client -d "$dev2" >/dev/null 2>&1
n=${dev2#/dev/}
[ "$(cat /sys/block/$n/size)" = 0 ] || fail gone "nbd-client -d left $dev2 with size $(cat /sys/block/$n/size)"
rm -f /dev/qbd/fs
qbd_guest_start $D || die restart "qbd-master did not start again"
i=0
while [ "$(cat /sys/block/$n/size)" = 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ "$(cat /sys/block/$n/size)" != 0 ] && [ "$(readlink /dev/qbd/fs)" = "$dev2" ]; then
  pass "connected-again ($dev2)"
else
  fail connected-again "$dev2 has size $(cat /sys/block/$n/size), /dev/qbd/fs -> $(readlink /dev/qbd/fs)"
  show $D/master.log
fi
check e2fsck-again e2fsck -fn /dev/qbd/fs
check remount-again mount -o ro /dev/qbd/fs /mnt/fs
check checksums-again sh -c 'cd /mnt/fs && sha256sum -c /tmp/sums'
umount /mnt/fs
check detach-2 ctl detach fs
# Without the kernel's nbd module, attach fails with a message that says so.
rmmod nbd
if ctl attach fs >/tmp/nomod.out 2>&1; then
  fail no-module "attach succeeded without the nbd module"
elif grep -q 'modprobe nbd' /tmp/nomod.out; then
  pass no-module-refused
else
  fail no-module "unexpected message: $(cat /tmp/nomod.out)"
fi
kill -TERM $MASTER_PID
dmesg | grep -iE 'I/O error|EXT4-fs error' && fail dmesg "I/O or ext4 errors in the kernel log"
[ $FAILS -eq 0 ]
