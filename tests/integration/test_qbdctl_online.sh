#!/usr/bin/env bash
# qbdctl with and without a running qbd-master: the same commands give the same output either way
# (list, backends, block, info's static lines, --json documents), while the daemon runs every
# change goes through its REST API (served at once, no second writer), `qbdctl status` is one line
# per problem with exit 0/1/2 as the volume degrades and recovers, and qbd-repair repairs through
# the API.
. "$(dirname "$0")/lib.sh"

qbd_conf 3 "volume_poll_ms = 200"
qbdctl create o --size 16M --replicas 3 --chunk-size 1M >/dev/null || die setup "qbdctl create failed"
nbdcopy_in() { # VOLUME FILE: write FILE to the start of the volume through a running daemon
  nbdcopy "$2" "$(uri "$1")"
}

# ---- offline
outputs() { # DIR: every read-only command's output (text and --json) into DIR
  mkdir -p "$1"
  qbdctl list >"$1/list" 2>&1; echo "rc=$?" >>"$1/list"
  qbdctl --json list >"$1/list.json" 2>&1
  qbdctl backends >"$1/backends" 2>&1; echo "rc=$?" >>"$1/backends"
  qbdctl backends --json >"$1/backends.json" 2>&1
  qbdctl block o 1M >"$1/block" 2>&1; echo "rc=$?" >>"$1/block"
  qbdctl --json block o 1M >"$1/block.json" 2>&1
  qbdctl info o >"$1/info" 2>&1; echo "rc=$?" >>"$1/info"
  qbdctl info o --json >"$1/info.json" 2>&1
}
head -c 2M /dev/urandom >"$T/data"
qbd_start
nbdcopy_in o "$T/data" || die setup "nbdcopy failed"
qbd_stop  # settles the written blocks' slots (`block` shows a write's slots pending until then)
qbd_start
outputs "$T/on"
ON_PID=$MASTER_PID
qbd_stop
outputs "$T/off"  # after the stop: a start would begin a new epoch, which `block` shows
qbd_start
for f in list backends block block.json; do
  if cmp -s "$T/off/$f" "$T/on/$f"; then
    pass "qbdctl $f: the same output with qbd-master running as without"
  else
    fail "qbdctl $f: the same output either way" "$(diff "$T/off/$f" "$T/on/$f" | head -8)"
  fi
done
# list --json: the same but for "served".
no_served() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); [v.pop("served") for v in j["volumes"]]; print(json.dumps(j, sort_keys=True))' "$1"; }
if [ "$(no_served "$T/off/list.json")" = "$(no_served "$T/on/list.json")" ]; then
  pass "qbdctl list --json: the same document either way but for 'served'"
else
  fail "list --json the same" "$(diff "$T/off/list.json" "$T/on/list.json" | head -8)"
fi
# backends --json: the same document but for free space, which moves.
strip_free() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); [b.pop("free_bytes") for b in j["backends"]]; print(json.dumps(j, sort_keys=True))' "$1"; }
if [ "$(strip_free "$T/off/backends.json")" = "$(strip_free "$T/on/backends.json")" ]; then
  pass "qbdctl backends --json: the same document either way (free space aside)"
else
  fail "backends --json the same" "$(diff "$T/off/backends.json" "$T/on/backends.json" | head -8)"
fi
# info: what .meta says is the same; what only the daemon knows (served, lease, part states) differs.
static_info() { grep -Ev '^(served|lease|resync|repair):|^part ' "$1"; }
if [ "$(static_info "$T/off/info")" = "$(static_info "$T/on/info")" ]; then
  pass "qbdctl info: the same lines either way but for the daemon's live ones"
else
  fail "qbdctl info the same" "$(diff <(static_info "$T/off/info") <(static_info "$T/on/info") | head -8)"
fi
check "qbdctl info online says served, with the daemon's lease" \
  bash -c "grep -q '^served: *yes' '$T/on/info' && grep -q '^lease: .*pid $ON_PID' '$T/on/info' && grep -q '^part a: .* up, 0 dirty bytes' '$T/on/info'"
check "qbdctl info offline says not served" bash -c "grep -q '^served: *no' '$T/off/info' && grep -q '^part a: .* not served' '$T/off/info'"
check "--json info gives the REST API's document either way" \
  python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); sys.exit(0 if a["served"] is False and b["served"] is True and a["policy"] == b["policy"] and [p["backend"] for p in a["parts"]] == [p["backend"] for p in b["parts"]] else 1)' "$T/off/info.json" "$T/on/info.json"

# ---- changes while the daemon runs go through it
before_lines=$(grep -c "through the API" "$T/master.log")
check "qbdctl create while qbd-master runs" qbdctl create n --size 8M --replicas 2
check "the new volume is served at once" timeout 20 nbdinfo "$(uri n)"
check "qbdctl set read-only while running" qbdctl set n read-only on
check "nbdinfo sees it read-only at once" bash -c "timeout 20 nbdinfo '$(uri n)' | grep -q 'is_read_only: true'"
check "qbdctl resize while running" qbdctl resize n --size 12M
check "nbdinfo sees the new size at once" bash -c "[ \"\$(timeout 20 nbdinfo --size '$(uri n)')\" = 12582912 ]"
after_lines=$(grep -c "through the API" "$T/master.log")
if [ "$after_lines" -gt "$before_lines" ]; then
  pass "qbd-master logged the changes as its own (through the API)"
else
  fail "the changes went through the daemon" "$(tail -5 "$T/master.log")"
fi
check "qbdctl set qos while running" qbdctl set n qos '{"max_iops": 100, "max_bps": "10M"}'
check "the daemon applies it (GET /v1/volumes/n shows it)" bash -c "curl -sS 'http://$(api_address)/v1/volumes/n' | grep -q '\"max_iops\":100'"
qbdctl set n qos '{"max_iops": -1}' >"$T/qos.out" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "qos: max_iops" "$T/qos.out" && qbdctl info n | grep -q '^qos: .*"max_iops":100'; then
  pass "qbdctl set qos with a bad value exits 2, naming the key, and changes nothing"
else
  fail "bad qos refused" "exit $rc: $(cat "$T/qos.out")"
fi
check "qbdctl set qos none removes it" bash -c "'$QBD_BIN/qbdctl' --config '$T/qbd.conf' set n qos none && '$QBD_BIN/qbdctl' --config '$T/qbd.conf' info n | grep -q '^qos: *none'"
qbdctl delete nope >"$T/del.out" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "nope" "$T/del.out"; then pass "qbdctl delete of an unknown volume exits 2 online"; else fail "delete unknown" "exit $rc: $(cat "$T/del.out")"; fi
check "qbdctl delete while running" qbdctl delete n
check "the deleted volume is no longer served" bash -c "! timeout 10 nbdinfo '$(uri n)' 2>/dev/null"
qbdctl convert o >"$T/convert.out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "qbd-master is running" "$T/convert.out"; then pass "qbdctl convert refuses while the daemon runs"; else fail "convert refuses" "exit $rc: $(cat "$T/convert.out")"; fi

# ---- status: one line per problem, exit 0/1/2
qbdctl status >"$T/status.out" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "^OK: 1 volume(s), no problem (qbd-master pid $MASTER_PID)" "$T/status.out" && [ "$(wc -l <"$T/status.out")" = 1 ]; then
  pass "qbdctl status: one OK line, exit 0, on a healthy volume"
else
  fail "qbdctl status OK" "exit $rc: $(cat "$T/status.out")"
fi
V=$(qbdctl --json info o | python3 -c 'import json,sys; print(json.load(sys.stdin)["number"])')
mv "$T/node-b/$V/b" "$T/b.moved"
qbdctl status >"$T/status.out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "^DEGRADED volume o: .*part b.*\[part b, local:$T/node-b\].*since .*; do: .*qbd-repair --config" "$T/status.out" &&
  grep -q "^DEGRADED: " "$T/status.out"; then
  pass "qbdctl status: a DEGRADED line naming part b, its backend, since when and the qbd-repair command; exit 1"
else
  fail "qbdctl status degraded" "exit $rc: $(cat "$T/status.out")"
fi
cp "$T/status.out" "$T/status-degraded.example"
qbdctl --json status >"$T/status.json" 2>&1
check "qbdctl --json status is the health document (degraded, part b)" \
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); v=j["volumes"][0]; sys.exit(0 if j["status"] == "degraded" and v["status"] == "degraded" and any(p["part"] == "b" for p in v["problems"]) else 1)' "$T/status.json"
mv "$T/b.moved" "$T/node-b/$V/b"
if wait_until 30 bash -c "\"$QBD_BIN/qbdctl\" --config '$T/qbd.conf' status >/dev/null 2>&1"; then
  pass "qbdctl status returns to exit 0 once the directory is back"
else
  fail "status back to 0" "$(qbdctl status 2>&1)"
fi

# ---- qbd-repair through the API
F=$(chunk_path node-c "$V" c 0)
flip_byte "$F" 100
repair o >"$T/repair.out" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "qbd-master is running: it repairs each chunk (REST API http://" "$T/repair.out" &&
  grep -q "rebuilt" "$T/repair.out"; then
  pass "qbd-repair repairs the flipped byte through the REST API"
else
  fail "qbd-repair online" "exit $rc: $(cat "$T/repair.out")"
fi
qbd_stop
check "deep verify is clean after the online repair" verify --deep o

# ---- offline status
qbdctl status >"$T/status.out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "^DEGRADED qbd-master: qbd-master is not running" "$T/status.out" && grep -q "qbd-master not running" "$T/status.out"; then
  pass "qbdctl status without the daemon: a line saying it is not running, exit 1"
else
  fail "offline status" "exit $rc: $(cat "$T/status.out")"
fi
rm -rf "${T:?}/node-a/$V/a" "${T:?}/node-b/$V/b" "${T:?}/node-c/$V/c"
qbdctl status >"$T/status.out" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "^DATA_LOST volume o: no part of the volume is in reach" "$T/status.out"; then
  pass "qbdctl status with every part's directory gone: DATA_LOST, exit 2"
else
  fail "offline status data lost" "exit $rc: $(cat "$T/status.out")"
fi
qbdctl repair o >"$T/repair2.out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "qbd-repair --config" "$T/repair2.out"; then pass "qbdctl repair offline points to qbd-repair"; else fail "qbdctl repair offline" "exit $rc: $(cat "$T/repair2.out")"; fi
