#!/usr/bin/env bash
# A live migration between two qbd-masters over the same backends, with NBD clients (the kernel
# path is tests/vm/guest/attach_migrate.sh): a client writes through master 1; POST
# /v1/volumes/NAME/acquire?migration=1 on master 2 serves the volume there at once by forwarding
# to master 1; a client of master 2 reads what master 1's client wrote and writes on; when master
# 1's client leaves, master 1 closes the forwarded connections and releases the lease, master 2
# takes the volume over while its client writes: every write acknowledged, every block reads
# back, master 2 holds the lease, no request is left on the parts, deep verify is clean.
. "$(dirname "$0")/lib.sh"

qbd_conf 3 "lease_ms = 3000" "lease_renew_ms = 500" "volume_poll_ms = 200"
qbdctl create h --size 64M --replicas 3 >/dev/null || die setup "qbdctl create h failed"
VOLNR=$(sed -nE 's/^h = ([0-9]+)$/\1/p' "$T/node-a/.volumesmeta")
qbd_start
M1=$MASTER_PID

second_master
wait_for_line "$T/m2.log" "volume h: not served: its lease is held by" 20 ||
  fail "master 2 sees h held by master 1" "$(tail -n 3 "$T/m2.log")"
check "master 1's lease record names its NBD listener" grep -q "^nbd = 127.0.0.1:" "$T/node-a/$VOLNR/.owner"

# The source: writes 1 MiB, flushes, then stays connected (the VM runs there) until told to go.
/usr/bin/python3 - "$(uri h)" "$T/src.ready" "$T/src.stop" >"$T/src.out" 2>&1 <<'PY' &
import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(bytes([0xA5]) * (1 << 20), 0)
h.flush()
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
h.shutdown()
print("source: done", flush=True)
PY
SRC=$!
track "$SRC"
wait_until 20 test -e "$T/src.ready" || die source "$(cat "$T/src.out")"

code=$(curl -s -m 30 -o "$T/acq.json" -w '%{http_code}' -X POST -d '' "$API2/v1/volumes/h/acquire?migration=1")
if [ "$code" = 200 ] && grep -q '"forwarded_to"' "$T/acq.json"; then
  pass "acquire?migration=1 on master 2 while master 1's client is connected: 200, forwarded to master 1"
else
  fail "acquire with migration" "HTTP $code: $(head -c 300 "$T/acq.json"); $(tail -n 3 "$T/m2.log")"
fi
check "acquire?migration=maybe is refused (400)" bash -c \
  "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '' '$API2/v1/volumes/h/acquire?migration=maybe')\" = 400 ]"

# The target: reads the source's data through master 2, then writes 4 KiB blocks in a loop,
# each one a pattern of its index, until told to stop; then reads every block back.
/usr/bin/python3 - "nbd://127.0.0.1:$PORT2/h" "$T/dst.ready" "$T/dst.stop" >"$T/dst.out" 2>&1 <<'PY' &
import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
if h.pread(1 << 20, 0) != bytes([0xA5]) * (1 << 20):
    print("target: the source's data differs", flush=True)
    sys.exit(1)
open(sys.argv[2], "w").close()
base, n, worst, t_end = 1 << 20, 0, 0.0, None
while t_end is None or time.time() < t_end:
    if t_end is None and os.path.exists(sys.argv[3]):
        t_end = time.time() + 1.0  # a last second of writes on the new holder
    t0 = time.time()
    h.pwrite(n.to_bytes(4, "little") * 1024, base + (n % 8192) * 4096)
    if n % 16 == 0:
        h.flush()
    worst = max(worst, time.time() - t0)
    n += 1
h.flush()
for i in range(max(0, n - 8192), n):
    if h.pread(4096, base + (i % 8192) * 4096) != i.to_bytes(4, "little") * 1024:
        print(f"target: block {i} reads back wrong", flush=True)
        sys.exit(1)
print(f"target: {n} writes, every one read back; longest {worst * 1000:.0f} ms", flush=True)
PY
DST=$!
track "$DST"
wait_until 20 test -e "$T/dst.ready" || fail "the target reads the source's data through master 2" "$(cat "$T/dst.out")"
pass "the target reads the source's data through master 2"
wait_for_line "$T/master.log" "volume h: .* asks for it \(a live migration: 2 connection\(s\) forwarded from it\), but 1 client\(s\) use it here" 10 &&
  pass "master 1 keeps h while its own client is connected" || fail "master 1 keeps h" "$(tail -n 3 "$T/master.log")"

check "master 2's health shows h forwarded to master 1, with no problem" bash -c \
  "curl -sf '$API2/v1/health' | python3 -c 'import json,sys; v=[x for x in json.load(sys.stdin)[\"volumes\"] if x[\"name\"]==\"h\"][0]; sys.exit(0 if \"pid $M1\" in v.get(\"forwarded_to\",\"\") and not v[\"problems\"] else 1)'"

# The source leaves: master 2 takes h over under the target's writes.
sleep 1
touch "$T/src.stop"
wait_pid "$SRC" 20 && [ "$WAIT_RC" = 0 ] || fail "the source client ends" "$(cat "$T/src.out")"
if wait_for_line "$T/m2.log" "volume h: taken over from qbd-master on host" 30; then
  pass "master 2 took h over: $(grep -o 'served here, .*' "$T/m2.log" | tail -n 1)"
else
  fail "master 2 takes h over" "$(tail -n 5 "$T/m2.log")"
fi
wait_for_line "$T/master.log" "volume h: handed over to .* at its request" 10 &&
  pass "master 1 handed h over" || fail "master 1 hands over" "$(tail -n 3 "$T/master.log")"
touch "$T/dst.stop"
if wait_pid "$DST" 60 && [ "$WAIT_RC" = 0 ]; then
  pass "$(tail -n 1 "$T/dst.out")"
else
  fail "the target's writes" "exit ${WAIT_RC:-timeout}: $(cat "$T/dst.out")"
fi
check "master 2 serves h with its lease, no longer forwarded" bash -c \
  "curl -sf '$API2/v1/volumes/h' | python3 -c 'import json,sys; j=json.load(sys.stdin); sys.exit(0 if j[\"served\"] and j[\"lease\"][\"ours\"] and \"forwarded_to\" not in j else 1)'"
check "no request is left on the parts" bash -c "! ls '$T'/node-?/$VOLNR/.handoff 2>/dev/null | grep -q ."
check "master 2 serves the source's data" bash -c \
  "nbdcopy 'nbd://127.0.0.1:$PORT2/h' - | head -c 1048576 | cmp - <(head -c 1048576 /dev/zero | tr '\\0' '\\245')"
kill -TERM "$M2"
wait_pid "$M2" 20 && [ "$WAIT_RC" = 0 ] && pass "master 2 stops cleanly" || fail "master 2 stops" "exit ${WAIT_RC:-timeout}"
qbd_stop
check "deep verify is clean" verify --deep h
