#!/bin/sh
# qbd's LVM thin stack (what Proxmox' lvmthin storage uses) on an attached volume: `qbdctl attach
# --lvm-thin` provisions the PV (UUID recorded in .meta), VG qbd_vg_<volume> with its two tags
# and the thin pool; a thin LV gets ext4 and files, written across a qbd-master restart; detach
# deactivates the VG, attach activates it again, and so does a start; grown through the API, the
# device, PV and pool grow; a second attach and a device holding a foreign PV are refused and the
# foreign VG is left as it was.
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=900m tmpfs $D
qbd_guest_conf $D 3 10810 "state_dir = $D/state" "attach_timeout_s = 5"
ctl() { qbdctl --config $D/qbd.conf "$@"; }
qbd_guest_start $D || die master "qbd-master did not start"
check create ctl create pool --size 256M --replicas 3 || exit 1
ctl attach pool --lvm-thin --connections 2 >/tmp/attach.out 2>&1 || { show /tmp/attach.out; die attach-lvm "qbdctl attach --lvm-thin failed"; }
dev=$(head -n 1 /tmp/attach.out)
grep -q "lvm thin pool: vgname qbd_vg_pool thinpool pool" /tmp/attach.out &&
  pass "attach --lvm-thin prints the device and the storage.cfg names" || fail attach-output "$(cat /tmp/attach.out)"
vgs --noheadings -o vg_tags qbd_vg_pool >/tmp/tags 2>&1
grep -q "quorumbd-managed=true" /tmp/tags && grep -q "quorumbd-volume=pool" /tmp/tags &&
  pass "VG qbd_vg_pool carries quorumbd-volume=pool and quorumbd-managed=true" || fail vg-tags "$(cat /tmp/tags)"
uuid=$(pvs --noheadings -o pv_uuid "$dev" | tr -d ' ')
meta_uuid=$(sed -n 's/^lvm_pv_uuid = //p' $D/node-a/1/.meta)
[ -n "$uuid" ] && [ "$uuid" = "$meta_uuid" ] && pass "the PV's UUID is the one in .meta ($uuid)" ||
  fail pv-uuid "pvs '$uuid', .meta '$meta_uuid'"
lvs --noheadings -o lv_name,segtype qbd_vg_pool >/tmp/lvs 2>&1
grep -q "pool *thin-pool" /tmp/lvs && pass "the thin pool qbd_vg_pool/pool exists" || fail thin-pool "$(cat /tmp/lvs)"
ctl attach pool --lvm-thin >/tmp/twice.out 2>&1 && fail attach-twice "a second attach worked" ||
  { grep -q "already attached" /tmp/twice.out && pass "a second attach is refused" || fail attach-twice "$(cat /tmp/twice.out)"; }
check thin-lv lvcreate -q -y -V 128M -T qbd_vg_pool/pool -n disk1 || exit 1
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
# detach deactivates the VG; attach (no flag: .meta asks for the stack) activates it.
check detach ctl detach pool
vgs qbd_vg_pool >/dev/null 2>&1 && lvs --noheadings -o lv_active qbd_vg_pool 2>/dev/null | grep -q active &&
  fail detach-deactivates "an LV of qbd_vg_pool is still active" || pass "detach deactivated the volume group first"
check attach-again ctl attach pool
lvs --noheadings -o lv_name,lv_active qbd_vg_pool >/tmp/lvs 2>&1
grep -q "disk1 *active" /tmp/lvs && pass "attach activated the volume group (vgchange -ay)" || fail attach-activates "$(cat /tmp/lvs)"
# A start activates it too.
check vgchange-an vgchange -q -an qbd_vg_pool
kill -TERM $MASTER_PID
wait $MASTER_PID 2>/dev/null
qbd_guest_start $D || die restart-2 "qbd-master did not start again"
lvs --noheadings -o lv_name,lv_active qbd_vg_pool >/tmp/lvs 2>&1
grep -q "disk1 *active" /tmp/lvs && pass "qbd-master's start re-attached and activated the volume group" || fail start-activates "$(tr '\n' ' ' </tmp/lvs); $(grep -i 'volume group\|lvm' $D/master.log | tail -n 3 | tr '\n' ' ')"
check e2fsck e2fsck -fn /dev/qbd_vg_pool/disk1
check remount mount -o ro /dev/qbd_vg_pool/disk1 /mnt/t
check checksums sh -c 'cd /mnt/t && sha256sum -c /tmp/sums >/dev/null'
umount /mnt/t
# Grown through the API: the device, the PV and the pool follow.
pool_before=$(lvs --noheadings --units b --nosuffix -o lv_size qbd_vg_pool/pool | tr -d ' ')
check resize ctl resize pool --size 384M
dev=$(ctl attachments --json | sed -n 's/.*"device": *"\([^"]*\)".*/\1/p' | head -n 1)
[ "$(blockdev --getsize64 "$dev")" = 402653184 ] && pass "the attached device grew to 384 MiB" || fail device-grew "$(blockdev --getsize64 "$dev")"
pv_size=$(pvs --noheadings --units m --nosuffix -o pv_size "$dev" | tr -d ' ' | cut -d. -f1)
pool_after=$(lvs --noheadings --units b --nosuffix -o lv_size qbd_vg_pool/pool | tr -d ' ')
[ "${pv_size:-0}" -gt 300 ] && [ "$pool_after" -gt "$pool_before" ] &&
  pass "the PV (${pv_size} MiB) and the thin pool ($pool_before -> $pool_after bytes) grew with it" ||
  fail pv-pool-grew "pv ${pv_size} MiB, pool $pool_before -> $pool_after; $(tail -n 3 $D/master.log | tr '\n' ' ')"
# A device that holds a foreign PV is refused, and the foreign VG stays as it was.
check create-other ctl create other --size 64M --replicas 3 || exit 1
odev=$(ctl attach other) || die attach-other "qbdctl attach other failed"
check foreign-pv pvcreate -q "$odev"
check foreign-vg vgcreate -q foreignvg "$odev"
check foreign-deactivate vgchange -q -an foreignvg
check detach-other ctl detach other
ctl attach other --lvm-thin >/tmp/foreign.out 2>&1 && fail foreign "attach --lvm-thin took a device with a foreign VG" ||
  { grep -q "refusing to touch it" /tmp/foreign.out && grep -q "foreignvg" /tmp/foreign.out &&
      pass "attach --lvm-thin refuses a device holding another VG, naming it" || fail foreign "$(cat /tmp/foreign.out)"; }
ctl attachments | grep -q other && fail foreign-detached "the refused device stayed attached" || pass "the refused device was detached again"
check foreign-vg-intact sh -c "ctl() { qbdctl --config $D/qbd.conf \"\$@\"; }; ctl attach other >/dev/null && vgs --noheadings -o vg_name foreignvg | grep -q foreignvg && ! vgs qbd_vg_other >/dev/null 2>&1"
ctl detach other >/dev/null 2>&1
check vgchange-an-2 vgchange -q -an qbd_vg_pool
check detach-2 ctl detach pool
if dmesg | grep -iE 'I/O error|EXT4-fs (error|warning)|Buffer I/O|remounting'; then
  fail dmesg "errors in the kernel log (above)"
else
  pass dmesg-clean
fi
kill -TERM $MASTER_PID
[ $FAILS -eq 0 ]
