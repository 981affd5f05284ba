#!/usr/bin/env bash
# The metrics registry on the real daemon: GET /metrics of the REST API returns the Prometheus
# text format, which python3-prometheus-client's parser reads; every series of qbd/metrics.h is
# there with its labels, and the volume's, parts' and daemon's series move as I/O happens, as a
# connection is open, and as a part's directory is moved away and back.
. "$(dirname "$0")/lib.sh"

qbd_conf 3 "cache_size = 64M"
qbdctl create m --size 64M --replicas 3 --chunk-size 1M >/dev/null || die setup "qbdctl create failed"
qbd_start

# The helpers below go into a file, so that the checks (run by `bash -c`) source them.
cat >"$T/metrics.sh" <<'SH'
T=$(dirname "${BASH_SOURCE[0]}")
API=$(sed -n 's/^api_listen *= *//p' "$T/qbd.conf" | tail -n 1)
# scrape FILE: GET /metrics into FILE.
scrape() {
  curl -sS --max-time 10 "http://$API/metrics" >"$1"
}

# metric FILE NAME [LABEL=VALUE...]: the value of the sample NAME with those labels (a sample
# with more labels matches too; their values are summed), parsed by prometheus_client; exit 1
# when no sample matches or the file does not parse.
metric() {
  /usr/bin/python3 - "$@" <<'PY'
import sys
from prometheus_client.parser import text_string_to_metric_families
path, name, *want = sys.argv[1:]
want = dict(w.split("=", 1) for w in want)
total, found = 0.0, False
for fam in text_string_to_metric_families(open(path).read()):
    for s in fam.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in want.items()):
            total += s.value
            found = True
if not found:
    sys.exit(1)
print(int(total) if total == int(total) else total)
PY
}

# gt FILE NAME VALUE [LABEL=VALUE...]: the sample is greater than VALUE.
gt() {
  local f=$1 n=$2 v=$3 got
  shift 3
  got=$(metric "$f" "$n" "$@") || return 1
  /usr/bin/python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$got" "$v"
}

# eq FILE NAME VALUE [LABEL=VALUE...]
eq() {
  local f=$1 n=$2 v=$3 got
  shift 3
  got=$(metric "$f" "$n" "$@") || return 1
  [ "$got" = "$v" ]
}

SH
. "$T/metrics.sh"
M=". '$T/metrics.sh'"

scrape "$T/m0.txt"
if /usr/bin/python3 -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
print(len(list(text_string_to_metric_families(open(sys.argv[1]).read()))))' "$T/m0.txt" >"$T/families" 2>&1; then
  pass "GET /metrics returns text that prometheus_client parses ($(cat "$T/families") families)"
else
  fail "GET /metrics returns text that prometheus_client parses" "$(head -c 300 "$T/families")"
  show "$T/m0.txt"
fi
missing=""
for s in "qbd_volume_requests_total op=read" "qbd_volume_requests_total op=write" \
  "qbd_volume_requests_total op=flush" "qbd_volume_requests_total op=trim" "qbd_volume_requests_total op=zero" \
  "qbd_volume_request_bytes_total op=write" "qbd_volume_request_errors_total op=read" \
  "qbd_volume_request_duration_seconds_count op=write" "qbd_volume_request_duration_seconds_bucket op=read le=+Inf" \
  qbd_volume_cache_hits_total qbd_volume_cache_misses_total qbd_volume_ssd_cache_hits_total \
  qbd_volume_ssd_cache_misses_total qbd_volume_qos_throttled_seconds_total qbd_volume_read_repairs_total \
  qbd_volume_lease_held; do
  set -- $s
  metric "$T/m0.txt" "$1" volume=m "${@:2}" >/dev/null || missing+=" $s"
done
for p in a b c; do
  for s in "qbd_part_state state=up" "qbd_part_state state=down" "qbd_part_state state=resyncing" \
    "qbd_part_state state=full" qbd_part_state_code qbd_part_dirty_bytes qbd_part_resync_bytes_total \
    qbd_part_errors_total qbd_part_checksum_failures_total qbd_part_read_repairs_total \
    "qbd_part_io_duration_seconds_count op=read" "qbd_part_io_duration_seconds_count op=write"; do
    set -- $s
    metric "$T/m0.txt" "$1" volume=m part=$p "${@:2}" >/dev/null || missing+=" $s{part=$p}"
  done
done
for s in qbd_nbd_connections qbd_nbd_memory_used_bytes qbd_nbd_memory_limit_bytes; do
  metric "$T/m0.txt" $s >/dev/null || missing+=" $s"
done
[ -z "$missing" ] && pass "every volume, part and daemon series is there with its labels" ||
  fail "every volume, part and daemon series is there with its labels" "missing:$missing"
# The Grafana dashboard queries only series that exist (histograms by their _bucket samples).
dash="$(dirname "$0")/../../contrib/grafana/qbd-dashboard.json"
check "contrib/grafana/qbd-dashboard.json is JSON whose queries name only series in the text" \
  /usr/bin/python3 - "$dash" "$T/m0.txt" <<'PY'
import json, re, sys
from prometheus_client.parser import text_string_to_metric_families
d = json.load(open(sys.argv[1]))
have = {s.name for f in text_string_to_metric_families(open(sys.argv[2]).read()) for s in f.samples}
used = set()
def walk(ps):
    for p in ps:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            used.update(re.findall(r"qbd_[a-z_]+", t["expr"]))
walk(d["panels"])
missing = sorted(used - have)
print("used:", len(used), "missing:", missing)
sys.exit(1 if missing or not used else 0)
PY
check "at the start: no writes, every part up, the lease held, the NBD budget known" bash -c "
  $M; eq '$T/m0.txt' qbd_volume_requests_total 0 volume=m op=write &&
  eq '$T/m0.txt' qbd_part_state 3 volume=m state=up && eq '$T/m0.txt' qbd_part_state_code 0 volume=m &&
  eq '$T/m0.txt' qbd_volume_lease_held 1 volume=m && gt '$T/m0.txt' qbd_nbd_memory_limit_bytes 0 &&
  eq '$T/m0.txt' qbd_volume_qos_throttled_seconds_total 0 volume=m"

head -c 8M /dev/urandom >"$T/in.bin"
check "nbdcopy 8 MiB in" nbdcopy --flush "$T/in.bin" "$(uri m)"
scrape "$T/m1.txt"
check "writes: counted, 8 MiB of bytes, timed, flushed; every part wrote" bash -c "
  $M; gt '$T/m1.txt' qbd_volume_requests_total 0 volume=m op=write &&
  eq '$T/m1.txt' qbd_volume_request_bytes_total 8388608 volume=m op=write &&
  gt '$T/m1.txt' qbd_volume_request_duration_seconds_count 0 volume=m op=write &&
  gt '$T/m1.txt' qbd_volume_requests_total 0 volume=m op=flush &&
  eq '$T/m1.txt' qbd_volume_request_errors_total 0 volume=m op=write &&
  gt '$T/m1.txt' qbd_part_io_duration_seconds_count 0 volume=m part=a op=write &&
  gt '$T/m1.txt' qbd_part_io_duration_seconds_count 0 volume=m part=b op=write &&
  gt '$T/m1.txt' qbd_part_io_duration_seconds_count 0 volume=m part=c op=write"
reads0=$(metric "$T/m1.txt" qbd_volume_requests_total volume=m op=read)

check "nbdcopy 8 MiB out, the data as written" bash -c 'nbdcopy "$1" - | head -c 8388608 | cmp - "$2"' _ "$(uri m)" "$T/in.bin"
nbdsh -u "$(uri m)" -c '
for r in range(2):
    for i in range(16):
        h.pread(4096, i * 4096)
' >"$T/nbdsh.out" 2>&1 || fail "nbdsh small reads" "$(cat "$T/nbdsh.out")"
scrape "$T/m2.txt"
check "reads: counted, their bytes, memory cache misses then hits, parts read" bash -c "
  $M; gt '$T/m2.txt' qbd_volume_requests_total $reads0 volume=m op=read &&
  gt '$T/m2.txt' qbd_volume_request_bytes_total 8388607 volume=m op=read &&
  gt '$T/m2.txt' qbd_volume_cache_misses_total 0 volume=m &&
  gt '$T/m2.txt' qbd_volume_cache_hits_total 15 volume=m &&
  gt '$T/m2.txt' qbd_part_io_duration_seconds_count 0 volume=m op=read"

# A connection held open shows in qbd_nbd_connections.
nbdsh -u "$(uri m)" -c 'import time; time.sleep(30)' >/dev/null 2>&1 &
holder=$!
track $holder
check "an open NBD connection is counted" wait_until 20 bash -c "
  $M; scrape '$T/m3.txt'; gt '$T/m3.txt' qbd_nbd_connections 0"
kill $holder 2>/dev/null
wait $holder 2>/dev/null
untrack $holder

# Part b's directory moved away: a write to a chunk not written yet cannot create its file there.
mv "$T/node-b" "$T/node-b.away"
nbdsh -u "$(uri m)" -c 'h.pwrite(b"\x5a" * 65536, 40 << 20); h.flush()' >"$T/nbdsh.out" 2>&1 ||
  fail "a write with part b's directory away" "$(cat "$T/nbdsh.out")"
scrape "$T/m4.txt"
check "part b away: its state gauge says down, its errors and dirty bytes grew; a and c stay up" bash -c "
  $M; eq '$T/m4.txt' qbd_part_state 1 volume=m part=b state=down &&
  eq '$T/m4.txt' qbd_part_state 0 volume=m part=b state=up &&
  eq '$T/m4.txt' qbd_part_state_code 2 volume=m part=b &&
  gt '$T/m4.txt' qbd_part_errors_total 0 volume=m part=b &&
  gt '$T/m4.txt' qbd_part_dirty_bytes 0 volume=m part=b &&
  eq '$T/m4.txt' qbd_part_state 1 volume=m part=a state=up &&
  eq '$T/m4.txt' qbd_part_state 1 volume=m part=c state=up"
# While it was away, the daemon may have recreated a bare node-b (its metadata copies): the moved
# directory replaces it.
if [ -e "$T/node-b" ]; then
  find "$T/node-b" | sed "s|$T/||" >"$T/recreated"
  rm -rf "$T/node-b"
fi
mv "$T/node-b.away" "$T/node-b"
check "part b back: resync copies its regions, counts the bytes and it is up again with nothing dirty" \
  wait_until 60 bash -c "
  $M; scrape '$T/m5.txt';
  eq '$T/m5.txt' qbd_part_state 1 volume=m part=b state=up && eq '$T/m5.txt' qbd_part_dirty_bytes 0 volume=m part=b &&
  gt '$T/m5.txt' qbd_part_resync_bytes_total 0 volume=m part=b" || {
  grep -E '^qbd_part_(state|dirty|resync).*part="b"' "$T/m5.txt" | show /dev/stdin
  grep -E 'part b' "$T/master.log" | show /dev/stdin
}

qbd_stop
check "qbd-master's close line per volume is read from the series" \
  grep -qE "volume m: closed: reads [1-9][0-9]* \([0-9.]+ [KMG]?i?B, 0 errors" "$T/master.log"
