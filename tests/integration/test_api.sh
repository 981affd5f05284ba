#!/usr/bin/env bash
# The REST API (README.md "REST API") with curl against the real qbd-master: every endpoint, bad
# input, unknown volumes, a volume created through the API and used at once over NBD, one deleted
# while a client is connected (409, then forced), health turning degraded when a part's directory
# goes away and ok when it is back, and the bearer token on a non-loopback address.
. "$(dirname "$0")/lib.sh"

API_PORT=$(free_port)
qbd_conf 3 "api_listen = 127.0.0.1:$API_PORT" "volume_poll_ms = 200"
qbd_start
API="http://127.0.0.1:$API_PORT"
AUTH=()

# api METHOD PATH [BODY]: one request; sets CODE (HTTP status) and leaves the reply in $T/api.json.
api() {
  local args=()
  [ $# -ge 3 ] && args=(-H 'Content-Type: application/json' --data-binary "$3")
  [ $# -lt 3 ] && [ "$1" != GET ] && args=(-d '')
  CODE=$(curl -s -m 60 -o "$T/api.json" -w '%{http_code}' -X "$1" "${AUTH[@]}" "${args[@]}" "$API$2")
}

# expect NAME CODE METHOD PATH [BODY]: the request answers CODE, with a JSON body ({"error": ...}
# for an error).
expect() {
  local name=$1 want=$2
  shift 2
  api "$@"
  if [ "$CODE" != "$want" ]; then
    fail "$name" "HTTP $CODE (want $want): $(head -c 400 "$T/api.json")"
  elif [ "$want" -ge 400 ] && ! json_ok "isinstance(j.get('error'), str) and j['error']"; then
    fail "$name" "HTTP $CODE without a JSON error: $(head -c 400 "$T/api.json")"
  else
    pass "$name"
  fi
}

json_ok() { # PYTHON_EXPR on j, the last reply's JSON
  python3 -c "import json, sys; j = json.load(open(sys.argv[1])); sys.exit(0 if ($1) else 1)" "$T/api.json" 2>/dev/null
}

# check_json NAME PYTHON_EXPR: the last reply satisfies the expression.
check_json() {
  if json_ok "$2"; then pass "$1"; else fail "$1" "$(head -c 600 "$T/api.json")"; fi
}

# api_is METHOD PATH PYTHON_EXPR: for wait_until.
api_is() {
  api "$1" "$2" && [ "$CODE" = 200 ] && json_ok "$3"
}

# ---- listing, creating, serving at once
expect "GET /v1/volumes answers 200" 200 GET /v1/volumes
check_json "an empty configuration lists no volume" "j == {'volumes': []}"
expect "POST /v1/volumes creates v1" 201 POST /v1/volumes \
  '{"name": "v1", "size": "64M", "replicas": 3, "block_size": 4096, "chunk_size": "4M", "qos": {"max_iops": 500, "max_write_bps": "100M"}}'
check_json "the created volume is served and ready" \
  "j['name'] == 'v1' and j['size'] == 64 << 20 and j['served'] and j['state'] == 'ready' and j['policy']['replicas'] == 3"
check_json "the qos object is stored as given" "j['qos'] == {'max_iops': 500, 'max_write_bps': '100M'}"
if out=$(timeout 10 nbdinfo --size "$(uri v1)" 2>&1) && [ "$out" = $((64 << 20)) ]; then
  pass "v1 is exported at once (nbdinfo sees 64 MiB)"
else
  fail "v1 is exported at once" "nbdinfo: $out"
fi
if timeout 30 nbdsh -u "$(uri v1)" -c 'h.pwrite(b"\x5a" * 65536, 1 << 20); h.flush(); assert h.pread(65536, 1 << 20) == b"\x5a" * 65536' >"$T/nbdsh.out" 2>&1; then
  pass "v1 created through the API is writable and reads back"
else
  fail "v1 is writable" "$(cat "$T/nbdsh.out")"
fi
expect "GET /v1/volumes/v1 answers 200" 200 GET /v1/volumes/v1
check_json "GET shows policy, parts with state and dirty bytes, resync, lease holder" \
  "[p['part'] for p in j['parts']] == ['a', 'b', 'c'] and all(p['state'] == 'up' and p['dirty_bytes'] == 0 for p in j['parts']) and 'dirty_bytes' in j['resync'] and 'holder' in j['lease'] and j['lease']['ours'] and j['policy']['write_quorum'] == 2"
expect "GET /v1/volumes lists v1" 200 GET /v1/volumes
check_json "the list holds v1 with its state" "[v['name'] for v in j['volumes']] == ['v1'] and j['volumes'][0]['state'] == 'ready'"
qbdctl info v1 >"$T/info.out" 2>&1
if grep -q "^name: *v1" "$T/info.out" && grep -q "^state: *ready" "$T/info.out" && grep -q "^served: *yes, 0 connection" "$T/info.out" &&
  grep -q "^lease: .*pid $MASTER_PID" "$T/info.out"; then
  pass "qbdctl info sees the volume created through the API, served by the running daemon"
else
  fail "qbdctl sees v1" "$(cat "$T/info.out")"
fi

# ---- bad input
expect "a name with a space is 400" 400 POST /v1/volumes '{"name": "bad name", "size": "1G"}'
expect "a name starting with a dot is 400" 400 POST /v1/volumes '{"name": ".x", "size": "1G"}'
expect "a size '12Q' is 400" 400 POST /v1/volumes '{"name": "x", "size": "12Q"}'
expect "a negative size is 400" 400 POST /v1/volumes '{"name": "x", "size": -1}'
expect "a size of 0 is 400" 400 POST /v1/volumes '{"name": "x", "size": 0}'
expect "a size that is not a block multiple is 400" 400 POST /v1/volumes '{"name": "x", "size": 1000}'
expect "a missing size is 400" 400 POST /v1/volumes '{"name": "x"}'
expect "a body that is not JSON is 400" 400 POST /v1/volumes '{"name": "x", '
expect "a JSON array body is 400" 400 POST /v1/volumes '["x"]'
expect "an unknown field is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "replica": 2}'
expect "more replicas than parts is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "replicas": 4}'
expect "erasure coding (not supported yet) is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "ec": {"k": 2, "m": 1}}'
expect "a chunk size that is not a power of two is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "chunk_size": "3M"}'
expect "read_only as a string is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "read_only": "yes"}'
expect "qos that is not an object is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "qos": 5}'
expect "qos with an unknown key is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "qos": {"max_iops": 500, "note": "a#b"}}'
expect "qos with a negative value is 400" 400 POST /v1/volumes '{"name": "x", "size": "1G", "qos": {"max_iops": -1}}'
expect "creating v1 again is 409" 409 POST /v1/volumes '{"name": "v1", "size": "64M"}'
expect "an unknown path is 404" 404 GET /v1/nothing
expect "PUT /v1/volumes is 405" 405 PUT /v1/volumes '{}'
expect "GET /metrics answers 200" 200 GET /metrics
metrics_parse() {
  python3 - "$T/api.json" <<'EOF'
import sys
from prometheus_client.parser import text_string_to_metric_families
names = {f.name for f in text_string_to_metric_families(open(sys.argv[1]).read())}
# The parser names counters without their _total suffix.
sys.exit(0 if {"qbd_volume_requests", "qbd_part_state", "qbd_nbd_connections"} <= names else 1)
EOF
}
check "GET /metrics is Prometheus text with the volume, part and daemon series" metrics_parse
api GET /v1/volumes
if [ "$CODE" = 200 ] && json_ok "[v['name'] for v in j['volumes']] == ['v1']"; then
  pass "no bad request created a volume"
else
  fail "no bad request created a volume" "$(cat "$T/api.json")"
fi

# ---- unknown volumes
expect "GET an unknown volume is 404" 404 GET /v1/volumes/nope
expect "PATCH an unknown volume is 404" 404 PATCH /v1/volumes/nope '{"read_only": true}'
expect "DELETE an unknown volume is 404" 404 DELETE /v1/volumes/nope
expect "repair of an unknown volume is 404" 404 POST /v1/volumes/nope/repair
expect "a malformed volume name in the path is 400" 400 GET /v1/volumes/.bad

# ---- PATCH
expect "PATCH grows v1 to 128M" 200 PATCH /v1/volumes/v1 '{"size": "128M"}'
check_json "the reply has the new size" "j['size'] == 128 << 20"
if out=$(timeout 10 nbdinfo --size "$(uri v1)" 2>&1) && [ "$out" = $((128 << 20)) ]; then
  pass "a new connection sees the grown size at once"
else
  fail "the grown size is served" "nbdinfo: $out"
fi
expect "PATCH shrinking is 400" 400 PATCH /v1/volumes/v1 '{"size": "64M"}'
expect "PATCH with nothing to change is 400" 400 PATCH /v1/volumes/v1 '{}'
expect "PATCH with an unknown field is 400" 400 PATCH /v1/volumes/v1 '{"grow": "1G"}'
expect "PATCH sets read_only" 200 PATCH /v1/volumes/v1 '{"read_only": true}'
check_json "the reply says read_only" "j['policy']['read_only'] is True"
if timeout 10 nbdinfo --json "$(uri v1)" 2>&1 | grep -q '"is_read_only": true'; then
  pass "new connections get a read-only export"
else
  fail "new connections get a read-only export" "$(timeout 10 nbdinfo "$(uri v1)" 2>&1 | head -20)"
fi
expect "PATCH clears read_only and sets append_only" 200 PATCH /v1/volumes/v1 '{"read_only": false, "append_only": true}'
check_json "the reply has both flags" "j['policy']['read_only'] is False and j['policy']['append_only'] is True"
if grep -q "^append_only = true" "$T/node-a/1/.meta" && grep -q "^read_only = false" "$T/node-c/1/.meta"; then
  pass "the flags are in every part's .meta (the same file qbdctl set writes)"
else
  fail "the flags are in .meta" "$(cat "$T/node-a/1/.meta")"
fi
expect "PATCH clears append_only" 200 PATCH /v1/volumes/v1 '{"append_only": false}'

# ---- health
expect "GET /v1/health answers 200" 200 GET /v1/health
check_json "health is ok with no problem" \
  "j['status'] == 'ok' and j['volumes'][0]['name'] == 'v1' and j['volumes'][0]['status'] == 'ok' and j['volumes'][0]['problems'] == []"
mv "$T/node-b/1/b" "$T/b.moved"
if wait_until 30 api_is GET /v1/health "j['status'] == 'degraded' and j['volumes'][0]['status'] == 'degraded'"; then
  pass "health turns degraded when part b's directory is moved away"
else
  fail "health turns degraded" "$(cat "$T/api.json")"
fi
check_json "the problem names the part, the backend, since when and what to do" \
  "any(p['part'] == 'b' and '$T/node-b' in p['backend'] and p['since'].endswith('Z') and p['action'] and p['what'] for p in j['volumes'][0]['problems'])"
api GET /v1/volumes/v1
check_json "meanwhile the volume's lifecycle state is degraded" "j['state'] == 'degraded'"
mv "$T/b.moved" "$T/node-b/1/b"
if wait_until 60 api_is GET /v1/health "j['status'] == 'ok'"; then
  pass "health is ok again once the directory is back"
else
  fail "health is ok again" "$(cat "$T/api.json")"
fi

# ---- repair
expect "POST repair starts an online repair" 202 POST /v1/volumes/v1/repair
check_json "the reply carries the repair's progress" "j['repair'] is not None and j['repair']['chunks_total'] == 32"
if wait_until 60 api_is GET /v1/volumes/v1 "not j['repair']['running'] and j['repair']['chunks_done'] == 32"; then
  pass "the repair runs through every chunk; its progress is in the volume's state"
else
  fail "the repair finishes" "$(cat "$T/api.json")"
fi
check_json "the repair found nothing to do on a healthy volume" \
  "j['repair']['failed_chunks'] == 0 and j['repair']['lost_blocks'] == 0 and j['state'] == 'ready'"

# ---- the tools' endpoints, and who may change things without a token
expect "GET /v1/daemon answers" 200 GET /v1/daemon
check_json "it names this daemon's pid and configuration file" "j['pid'] == $MASTER_PID and j['config'] == '$T/qbd.conf'"
expect "GET /v1/backends answers" 200 GET /v1/backends
check_json "every backend is reachable and writable" \
  "j['ok'] is True and len(j['backends']) == 3 and all(b['writable'] for b in j['backends'])"
expect "GET /v1/volumes/v1/blocks/4K answers" 200 GET /v1/volumes/v1/blocks/4K
check_json "it describes block 1 on every part" "j['block'] == 1 and len(j['parts']) == 3"
expect "a chunk repair of v1 runs through the API" 200 POST /v1/volumes/v1/chunks/0/repair '{"dry_run": true}'
check_json "its report is clean" "j['chunk'] == 1 and j['actions'] == [] and j['lost'] == ''"
expect "a chunk past the volume's end is 400" 400 POST /v1/volumes/v1/chunks/99999/repair
expect "a chunk repair of an unknown volume is 404" 404 POST /v1/volumes/nope/chunks/0/repair
# Another local user (nobody): may read, may not change. (It cannot write into $T: its replies
# come back on stdout, the status on the last line.)
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -m 20 -w '\n%{http_code}' "$@"; }
reply=$(as_nobody -X POST -H 'Content-Type: application/json' --data-binary '{"name": "x", "size": "1M"}' "$API/v1/volumes")
if [ "$(tail -n 1 <<<"$reply")" = 403 ] && grep -q "uid 65534" <<<"$reply"; then
  pass "another local user's POST is 403, naming its uid"
else
  fail "another local user's POST is 403" "$reply"
fi
reply=$(as_nobody -X DELETE "$API/v1/volumes/v1?force=1")
if [ "$(tail -n 1 <<<"$reply")" = 403 ]; then pass "another local user's DELETE is 403"; else fail "another user's DELETE is 403" "$reply"; fi
expect "v1 is untouched by it" 200 GET /v1/volumes/v1
reply=$(as_nobody "$API/v1/volumes/v1")
if [ "$(tail -n 1 <<<"$reply")" = 200 ]; then pass "another local user may GET"; else fail "another local user may GET" "$reply"; fi
expect "no volume x was made" 404 GET /v1/volumes/x

# ---- delete while connected
/usr/bin/python3 - "$(uri v1)" "$T/holder.ready" >"$T/holder.out" 2>&1 <<'EOF' &
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
open(sys.argv[2], "w").close()
while True:  # a read every 100 ms, until the server ends the connection
    try:
        h.pread(4096, 0)
    except nbd.Error as e:
        print("client: the read failed:", e, flush=True)
        sys.exit(3)
    time.sleep(0.1)
EOF
HOLDER=$!
track "$HOLDER"
wait_until 20 test -e "$T/holder.ready" || fail "an NBD client connects to v1" "$(cat "$T/holder.out")"
if wait_until 20 api_is GET /v1/volumes/v1 "j['state'] == 'in use' and j['connections'] >= 1"; then
  pass "a connected client makes v1 'in use'"
else
  fail "v1 is in use" "$(cat "$T/api.json")"
fi
expect "DELETE while a client is connected is 409" 409 DELETE /v1/volumes/v1
expect "v1 is still there after the refused DELETE" 200 GET /v1/volumes/v1
expect "DELETE ?force=1 deletes it anyway" 200 DELETE "/v1/volumes/v1?force=1"
expect "the deleted volume is 404" 404 GET /v1/volumes/v1
if [ ! -e "$T/node-a/1" ] && [ ! -e "$T/node-b/1" ] && [ ! -e "$T/node-c/1" ]; then
  pass "its files are gone from every part"
else
  fail "its files are gone" "$(ls -la "$T"/node-*/1 2>&1 | head)"
fi
if timeout 10 nbdinfo "$(uri v1)" >/dev/null 2>&1; then
  fail "the deleted volume is unexported" "nbdinfo still opens it"
else
  pass "the deleted volume is unexported"
fi
if wait_pid "$HOLDER" 20 && [ "$WAIT_RC" = 3 ] && grep -q "the read failed" "$T/holder.out"; then
  pass "the forced delete closed the connected client's connection (its next read failed)"
else
  fail "the forced delete disconnects the client" "exit ${WAIT_RC:-none}: $(cat "$T/holder.out")"
  kill "$HOLDER" 2>/dev/null
fi
curl -sS "$API/metrics" >"$T/after-delete.prom"
if grep -q 'volume="v1"' "$T/after-delete.prom"; then
  fail "the deleted volume's series leave GET /metrics" "$(grep -m3 'volume="v1"' "$T/after-delete.prom")"
else
  pass "the deleted volume's series leave GET /metrics"
fi
expect "a volume without clients is deleted without force" 201 POST /v1/volumes '{"name": "v2", "size": "8M", "replicas": 2, "read_only": true}'
check_json "v2 has 2 replicas and is read-only" "j['policy']['replicas'] == 2 and j['policy']['read_only'] is True"
expect "DELETE v2 answers 200" 200 DELETE /v1/volumes/v2
expect "v2 is gone" 404 GET /v1/volumes/v2
qbd_stop

# ---- access: a non-loopback address needs a token
sed -i "s/^api_listen = .*/api_listen = 0.0.0.0:$API_PORT/" "$T/qbd.conf"
timeout 20 "$QBD_BIN/qbd-master" --config "$T/qbd.conf" >"$T/notoken.out" 2>&1 </dev/null
rc=$?
if [ $rc = 4 ] && grep -q "qbd.conf:[0-9]*: .*api_listen 0.0.0.0:$API_PORT is not a loopback address: set api_token_file" "$T/notoken.out"; then
  pass "api_listen on every interface without api_token_file is refused (exit 4, naming the line)"
else
  fail "api_listen off loopback needs a token" "exit $rc: $(cat "$T/notoken.out")"
fi
echo "s3cret-token-$RANDOM" >"$T/api.token"
chmod 600 "$T/api.token"
{ head -n 1 "$T/qbd.conf"; echo "api_token_file = api.token"; tail -n +2 "$T/qbd.conf"; } >"$T/qbd.conf.tmp"
mv "$T/qbd.conf.tmp" "$T/qbd.conf"
qbd_start
IP=$(ip -4 -o addr show scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
API="http://${IP:-127.0.0.1}:$API_PORT"
expect "without a token the API answers 401" 401 GET /v1/volumes
AUTH=(-H "Authorization: Bearer wrong")
expect "with a wrong token the API answers 401" 401 GET /v1/health
AUTH=(-H "Authorization: Bearer $(cat "$T/api.token")")
expect "with the token the API answers 200 (at ${IP:-127.0.0.1})" 200 GET /v1/volumes
expect "with the token a volume can be created" 201 POST /v1/volumes '{"name": "v3", "size": "4M"}'
qbd_stop
qbdctl info v3 >"$T/info.out" 2>&1
if grep -q "^state: *ready$" "$T/info.out" && grep -q "^served: *no$" "$T/info.out"; then
  pass "qbdctl info gives the offline state"
else
  fail "qbdctl info gives the offline state" "$(cat "$T/info.out")"
fi
V3=$(awk '/^number:/ { print $2 }' "$T/info.out")
mv "$T/node-c/$V3/c" "$T/c.moved"
qbdctl info v3 >"$T/info.out" 2>&1
if grep -q "^state: *degraded$" "$T/info.out" && grep -q "^part c: .*missing: .*/c" "$T/info.out"; then
  pass "qbdctl info says degraded, naming the part, when a part's directory is gone"
else
  fail "qbdctl info says degraded" "$(cat "$T/info.out")"
fi
mv "$T/c.moved" "$T/node-c/$V3/c"
