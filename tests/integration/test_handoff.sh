#!/usr/bin/env bash
# Handing a volume from one qbd-master to another over the same backends (what a VM moving to
# another Proxmox node needs): POST /v1/volumes/NAME/acquire on master 2 writes a request that
# master 1, which serves the volume, answers at its next poll when no client uses the volume
# there: it unexports it and releases its lease; master 2 takes it, serves what master 1 wrote,
# and removes the request. While a client is connected to the holder, the request is refused
# after its timeout (409, naming the holder) and the client goes on undisturbed.
. "$(dirname "$0")/lib.sh"

qbd_conf 3 "lease_ms = 3000" "lease_renew_ms = 500" "volume_poll_ms = 200"
qbdctl create h --size 16M --replicas 3 >/dev/null || die setup "qbdctl create h failed"
VOLNR=$(sed -nE 's/^h = ([0-9]+)$/\1/p' "$T/node-a/.volumesmeta")
head -c $((2 * 1024 * 1024)) /dev/urandom >"$T/data.bin"
qbd_start
M1=$MASTER_PID
API1="http://$(api_address)"
check "master 1 serves h: 2 MiB written and flushed" nbdcopy --flush "$T/data.bin" "$(uri h)"

second_master
wait_for_line "$T/m2.log" "volume h: not served: its lease is held by" 20 ||
  fail "master 2 refuses h at first" "$(tail -n 3 "$T/m2.log")"

code=$(curl -s -m 60 -o "$T/acq.json" -w '%{http_code}' -X POST -d '' "$API2/v1/volumes/h/acquire?timeout_ms=20000")
if [ "$code" = 200 ] && python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["served"] and j["lease"]["ours"] else 1)' "$T/acq.json"; then
  pass "POST /v1/volumes/h/acquire on master 2: 200, served there with its lease"
else
  fail "acquire on master 2" "HTTP $code: $(head -c 300 "$T/acq.json"); $(tail -n 3 "$T/m2.log")"
fi
wait_for_line "$T/master.log" "volume h: handed over to qbd-master on host .* at its request" 10 &&
  pass "master 1 logged the handover" || fail "master 1 logs the handover" "$(tail -n 3 "$T/master.log")"
check "master 2 serves what master 1 wrote" bash -c "nbdcopy 'nbd://127.0.0.1:$PORT2/h' - | head -c 2097152 | cmp - '$T/data.bin'"
check "master 1 no longer exports h" bash -c "! timeout 10 nbdinfo '$(uri h)' >/dev/null 2>&1"
check "no request is left on the parts" bash -c "! ls '$T'/node-?/$VOLNR/.handoff 2>/dev/null | grep -q ."
sleep 2  # several polls of master 1: it does not take h back
check "master 1 leaves h to master 2 (GET on master 1: not served, lease not ours)" \
  bash -c "curl -sf '$API1/v1/volumes/h' | python3 -c 'import json,sys; j=json.load(sys.stdin); sys.exit(0 if not j[\"served\"] and (j[\"lease\"] is None or not j[\"lease\"][\"ours\"]) else 1)'"

# A client on master 2: master 1's request is refused after its timeout; the client goes on.
/usr/bin/python3 - "nbd://127.0.0.1:$PORT2/h" "$T/holder.ready" "$T/holder.stop" >"$T/holder.out" 2>&1 <<'PY' &
import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    h.pread(4096, 0)
    time.sleep(0.05)
print("client: every read worked", flush=True)
PY
HOLDER=$!
track "$HOLDER"
wait_until 20 test -e "$T/holder.ready" || fail "a client connects to master 2" "$(cat "$T/holder.out")"
code=$(curl -s -m 60 -o "$T/acq1.json" -w '%{http_code}' -X POST -d '' "$API1/v1/volumes/h/acquire?timeout_ms=3000")
if [ "$code" = 409 ] && grep -q "did not hand it over" "$T/acq1.json" && grep -q "pid $M2" "$T/acq1.json"; then
  pass "acquire on master 1 while a client uses h on master 2: 409 after the timeout, naming master 2"
else
  fail "acquire refused while in use" "HTTP $code: $(head -c 300 "$T/acq1.json")"
fi
wait_for_line "$T/m2.log" "volume h: qbd-master on host .* asks for it, but 1 client\(s\) use it here" 10 &&
  pass "master 2 logged why it kept h" || fail "master 2 logs the refusal" "$(tail -n 3 "$T/m2.log")"
touch "$T/holder.stop"
if wait_pid "$HOLDER" 20 && [ "$WAIT_RC" = 0 ] && grep -q "every read worked" "$T/holder.out"; then
  pass "the client on master 2 read on undisturbed"
else
  fail "the client read on" "exit ${WAIT_RC:-none}: $(cat "$T/holder.out")"
fi
# Without the client, master 1 gets it back.
code=$(curl -s -m 60 -o "$T/acq2.json" -w '%{http_code}' -X POST -d '' "$API1/v1/volumes/h/acquire?timeout_ms=20000")
[ "$code" = 200 ] && pass "acquire on master 1 once the client left: 200" || fail "acquire back" "HTTP $code: $(head -c 300 "$T/acq2.json")"
check "master 1 serves h again, with master 1's data" bash -c "nbdcopy '$(uri h)' - | head -c 2097152 | cmp - '$T/data.bin'"
kill -TERM "$M2"
wait_pid "$M2" 20 && [ "$WAIT_RC" = 0 ] && pass "master 2 stops cleanly" || fail "master 2 stops" "exit ${WAIT_RC:-timeout}"
qbd_stop
check "deep verify is clean" verify --deep h
