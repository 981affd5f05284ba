#!/bin/sh
# A live migration between two qbd-masters over the same parts (two Proxmox nodes sharing their
# backends; here two daemons of one guest sharing directories), as Proxmox drives it through the
# storage plugin (proxmox/QBDPlugin.pm, PVE's base classes stubbed as in tests/proxmox):
#  1. the source VM runs: activate_volume on node 1 attaches the volume, ext4 on it is written;
#  2. the target starts while the source still writes: activate_volume on node 2 with
#     PVE_MIGRATED_FROM set (as qemu-server sets it) attaches it for a migration, and master 2
#     forwards its device's requests to master 1;
#  3. switch-over: the source stops (ext4 unmounted there), the target mounts it, sees every file
#     the source wrote, and writes on (three writers, write + fsync in a loop);
#     master 2 restarts meanwhile (it forwards again from its state file);
#  4. deactivate_volume on node 1 detaches the source's device: master 1 closes the forwarded connections and releases the lease,
#     master 2 takes the volume over while the target writes: no write error, no kernel I/O
#     error, ext4 read-write, every file there with its checksum after e2fsck.
# Reports the longest write+fsync the target saw across the take-over.
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D $D/n2
mount -t tmpfs -o size=700m tmpfs $D
mkdir -p $D/n2
qbd_guest_conf $D 3 10810 "state_dir = $D/state" "lease_ms = 3000" "lease_renew_ms = 500" \
  "volume_poll_ms = 200"
# Master 2: the same parts, its own NBD and API ports, state directory and lock.
sed -e "s|^listen = .*|listen = 127.0.0.1:10819|" -e "s|^api_listen = .*|api_listen = 127.0.0.1:10820|" \
  -e "s|^state_dir = .*|state_dir = $D/state2|" -e "s|^path = |path = $D/|" $D/qbd.conf >$D/n2/qbd.conf
echo "admin_socket = $D/n2/qbd.sock" | cat - $D/n2/qbd.conf >$D/n2/conf.tmp && mv $D/n2/conf.tmp $D/n2/qbd.conf
c1() { qbdctl --config $D/qbd.conf "$@"; }
c2() { qbdctl --config $D/n2/qbd.conf "$@"; }
# pve API_PORT FUNCTION: the plugin's FUNCTION (activate_volume, deactivate_volume) of the disk
# against the qbd-master whose REST API is on API_PORT.
VOL=vm-100-disk-0
pve() {
  perl -I/qbd/tests/proxmox/stub -e '
    require "/qbd/proxmox/QBDPlugin.pm";
    my ($port, $fn, $vol) = @ARGV;
    PVE::Storage::Custom::QBDPlugin->$fn("qbd", { "qbd-api" => "http://127.0.0.1:$port", type => "qbd" }, $vol);
  ' "$1" "$2" $VOL
}
# The device a node's qbd-master attached the disk to.
device_of() { # CTL
  $1 attachments --json | tr -d ' \n' | sed -n "s/.*\"device\":\"\([^\"]*\)\".*/\1/p"
}
qbd_guest_start $D || die master1 "qbd-master 1 did not start"
M1=$MASTER_PID
qbd_guest_start $D/n2 || die master2 "qbd-master 2 did not start"
M2=$MASTER_PID
check create c1 create $VOL --size 256M --replicas 3 || exit 1

# 1. The source VM on node 1.
check activate-source pve 10810 activate_volume || exit 1
dev1=$(device_of c1)
[ -b "$dev1" ] || die device1 "no device on node 1: '$dev1'"
check mkfs mkfs.ext4 -q -F "$dev1" || exit 1
mkdir -p /mnt/src /mnt/dst
check mount-source mount "$dev1" /mnt/src || exit 1
: >/tmp/allsums
fs_writer /mnt/src src- &
wsrc=$!
sleep 2

# 2. The target attaches while the source writes.
t0=$(now_ms)
if PVE_MIGRATED_FROM=node1 pve 10820 activate_volume >/tmp/attach2.err 2>&1; then
  pass "activate_volume on the target with PVE_MIGRATED_FROM ($(($(now_ms) - t0)) ms)"
else
  fail activate-target "$(cat /tmp/attach2.err)"
  show $D/n2/master.log
  exit 1
fi
dev2=$(device_of c2)
[ -b "$dev2" ] && [ "$dev2" != "$dev1" ] || die device2 "no second device on node 2: '$dev2'"
c2 attachments | tee /tmp/att2
grep -q forwarded /tmp/att2 && pass "master 2 shows the device forwarded" || fail forwarded-state "$(cat /tmp/att2)"
check "master 1 keeps the volume while its client writes" sh -c "grep -q 'a live migration: 1 connection(s) forwarded' $D/master.log"
sleep 2

# 3. Switch-over: the source stops, the target resumes on its own device.
touch /tmp/stop
wait $wsrc
check umount-source umount /mnt/src
cat /tmp/wsums.src- >>/tmp/allsums
check mount-target mount "$dev2" /mnt/dst || exit 1
n=$(wc -l </tmp/allsums)
check "the target sees the source's $n files" sh -c 'cd /mnt/dst && sha256sum -c /tmp/allsums >/tmp/sumcheck || { grep -v OK /tmp/sumcheck | head; exit 1; }'
rm -f /tmp/stop /tmp/werr /tmp/steps.*
wpids=""
for w in a b c; do
  fs_writer /mnt/dst dst$w- &
  wpids="$wpids $!"
done
sleep 2
# Master 2 restarts while it forwards (SIGTERM, start): the state file says the device was
# attached for a migration, so the new process forwards to master 1 again and the device gets
# its connections back; the target's writes go on.
t0=$(now_ms)
kill -TERM $M2
wait $M2 2>/dev/null
if qbd_guest_start $D/n2; then
  M2=$MASTER_PID
  pass "master 2 restarted while forwarding ($(($(now_ms) - t0)) ms)"
else
  die restart2 "qbd-master 2 did not start again"
fi
n=$(grep -c "volume $VOL: served by .*: forwarded to it" $D/n2/master.log)
if [ "$n" -ge 2 ] && c2 attachments | grep -q forwarded; then
  pass "master 2 forwards again after its restart"
else
  fail forward-after-restart "$n forwarding lines; $(c2 attachments)"
  show $D/n2/master.log
fi
sleep 2

# 4. The source detaches: master 2 takes the volume over under the target's writes.
t0=$(now_ms)
check "deactivate_volume on the source" pve 10810 deactivate_volume
n=0
until grep -q "volume $VOL: taken over from" $D/n2/master.log || [ $n -gt 300 ]; do
  sleep 0.1
  n=$((n + 1))
done
if grep -q "volume $VOL: taken over from" $D/n2/master.log; then
  pass "master 2 took the volume over $(($(now_ms) - t0)) ms after the source detached"
  grep "volume $VOL: taken over from" $D/n2/master.log | sed 's/^/    | /'
else
  fail take-over "master 2 did not take the volume over within 30 s"
  show $D/master.log
  show $D/n2/master.log
fi
sleep 3
touch /tmp/stop
for p in $wpids; do wait $p; done
steps=$(cat /tmp/steps.* | wc -l)
stall=$(cat /tmp/steps.* | sort -n -k2 | tail -n 1 | cut -d' ' -f2)
echo "migration: $steps writes on the target, longest write+fsync $stall ms"
if [ -s /tmp/werr ]; then
  fail writes "$(head -n 3 /tmp/werr)"
else
  pass "writes ($steps by 3 writers across the take-over, longest stall $stall ms)"
fi
cat /tmp/wsums.dst* >>/tmp/allsums
if grep -q ' /mnt/dst .*[ ,]rw[ ,]' /proc/mounts && touch /mnt/dst/probe; then
  pass still-rw
else
  fail still-rw "ext4 is no longer read-write: $(grep /mnt/dst /proc/mounts)"
fi
c2 attachments | tee /tmp/att2
grep -q forwarded /tmp/att2 && fail served-here "still forwarded: $(cat /tmp/att2)" || pass "master 2 serves the device itself"
check "master 2 holds the lease" sh -c "wget -q -O - http://127.0.0.1:10820/v1/volumes/$VOL | grep -q '\"ours\": *true'"
check "no request left on the parts" sh -c "! ls $D/node-?/*/.handoff 2>/dev/null | grep -q ."
check_dmesg_clean
check_fs_files "$dev2" /mnt/dst /tmp/allsums
check "deactivate_volume on the target" pve 10820 deactivate_volume
kill -TERM $M1 $M2
wait $M1 $M2 2>/dev/null
[ $FAILS -eq 0 ]
