#!/usr/bin/env bash
# Per-volume QoS (README.md "QoS") on the real daemon: a volume created through the REST API with
# max_iops N measures at most N x 1.5 under fio (4 KiB random writes, 16 in flight, a few seconds)
# and its throttled time shows in GET /metrics; a bad qos is 400 and changes nothing; a PATCH
# raising the limit applies to the running volume at once (its throttled time stops growing); a
# volume without QoS is never throttled; with a reservation set, two volumes at 16 requests in
# flight each (against qos_slots = 4) are both served. No check depends on the machine's speed beyond
# "at most the limit x 1.5".
. "$(dirname "$0")/lib.sh"

N=200  # the limit, requests a second
API_PORT=$(free_port)
qbd_conf 3 "api_listen = 127.0.0.1:$API_PORT" "volume_poll_ms = 200" "qos_slots = 4"
qbd_start
API="http://127.0.0.1:$API_PORT"

# api METHOD PATH [BODY]: one request; sets CODE (HTTP status), the reply in $T/api.json.
api() {
  local args=()
  [ $# -ge 3 ] && args=(-H 'Content-Type: application/json' --data-binary "$3")
  CODE=$(curl -s -m 60 -o "$T/api.json" -w '%{http_code}' -X "$1" "${args[@]}" "$API$2")
}

# expect NAME CODE METHOD PATH [BODY]
expect() {
  local name=$1 want=$2
  shift 2
  api "$@"
  if [ "$CODE" = "$want" ]; then pass "$name"; else fail "$name" "HTTP $CODE (want $want): $(head -c 400 "$T/api.json")"; fi
}

# check_json NAME PYTHON_EXPR: the last reply's JSON `j` satisfies the expression.
check_json() {
  if python3 -c "import json, sys; j = json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$T/api.json" 2>/dev/null; then
    pass "$1"
  else
    fail "$1" "$(head -c 600 "$T/api.json")"
  fi
}

# throttled VOLUME: prints qbd_volume_qos_throttled_seconds_total of VOLUME from GET /metrics.
throttled() {
  curl -s -m 30 "$API/metrics" >"$T/metrics.txt" || return 1
  python3 - "$T/metrics.txt" "$1" <<'EOF'
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in f.samples:
        if s.name == "qbd_volume_qos_throttled_seconds_total" and s.labels.get("volume") == sys.argv[2]:
            print(s.value)
            sys.exit(0)
sys.exit(1)
EOF
}

# run_fio VOLUME SECONDS OUT: 4 KiB random writes at iodepth 16 for SECONDS; prints the write IOPS.
run_fio() {
  fio --output-format=json --output="$3.raw" --name=qos --ioengine=nbd --uri="$(uri "$1")" \
    --rw=randwrite --bs=4k --iodepth=16 --size=32m --time_based --runtime="$2" >/dev/null 2>&1 ||
    { show "$3.raw" 40; return 1; }
  python3 - "$3.raw" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
if job["error"] != 0:
    sys.exit(1)
print(f'{job["write"]["iops"]:.1f}')
EOF
}

# ge A B / lt A B: float comparisons.
ge() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)" "$1" "$2"; }
gt() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$1" "$2"; }
minus() { python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 3))" "$1" "$2"; }

# ---- a volume limited to N IOPS
expect "POST /v1/volumes with qos {max_iops: $N} is 201" 201 POST /v1/volumes \
  "{\"name\": \"q\", \"size\": \"64M\", \"qos\": {\"max_iops\": $N}}"
check_json "GET shows the qos as given" "j['qos'] == {'max_iops': $N}"
expect "POST /v1/volumes without qos is 201" 201 POST /v1/volumes '{"name": "free", "size": "64M"}'

t0=$(throttled q) || die metrics "no qbd_volume_qos_throttled_seconds_total for volume q in GET /metrics"
if iops=$(run_fio q 4 "$T/limited.json"); then
  if gt "$iops" 0 && ! gt "$iops" "$((N * 3 / 2))"; then
    pass "fio measures 0 < $iops IOPS <= $N x 1.5 on a volume limited to $N"
  else
    fail "fio measures at most $N x 1.5 IOPS" "measured $iops"
  fi
else
  fail "fio on the limited volume" "fio failed"
fi
t1=$(throttled q)
d1=$(minus "$t1" "$t0")
if gt "$d1" 0; then
  pass "qbd_volume_qos_throttled_seconds_total of q grew during the limited run (+$d1 s)"
else
  fail "throttled time grows" "before $t0, after $t1"
fi

# ---- bad settings are 400 and change nothing
expect "a qos with an unknown key is 400" 400 PATCH /v1/volumes/q '{"qos": {"max_iops": 100, "note": "x"}}'
expect "a qos with a negative value is 400" 400 PATCH /v1/volumes/q '{"qos": {"max_iops": -5}}'
expect "a burst below its limit is 400" 400 PATCH /v1/volumes/q '{"qos": {"max_iops": 100, "burst_iops": 50}}'
expect "POST with a bad qos is 400" 400 POST /v1/volumes '{"name": "bad", "size": "64M", "qos": {"iops": 5}}'
expect "GET q after the bad requests" 200 GET /v1/volumes/q
check_json "q's qos is unchanged after the bad requests" "j['qos'] == {'max_iops': $N}"
expect "no volume 'bad' was created" 404 GET /v1/volumes/bad

# ---- raising the limit applies at once
expect "PATCH qos {max_iops: 1000000, max_bps: \"10G\"} is 200" 200 PATCH /v1/volumes/q \
  '{"qos": {"max_iops": 1000000, "max_bps": "10G"}}'
check_json "PATCH answers with the new qos" "j['qos'] == {'max_iops': 1000000, 'max_bps': '10G'}"
# The PATCH applies it before answering; give a poll interval for good measure.
sleep 0.3
t2=$(throttled q)
if iops2=$(run_fio q 4 "$T/raised.json"); then
  pass "fio on the raised limit ran ($iops2 IOPS, was $iops at max_iops $N)"
else
  fail "fio on the raised limit" "fio failed"
fi
t3=$(throttled q)
d2=$(minus "$t3" "$t2")
# With 16 requests in flight, the limited run waited about 16 s a second; at 1000000 IOPS nothing
# on this machine waits more than a fraction of that.
if ! ge "$d2" "$(python3 -c "print($d1 / 4)")"; then
  pass "throttled time grew far less after the limit was raised (+$d2 s against +$d1 s)"
else
  fail "the raised limit applies at once" "throttled +$d2 s after the PATCH, +$d1 s before"
fi
expect "PATCH qos null removes it" 200 PATCH /v1/volumes/q '{"qos": null}'
check_json "GET shows qos null" "j['qos'] is None"

# ---- a volume without QoS is never throttled
if run_fio free 2 "$T/free.json" >/dev/null; then
  tf=$(throttled free)
  if [ "$tf" = "0.0" ]; then pass "a volume without qos has 0 throttled seconds"; else fail "no qos, no throttling" "$tf"; fi
else
  fail "fio on the volume without qos" "fio failed"
fi

# ---- reservations: with one set, the scheduler decides who goes when 4 requests are in flight
expect "PATCH qos {min_iops: 50} on q is 200" 200 PATCH /v1/volumes/q '{"qos": {"min_iops": 50}}'
run_fio q 3 "$T/reserved.json" >"$T/reserved.iops" &
fio_q=$!
track "$fio_q"
iops_free=$(run_fio free 3 "$T/shared.json") || iops_free=fail
wait_pid "$fio_q" 60 && [ "$WAIT_RC" = 0 ] && iops_q=$(cat "$T/reserved.iops") || iops_q=fail
if [ "$iops_q" != fail ] && [ "$iops_free" != fail ] && gt "$iops_q" 0 && gt "$iops_free" 0; then
  pass "two saturating volumes, one with a reservation, are both served ($iops_q and $iops_free IOPS)"
else
  fail "two saturating volumes are both served" "q: $iops_q, free: $iops_free"
fi
# 32 requests in flight against 4 slots: some waited for one, counted as throttled time.
tf2=$(throttled free)
if gt "$tf2" 0; then
  pass "requests waited for scheduler slots (throttled seconds of 'free': $tf2)"
else
  fail "requests wait for scheduler slots" "throttled seconds of 'free': $tf2"
fi
qbd_stop
