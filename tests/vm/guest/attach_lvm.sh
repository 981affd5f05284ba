#!/bin/sh
# An LVM thin pool on an attached volume (what Proxmox' lvmthin storage uses), across a qbd-master
# restart: PV, VG, thin pool and a thin LV with ext4, written while qbd-master is stopped and
# started again; then deactivated, detached, attached, activated: e2fsck clean, checksums match.
# (The LVM stack is made by hand here; qbd does not provision it yet.)
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=700m tmpfs $D
qbd_guest_conf $D 3 10810 "state_dir = $D/state" "attach_timeout_s = 5"
ctl() { qbdctl --config $D/qbd.conf "$@"; }
qbd_guest_start $D || die master "qbd-master did not start"
check create ctl create pool --size 512M --replicas 3 || exit 1
dev=$(ctl attach pool --connections 2) || die attach "qbdctl attach failed"
check pvcreate pvcreate -q /dev/qbd/pool || exit 1
check vgcreate vgcreate -q --addtag quorumbd-managed=true qbd_vg_pool /dev/qbd/pool || exit 1
check thin-pool lvcreate -q -y -l 90%VG -T qbd_vg_pool/thin || exit 1
check thin-lv lvcreate -q -y -V 256M -T qbd_vg_pool/thin -n disk1 || exit 1
check mkfs mkfs.ext4 -q /dev/qbd_vg_pool/disk1 || exit 1
mkdir -p /mnt/t
check mount mount /dev/qbd_vg_pool/disk1 /mnt/t || exit 1
i=0
while [ $i -lt 20 ]; do
  dd if=/dev/urandom of=/mnt/t/a$i bs=64k count=$((i % 5 + 1)) 2>/dev/null
  i=$((i + 1))
done
sync
# A restart under the mounted thin LV, with writes going on.
(i=0; while [ ! -e /tmp/stop ]; do dd if=/dev/urandom of=/mnt/t/b$i bs=16k count=1 conv=fsync 2>/dev/null || echo "b$i failed" >>/tmp/werr; i=$((i + 1)); done) &
wpid=$!
sleep 1
kill -TERM $MASTER_PID
wait $MASTER_PID 2>/dev/null
qbd_guest_start $D || die restart "qbd-master did not start again"
sleep 2
touch /tmp/stop
wait $wpid
[ -s /tmp/werr ] && fail writes-across-restart "$(head -n 3 /tmp/werr)" || pass writes-across-restart
(cd /mnt/t && sha256sum a* b*) >/tmp/sums
check umount umount /mnt/t
check vgchange-an vgchange -q -an qbd_vg_pool
check detach ctl detach pool
check attach-again ctl attach pool
check vgscan vgscan -q
check vgchange-ay vgchange -q -ay qbd_vg_pool
check lvs lvs qbd_vg_pool
check e2fsck e2fsck -fn /dev/qbd_vg_pool/disk1
check remount mount -o ro /dev/qbd_vg_pool/disk1 /mnt/t
check checksums sh -c 'cd /mnt/t && sha256sum -c /tmp/sums >/dev/null'
umount /mnt/t
check vgchange-an-2 vgchange -q -an qbd_vg_pool
check detach-2 ctl detach pool
if dmesg | grep -iE 'I/O error|EXT4-fs (error|warning)|Buffer I/O|remounting'; then
  fail dmesg "errors in the kernel log (above)"
else
  pass dmesg-clean
fi
kill -TERM $MASTER_PID
[ $FAILS -eq 0 ]
