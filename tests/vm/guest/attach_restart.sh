#!/bin/sh
# A qbd-master restart under a guest writing to ext4 on an attached volume: SIGTERM, start again;
# then SIGKILL, start again. The new qbd-master gives the same /dev/nbdX fresh connections
# (NBD_CMD_RECONFIGURE); the writer sees no error, the kernel logs no I/O error, ext4 stays
# read-write, and every file written (fsync'd) is there with its checksum. Reports the longest
# time one write + fsync took (the stall a restart causes).
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=600m tmpfs $D
# Requests unanswered for attach_timeout_s are resent on the new connections: it bounds the stall.
qbd_guest_conf $D 3 10810 "state_dir = $D/state" "attach_timeout_s = 5" "attach_dead_timeout_s = 60"
ctl() { qbdctl --config $D/qbd.conf "$@"; }
qbd_guest_start $D || die master "qbd-master did not start"
check create ctl create fs --size 256M --replicas 3 || exit 1
dev=$(ctl attach fs --connections 2) || die attach "qbdctl attach failed"
check mkfs mkfs.ext4 -q -F "$dev" || exit 1
mkdir -p /mnt/fs
check mount mount "$dev" /mnt/fs || exit 1


restart() { # SIGNAL
  sleep 1
  t0=$(now_ms)
  kill -"$1" $MASTER_PID
  wait $MASTER_PID 2>/dev/null
  if qbd_guest_start $D; then
    echo "qbd-master back $(($(now_ms) - t0)) ms after SIG$1"
  else
    fail "restart-$1" "qbd-master did not start again"
    return 1
  fi
  # Writes go on for a while on the new connections (a request stuck in flight at the restart
  # completes after attach_timeout_s: its writer's step is measured whenever it ends).
  sleep 3
  ctl attachments
}

for sig in TERM KILL; do
  rm -f /tmp/stop /tmp/werr /tmp/steps.* /tmp/wsums.*
  wpids=""
  for w in a b c; do
    fs_writer /mnt/fs "w$sig$w-" &
    wpids="$wpids $!"
  done
  restart $sig
  touch /tmp/stop
  for p in $wpids; do wait $p; done
  steps=$(cat /tmp/steps.* | wc -l)
  stall=$(cat /tmp/steps.* | sort -n -k2 | tail -n 1 | cut -d' ' -f2)
  echo "SIG$sig: $steps writes, longest write+fsync $stall ms"
  if [ -s /tmp/werr ]; then
    fail "writes-$sig" "$(head -n 3 /tmp/werr)"
  else
    pass "writes-$sig ($steps writes by 3 writers across the restart, longest stall $stall ms)"
  fi
  cat /tmp/wsums.* >>/tmp/allsums
  if grep -q ' /mnt/fs .*[ ,]rw[ ,]' /proc/mounts && touch /mnt/fs/probe-$sig; then
    pass "still-rw-$sig"
  else
    fail "still-rw-$sig" "ext4 is no longer read-write: $(grep /mnt/fs /proc/mounts)"
  fi
done
check_dmesg_clean
dmesg | grep -i nbd | tail -n 20
check_fs_files "$dev" /mnt/fs /tmp/allsums
check detach ctl detach fs
kill -TERM $MASTER_PID
[ $FAILS -eq 0 ]
