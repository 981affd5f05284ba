#!/bin/sh
# A qbd-master that stops answering for longer than attach_timeout_s (SIGSTOP, then SIGCONT) while
# the guest reads its attached device: the kernel gives up on the connections (it shuts them down
# and holds the requests), the running qbd-master notices at its next volume poll and gives the
# device new ones; every read completes with the right data, none fails. Reads only: a write the
# kernel resends may also still be applied from the abandoned connection. The stop stays short of
# the lease's fence (lease_ms - lease_renew_ms = 8 s): past it, qbd-master fails requests with
# ESHUTDOWN until it has renewed its lease, as it must.
. /test/lib.sh
D=/tmp/qbd
mkdir -p $D
mount -t tmpfs -o size=600m tmpfs $D
qbd_guest_conf $D 3 10810 "state_dir = $D/state" "attach_timeout_s = 2" "attach_dead_timeout_s = 60"
ctl() { qbdctl --config $D/qbd.conf "$@"; }
qbd_guest_start $D || die master "qbd-master did not start"
check create ctl create fs --size 64M --replicas 3 || exit 1
dev=$(ctl attach fs --connections 2) || die attach "qbdctl attach failed"
dd if=/dev/urandom of=/tmp/data bs=1M count=8 2>/dev/null
check write dd if=/tmp/data of="$dev" bs=1M conv=fsync || exit 1
want=$(sha256sum </tmp/data | cut -d' ' -f1)

reader() {
  : >/tmp/rsteps
  while [ ! -e /tmp/stop ]; do
    t0=$(now_ms)
    echo 3 >/proc/sys/vm/drop_caches
    got=$(dd if="$dev" bs=1M count=8 2>/tmp/rd.err | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] || echo "read: $got, want $want: $(cat /tmp/rd.err)" >>/tmp/rerr
    echo "$(($(now_ms) - t0))" >>/tmp/rsteps
  done
}

rm -f /tmp/stop /tmp/rerr
reader &
rpid=$!
sleep 1
kill -STOP $MASTER_PID
sleep 4
kill -CONT $MASTER_PID
sleep 4
touch /tmp/stop
wait $rpid
n=$(wc -l </tmp/rsteps)
stall=$(sort -n /tmp/rsteps | tail -n 1)
if [ -s /tmp/rerr ]; then
  fail reads "$(head -n 2 /tmp/rerr)"
else
  pass "reads ($n reads of 8 MiB, longest $stall ms across a 4 s stop)"
fi
dmesg | grep -i nbd | tail -n 12
dmesg | grep -q 'reconnected socket' && pass reconnected || fail reconnected "no reconnect in the kernel log"
if dmesg | grep -iE 'I/O error|Buffer I/O'; then fail dmesg "I/O errors in the kernel log"; else pass dmesg-clean; fi
ctl attachments
ctl attachments | grep -q ' 2/2 .*connected' && pass live-connections || fail live-connections "not 2/2 connected"
check detach ctl detach fs
kill -TERM $MASTER_PID
[ $FAILS -eq 0 ]
