#!/bin/sh
# The ioctl interface (attach_interface = ioctl, as on kernels without the netlink family): a free
# /dev/nbdN found by its size and pid in /sys/block, ext4 written, detached, attached, e2fsck
# clean, checksums match; after a qbd-master restart (device not in use) the device is connected
# again at the same index. The ioctl interface cannot carry I/O across a restart: nothing is
# mounted on it then.
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=600m tmpfs $D
qbd_guest_conf $D 3 10810 "state_dir = $D/state" "attach_interface = ioctl"
ctl() { qbdctl --config $D/qbd.conf "$@"; }
qbd_guest_start $D || die master "qbd-master did not start"
check create ctl create fs --size 256M --replicas 3 || exit 1
# nbd0 taken by someone else: discovery must skip it.
nbd-client 127.0.0.1 10809 /dev/nbd0 -N fs -b 4096 >/dev/null 2>&1 || fail setup "nbd-client on nbd0"
dev=$(ctl attach fs --connections 2 2>/tmp/attach.err)
if [ "$dev" = /dev/nbd1 ] && [ "$(cat /sys/block/nbd1/size)" != 0 ]; then
  pass "attach ($dev, nbd0 in use skipped)"
else
  fail attach "qbdctl attach printed '$dev': $(cat /tmp/attach.err)"
  show $D/master.log
  exit 1
fi
nbd-client -d /dev/nbd0 >/dev/null 2>&1
grep -q '"interface": "ioctl"' $D/state/attachments.json && pass state-interface || fail state-interface "not recorded"
ctl attachments
check mkfs mkfs.ext4 -q -F /dev/qbd/fs || exit 1
mkdir -p /mnt/fs
check mount mount /dev/qbd/fs /mnt/fs || exit 1
i=0
while [ $i -lt 30 ]; do
  dd if=/dev/urandom of=/mnt/fs/f$i bs=64k count=$((i % 7 + 1)) 2>/dev/null
  i=$((i + 1))
done
(cd /mnt/fs && sha256sum f*) >/tmp/sums
check umount umount /mnt/fs
check detach ctl detach fs
[ "$(cat /sys/block/nbd1/size)" = 0 ] && pass detached-size-0 || fail detached-size-0 "size $(cat /sys/block/nbd1/size)"
dev2=$(ctl attach fs) || fail reattach "attach failed"
check e2fsck e2fsck -fn "$dev2"
kill -TERM $MASTER_PID
wait $MASTER_PID 2>/dev/null
qbd_guest_start $D || die restart "qbd-master did not start again"
i=0
while [ "$(cat /sys/block/${dev2#/dev/}/size)" = 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
[ "$(cat /sys/block/${dev2#/dev/}/size)" != 0 ] && pass "connected-again ($dev2)" || fail connected-again "$dev2 has size 0"
check remount mount -o ro /dev/qbd/fs /mnt/fs
check checksums sh -c 'cd /mnt/fs && sha256sum -c /tmp/sums >/dev/null'
umount /mnt/fs
check detach-2 ctl detach fs
kill -TERM $MASTER_PID
[ $FAILS -eq 0 ]
