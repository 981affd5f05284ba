#!/usr/bin/env bash
# One master per volume (layout-spec.md 8). Two qbd-masters with their own configs (ports, admin
# sockets) over the SAME backend directories: the second refuses the volume and names the holder;
# its clean stop leaves the holder's .running and .owner alone; after the holder is SIGKILLed it
# takes the volume over once the lease stayed unchanged for lease_ms + lease_renew_ms by its own
# clock (the wait it logs is checked, never the test's sleeps), with a larger epoch, serving what
# the first master wrote. Then self-fencing over NFS: with two of three nfs-ganesha servers
# SIGSTOPped, the holder logs that it fenced itself and a write fails with an NBD error (ESHUTDOWN)
# instead of hanging or succeeding; after SIGCONT it renews and serves again.
. "$(dirname "$0")/lib.sh"
. "$IT_DIR/ganesha.sh"

LEASE_MS=3000
RENEW_MS=500
LEASE_LINES=("lease_ms = $LEASE_MS" "lease_renew_ms = $RENEW_MS")

try_write() { try_write_uri "$1" "$2"; } # URI OFFSET (lib.sh)

owner_pid() { # DIR: the pid named by DIR/.owner ("" when absent)
  sed -nE 's/^pid = ([0-9]+)$/\1/p' "$1/.owner" 2>/dev/null
}
epoch_of() { sed -nE 's/^epoch = ([0-9]+)$/\1/p' "$1/.epoch"; }

# ---------------------------------------------------------------------------------------------
# Two masters over the same local directories.
qbd_conf 3 "${LEASE_LINES[@]}"
qbdctl create v --size 16M --replicas 3 >/dev/null || die setup "qbdctl create v failed"
VOLNR=$(sed -nE 's/^v = ([0-9]+)$/\1/p' "$T/node-a/.volumesmeta")
head -c $((3 * 1024 * 1024 + 4096)) /dev/urandom >"$T/data.bin"
qbd_start
M1=$MASTER_PID
check "master 1 serves the volume: 3 MiB written and flushed" nbdcopy --flush "$T/data.bin" "$(uri v)"
owners_are() { # PID: .owner on every part of volume v names PID
  local p
  for p in a b c; do [ "$(owner_pid "$T/node-$p/$VOLNR")" = "$1" ] || return 1; done
}
check "master 1 holds the lease: .owner on every part names its pid" owners_are "$M1"
EPOCH1=$(epoch_of "$T/node-a/$VOLNR")

PORT2=$(free_port)
sed -e "s/^listen = .*/listen = 127.0.0.1:$PORT2/" -e "s/^api_listen = .*/api_listen = 127.0.0.1:$(free_port)/" \
  "$T/qbd.conf" >"$T/m2.conf"
{ head -n 1 "$T/m2.conf"; echo "admin_socket = m2.sock"; tail -n +2 "$T/m2.conf"; } >"$T/m2.conf.tmp"
mv "$T/m2.conf.tmp" "$T/m2.conf"

start_m2() { # starts master 2 (log m2.log), waits until it answers on PORT2; sets M2
  echo "=== $(date +%T.%N) start master 2" >>"$T/m2.log"
  "$QBD_BIN/qbd-master" --config "$T/m2.conf" </dev/null >>"$T/m2.log" 2>&1 &
  M2=$!
  track "$M2"
  wait_until 20 nbdinfo --list "nbd://127.0.0.1:$PORT2" || { show "$T/m2.log"; die "master 2" "does not answer on port $PORT2"; }
}
start_m2
if wait_for_line "$T/m2.log" "volume v: not served: its lease is held by qbd-master on host $(hostname) \(pid $M1, config $T/qbd.conf" 20; then
  pass "master 2 refuses volume v and names the holder (host, pid, config of master 1)"
else
  show "$T/m2.log"
  fail "master 2 refuses volume v" "no refusal naming master 1 (pid $M1) in m2.log"
fi
if timeout 10 nbdinfo "nbd://127.0.0.1:$PORT2/v" >"$T/nbdinfo2.out" 2>&1; then
  fail "master 2 does not export v" "nbdinfo opened v on master 2's port"
else
  pass "master 2 does not export v (nbdinfo cannot open it)"
fi

# Master 2's clean stop leaves master 1's files alone.
kill -TERM "$M2"
wait_pid "$M2" 20 || die "master 2" "did not stop within 20 s of SIGTERM"
[ "$WAIT_RC" = 0 ] || fail "master 2 stops cleanly" "exit status $WAIT_RC"
ok=1
for p in a b c; do
  [ -e "$T/node-$p/$VOLNR/.running" ] || { ok=0; echo "    | node-$p/$VOLNR/.running is gone"; }
  [ "$(owner_pid "$T/node-$p/$VOLNR")" = "$M1" ] || { ok=0; echo "    | node-$p/$VOLNR/.owner does not name $M1"; }
done
[ $ok = 1 ] && pass "master 2's clean stop leaves master 1's .running and .owner on every part" ||
  fail "master 2's clean stop" "it removed or changed master 1's files"
check "master 1 still serves v" timeout 20 nbdinfo "$(uri v)"

# SIGKILL the holder: master 2 takes over after the lease ran out, by its own measurement.
start_m2
wait_for_line "$T/m2.log" "volume v: not served" 20 || die "master 2" "no refusal after its restart"
qbd_kill
if wait_for_line "$T/m2.log" "volume v: lease taken over from qbd-master on host .*pid $M1," 60; then
  line=$(grep -m 1 "volume v: lease taken over" "$T/m2.log")
  waited=$(sed -nE 's/.*unchanged for ([0-9]+) ms by our clock.*/\1/p' <<<"$line")
  if [ -n "$waited" ] && [ "$waited" -ge $((LEASE_MS + RENEW_MS)) ]; then
    pass "master 2 took v over after the lease stayed unchanged $waited ms by its clock (>= lease_ms $LEASE_MS + lease_renew_ms $RENEW_MS)"
  else
    fail "takeover wait" "logged '$line', expected >= $((LEASE_MS + RENEW_MS)) ms"
  fi
else
  show "$T/m2.log"
  fail "takeover" "master 2 did not take v over within 60 s of master 1's SIGKILL"
fi
wait_until 20 nbdinfo "nbd://127.0.0.1:$PORT2/v" || fail "master 2 exports v" "not within 20 s of the takeover"
rm -f "$T/readback.bin"
if nbdcopy "nbd://127.0.0.1:$PORT2/v" "$T/readback.bin" && cmp -n "$(stat -c %s "$T/data.bin")" "$T/data.bin" "$T/readback.bin"; then
  pass "what master 1 wrote reads back through master 2"
else
  fail "data after the takeover" "master 2 does not return master 1's data"
fi
EPOCH2=$(epoch_of "$T/node-a/$VOLNR")
[ "${EPOCH2:-0}" -gt "${EPOCH1:-0}" ] && pass "the takeover bumped the epoch ($EPOCH1 -> $EPOCH2)" ||
  fail "epoch after the takeover" "$EPOCH1 -> $EPOCH2"
[ "$(owner_pid "$T/node-b/$VOLNR")" = "$M2" ] && pass ".owner names master 2 (pid $M2)" ||
  fail ".owner after the takeover" "$(cat "$T/node-b/$VOLNR/.owner" 2>&1)"
check "master 2 accepts writes" try_write "nbd://127.0.0.1:$PORT2/v" 0

# Offline qbd-repair with master 1's config refuses the volume master 2 holds.
repair --volume v >"$T/repair.out" 2>&1
rc=$?
if [ $rc = 4 ] && grep -q "not repaired: qbd-master on host .*pid $M2" "$T/repair.out"; then
  pass "offline qbd-repair refuses a volume another master holds (exit 4, names it)"
else
  show "$T/repair.out"
  fail "offline qbd-repair under another master's lease" "exit $rc"
fi

kill -TERM "$M2"
wait_pid "$M2" 20 || die "master 2" "did not stop within 20 s of SIGTERM"
ok=1
for p in a b c; do
  [ -e "$T/node-$p/$VOLNR/.running" ] && ok=0
  [ -e "$T/node-$p/$VOLNR/.owner" ] && ok=0
done
[ "$WAIT_RC" = 0 ] && [ $ok = 1 ] && pass "master 2's clean stop removes its .running and .owner" ||
  fail "master 2's clean stop" "exit $WAIT_RC; files left: $(ls -a "$T"/node-*/"$VOLNR"/ | grep -E 'running|owner' | xargs)"

# ---------------------------------------------------------------------------------------------
# Self-fencing over NFS: two of three servers stop answering.
ganesha_start n1
ganesha_start n2
ganesha_start n3
qbd_conf_nfs n1 n2 n3 -- "${LEASE_LINES[@]}"
# A server that has just started may still refuse its first mount: qbdctl create is retried.
create_w() {
  qbdctl create w --size 16M --replicas 3 >"$T/create.out" 2>&1 || grep -q "already exists" "$T/create.out"
}
wait_until 30 create_w || { show "$T/create.out"; die setup "qbdctl create w on NFS backends failed for 30 s"; }
since=$(($(wc -l <"$T/master.log") + 1))
qbd_start
check "NFS: a write and flush succeed while the lease is renewed" try_write "$(uri w)" 0
ganesha_pause n2
ganesha_pause n3
t0=$(date +%s%N)
deadline=$(($(date +%s%N) + 60000000000))
until tail -n +"$since" "$T/master.log" | grep -q "volume w: self-fenced"; do
  [ "$(date +%s%N)" -lt "$deadline" ] || break
  sleep 0.05
done
if tail -n +"$since" "$T/master.log" | grep -q "volume w: self-fenced"; then
  pass "NFS: with 2 of 3 servers stopped, the master logs that it fenced itself ($((($(date +%s%N) - t0) / 1000000)) ms after SIGSTOP)"
else
  tail -n +"$since" "$T/master.log" | tail -n 15 | sed 's/^/    | /'
  fail "NFS: self-fencing" "no 'volume w: self-fenced' line within 60 s"
fi
try_write "$(uri w)" 65536 >"$T/fenced.out" 2>&1
rc=$?
if [ $rc = 3 ] && grep -qi "shutdown" "$T/fenced.out"; then
  pass "NFS: a write while fenced fails with an NBD error: $(cat "$T/fenced.out")"
else
  fail "NFS: a write while fenced" "exit $rc (want 3, ESHUTDOWN): $(cat "$T/fenced.out")"
fi
ganesha_resume n2
ganesha_resume n3
deadline=$(($(date +%s%N) + 90000000000))
until tail -n +"$since" "$T/master.log" | grep -q "volume w: lease renewed on .* no longer fenced"; do
  [ "$(date +%s%N)" -lt "$deadline" ] || break
  sleep 0.1
done
if tail -n +"$since" "$T/master.log" | grep -q "volume w: lease renewed on .* no longer fenced"; then
  pass "NFS: after SIGCONT the master renews its lease and is no longer fenced"
else
  tail -n +"$since" "$T/master.log" | tail -n 15 | sed 's/^/    | /'
  fail "NFS: renewal after SIGCONT" "no 'no longer fenced' line within 90 s"
fi
if wait_until 60 try_write "$(uri w)" 131072; then
  pass "NFS: writes succeed again after the renewal"
else
  try_write "$(uri w)" 131072 | sed 's/^/    | /'
  fail "NFS: writes after the renewal" "no write succeeded within 60 s"
fi
qbd_stop
