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

# A writer: one 32 KiB file per step, fsync'd, its checksum recorded once written; each step's
# duration in ms goes to /tmp/steps.PREFIX. Three run at once, so that requests are in flight
# when qbd-master goes.
writer() { # PREFIX
  j=0
  : >/tmp/steps.$1
  while [ ! -e /tmp/stop ]; do
    t0=$(now_ms)
    if ! dd if=/dev/urandom of=/mnt/fs/$1$j bs=32k count=1 conv=fsync 2>/tmp/dd.err.$1; then
      echo "$1$j: write error: $(cat /tmp/dd.err.$1)" >>/tmp/werr
    else
      (cd /mnt/fs && sha256sum $1$j) >>/tmp/wsums.$1
    fi
    echo "$j $(($(now_ms) - t0))" >>/tmp/steps.$1
    j=$((j + 1))
  done
}

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
    writer "w$sig$w-" &
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
if dmesg | grep -iE 'I/O error|EXT4-fs (error|warning)|Buffer I/O|remounting'; then
  fail dmesg "errors in the kernel log (above)"
else
  pass dmesg-clean
fi
dmesg | grep -i nbd | tail -n 20
check umount umount /mnt/fs
check e2fsck e2fsck -fn "$dev"
check remount mount -o ro "$dev" /mnt/fs
n=$(wc -l </tmp/allsums)
check "checksums ($n files)" sh -c 'cd /mnt/fs && sha256sum -c /tmp/allsums >/tmp/sumcheck || { grep -v OK /tmp/sumcheck | head; exit 1; }'
umount /mnt/fs
check detach ctl detach fs
kill -TERM $MASTER_PID
[ $FAILS -eq 0 ]
