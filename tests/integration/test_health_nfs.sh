#!/usr/bin/env bash
# The health view with NFS parts: GET /v1/health and `qbdctl status` turn degraded (exit 1), naming
# the part and its nfs:// backend, when one nfs-ganesha server stops, and back to ok (exit 0)
# once it is restarted and the part is in sync again; writes meanwhile go on.
. "$(dirname "$0")/lib.sh"
. "$IT_DIR/ganesha.sh"

ganesha_start n1
ganesha_start n2
ganesha_start n3
qbd_conf_nfs n1 n2 n3
qbdctl create h --size 16M --replicas 3 --chunk-size 1M >"$T/create.out" 2>&1 || { show "$T/create.out"; die setup "qbdctl create"; }
qbd_start
API="http://$(api_address)"
check "a write lands on all three NFS parts" nbdsh -u "$(uri h)" -c 'h.pwrite(b"\x11" * 65536, 0); h.flush()'
qbdctl status >"$T/status.out" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "^OK: 1 volume(s), no problem" "$T/status.out"; then
  pass "qbdctl status: OK, exit 0, with three NFS parts up"
else
  fail "status ok" "exit $rc: $(cat "$T/status.out")"
fi

ganesha_kill n2
# A write finds the server gone (within nfs_timeout_ms) and goes on with a and c.
check "writes go on while n2 is down" nbdsh -u "$(uri h)" -c 'h.pwrite(b"\x22" * 65536, 1 << 20); h.flush()'
status_is() { # EXIT_CODE: qbdctl status exits with it
  "$QBD_BIN/qbdctl" --config "$T/qbd.conf" status >"$T/status.out" 2>&1
  [ $? = "$1" ]
}
if wait_until 30 status_is 1 && grep -q "^DEGRADED volume h: .*\[part b, nfs://127.0.0.1/" "$T/status.out" &&
  grep -q "; do: " "$T/status.out"; then
  pass "qbdctl status: DEGRADED naming part b and its nfs:// backend, with what to do; exit 1"
else
  fail "status degraded with n2 down" "$(cat "$T/status.out")"
fi
curl -sS --max-time 30 "$API/v1/health" >"$T/health.json"
check "GET /v1/health: degraded, a problem on part b" \
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); v=j["volumes"][0]; sys.exit(0 if j["status"] == "degraded" and v["status"] == "degraded" and any(p["part"] == "b" and p["backend"].startswith("nfs://") for p in v["problems"]) else 1)' "$T/health.json"

ganesha_restart n2
# The part comes back after its backend's retry backoff and is resynced.
if wait_until 90 status_is 0; then
  pass "qbdctl status: OK again, exit 0, once n2 is back and resynced"
else
  fail "status back to ok" "$(cat "$T/status.out")"
fi
check "the write made while n2 was down reads back" nbdsh -u "$(uri h)" -c 'assert h.pread(65536, 1 << 20) == b"\x22" * 65536'
qbd_stop
check "verify is clean" verify --deep h
