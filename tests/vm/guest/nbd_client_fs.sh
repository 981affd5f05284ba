#!/bin/sh
# qbd-master in the guest on three parts on a tmpfs; Debian's nbd-client connects /dev/nbd0 to a
# volume through the kernel's NBD driver; ext4 on it: files written, synced, unmounted, e2fsck -fn
# clean, remounted, checksums match.
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=600m tmpfs $D
qbd_guest_conf $D 3 10810
qbd_guest_start $D || die master "qbd-master did not start"
pass master
check create qbdctl --config $D/qbd.conf create fs --size 256M --replicas 3 || exit 1
check nbd-client nbd-client 127.0.0.1 10809 /dev/nbd0 -N fs -b 4096 || exit 1
check mkfs mkfs.ext4 -q -F /dev/nbd0 || exit 1
mkdir -p /mnt/fs
check mount mount /dev/nbd0 /mnt/fs || exit 1
i=0
while [ $i -lt 40 ]; do
  dd if=/dev/urandom of=/mnt/fs/f$i bs=64k count=$((i % 7 + 1)) 2>/dev/null
  i=$((i + 1))
done
dd if=/dev/urandom of=/mnt/fs/big bs=1M count=24 2>/dev/null
(cd /mnt/fs && sha256sum f* big >/tmp/sums)
sync
check umount umount /mnt/fs
check e2fsck e2fsck -fn /dev/nbd0
echo 3 >/proc/sys/vm/drop_caches
check remount mount -o ro /dev/nbd0 /mnt/fs
check checksums sh -c 'cd /mnt/fs && sha256sum -c /tmp/sums'
umount /mnt/fs
check disconnect nbd-client -d /dev/nbd0
kill -TERM $MASTER_PID
dmesg | grep -iE 'I/O error|EXT4-fs error' && fail dmesg "I/O or ext4 errors in the kernel log"
[ $FAILS -eq 0 ]
