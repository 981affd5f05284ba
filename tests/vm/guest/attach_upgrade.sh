#!/bin/sh
# An upgrade under a guest writing to ext4 on an attached volume: an older qbd-master (built by
# tests/vm/build-old.sh, in the guest as qbd-master-old and qbdctl-old) attaches the volume and is
# stopped with SIGTERM; the current qbd-master starts on the same configuration, reads the old
# one's attachments.json and gives the same /dev/nbdX fresh connections (NBD_CMD_RECONFIGURE).
# The writers see no error, the kernel logs no I/O error, ext4 stays read-write, the current
# qbdctl lists the device with its connections live, every file written (fsync'd) is there with
# its checksum, and the current qbdctl detaches it. Reports the longest time one write + fsync
# took (the stall the upgrade causes).
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=600m tmpfs $D
for b in qbd-master-old qbdctl-old; do
  command -v $b >/dev/null || die old-binary "$b is not in the guest (QBD_OLD_BIN unset?)"
done
# Requests unanswered for attach_timeout_s are resent on the new connections: it bounds the stall.
qbd_guest_conf $D 3 10810 "state_dir = $D/state" "attach_timeout_s = 5" "attach_dead_timeout_s = 60"
ctl() { qbdctl --config $D/qbd.conf "$@"; }
ctl_old() { qbdctl-old --config $D/qbd.conf "$@"; }
# qbd_guest_start runs "qbd-master" from PATH: a directory with the old binary under that name,
# first in PATH while it starts, makes it start the old one.
mkdir -p /tmp/old-bin
ln -s /usr/sbin/qbd-master-old /tmp/old-bin/qbd-master
start_old() {
  PATH=/tmp/old-bin:/usr/sbin:/usr/bin
  qbd_guest_start $D
  _rc=$?
  PATH=/usr/sbin:/usr/bin
  return $_rc
}
# exe_of PID: the binary PID runs, to tell which version is serving.
exe_of() { readlink /proc/"$1"/exe; }

start_old || die master-old "the old qbd-master did not start"
case $(exe_of $MASTER_PID) in
  */qbd-master-old) pass "old master runs ($(exe_of $MASTER_PID))" ;;
  *) die master-old "the master runs $(exe_of $MASTER_PID), not qbd-master-old" ;;
esac
check create ctl_old create fs --size 256M --replicas 3 || exit 1
dev=$(ctl_old attach fs --connections 2) || die attach "qbdctl-old attach failed"
check mkfs mkfs.ext4 -q -F "$dev" || exit 1
mkdir -p /mnt/fs
check mount mount "$dev" /mnt/fs || exit 1
ctl_old attachments


rm -f /tmp/stop /tmp/werr /tmp/steps.* /tmp/wsums.*
wpids=""
for w in a b c; do
  fs_writer /mnt/fs "w$w-" &
  wpids="$wpids $!"
done
sleep 2
t0=$(now_ms)
kill -TERM $MASTER_PID
wait $MASTER_PID 2>/dev/null
t_gone=$(now_ms)
if qbd_guest_start $D; then
  t_back=$(now_ms)
  echo "current qbd-master up $((t_back - t0)) ms after SIGTERM to the old one"
else
  t_back=$(now_ms)
  fail upgrade "the current qbd-master did not start on the old one's state"
fi
case $(exe_of $MASTER_PID) in
  /usr/sbin/qbd-master) pass "current master runs ($(exe_of $MASTER_PID))" ;;
  *) fail master "the master runs $(exe_of $MASTER_PID), not /usr/sbin/qbd-master" ;;
esac
# Writes go on for a while on the new connections (a request stuck in flight at the switch
# completes after attach_timeout_s: its writer's step is measured whenever it ends).
sleep 4
touch /tmp/stop
for p in $wpids; do wait $p; done

steps=$(cat /tmp/steps.* | wc -l)
stall=$(cat /tmp/steps.* | sort -n -k2 | tail -n 1 | cut -d' ' -f2)
# Steps that ended after the old master was gone went through the current one only.
after=$(cat /tmp/steps.* | awk -v t=$t_gone '$3 > t' | wc -l)
echo "upgrade: $steps writes, longest write+fsync $stall ms"
if [ -s /tmp/werr ]; then
  fail writes "$(head -n 3 /tmp/werr)"
else
  pass "writes ($steps writes by 3 writers across the upgrade, longest stall $stall ms)"
fi
if [ "$after" -gt 0 ]; then
  pass "writes-after-upgrade ($after ended after the old master exited)"
else
  fail writes-after-upgrade "no write ended after the old master exited"
fi
cat /tmp/wsums.* >/tmp/allsums
if grep -q ' /mnt/fs .*[ ,]rw[ ,]' /proc/mounts && touch /mnt/fs/probe; then
  pass still-rw
else
  fail still-rw "ext4 is no longer read-write: $(grep /mnt/fs /proc/mounts)"
fi
# The current qbdctl reads the current daemon's view: the device the old one attached, both
# connections live ("2/2 connected"). Reconnection is asynchronous: give it a few seconds.
i=0
while [ $i -lt 50 ]; do
  ctl attachments >/tmp/att 2>&1
  grep -qE "^fs +$dev +2/2 +connected" /tmp/att && break
  sleep 0.2
  i=$((i + 1))
done
cat /tmp/att
if grep -qE "^fs +$dev +2/2 +connected" /tmp/att; then
  pass "attachments ($dev, 2/2 connected, by the current qbdctl)"
else
  fail attachments "qbdctl attachments does not list fs on $dev with 2/2 connected"
fi
check_dmesg_clean
dmesg | grep -i nbd | tail -n 20
check_fs_files "$dev" /mnt/fs /tmp/allsums
check detach ctl detach fs
kill -TERM $MASTER_PID
wait $MASTER_PID 2>/dev/null
[ $FAILS -eq 0 ]
