#!/usr/bin/env bash
# qbdctl backends and scripts/mount-backends.sh over local backends: what they report and their
# exit codes.
source "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)

qbd_conf 3
check "create a volume" qbdctl create vol --size 64M
qbdctl backends >"$T/out" 2>&1
rc=$?
if [ $rc = 0 ] && [ "$(grep -c ' yes  *yes ' "$T/out")" = 3 ] && grep -q 'vol(1)' "$T/out"; then
  pass "qbdctl backends: three reachable, writable backends holding vol(1), exit 0"
else
  fail "qbdctl backends: three reachable, writable backends holding vol(1), exit 0" "rc=$rc: $(cat "$T/out")"
fi
if grep -q "^warning: parts a (local:$T/node-a), b (local:$T/node-b), c (local:$T/node-c) share the file system" "$T/out"; then
  pass "qbdctl backends warns that parts a, b, c share a file system (allowed)"
else
  fail "qbdctl backends warns about a shared file system" "$(cat "$T/out")"
fi
grep -v '^allow_shared_failure_domain' "$T/qbd.conf" >"$T/strict.conf"
"$QBD_BIN/qbdctl" --config "$T/strict.conf" backends >"$T/out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q '^error: parts a (.*), b (.*), c (.*) share the file system.*qbd-master refuses' "$T/out"; then
  pass "without allow_shared_failure_domain, qbdctl backends reports the shared file system as an error, exit 1"
else
  fail "qbdctl backends without allow_shared_failure_domain" "rc=$rc: $(cat "$T/out")"
fi
QBDCTL="$QBD_BIN/qbdctl" "$root/scripts/mount-backends.sh" --check --config "$T/qbd.conf" >"$T/out" 2>&1
rc=$?
[ $rc = 0 ] && pass "mount-backends.sh --check exits 0 when every backend is fine" ||
  fail "mount-backends.sh --check exits 0 when every backend is fine" "rc=$rc: $(cat "$T/out")"
mv "$T/node-b" "$T/node-b.away"
QBDCTL="$QBD_BIN/qbdctl" "$root/scripts/mount-backends.sh" --check --config "$T/qbd.conf" >"$T/out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "node-b does not exist" "$T/out" && [ ! -e "$T/node-b" ]; then
  pass "a missing backend directory: exit 1, named, and not created"
else
  fail "a missing backend directory: exit 1, named, and not created" "rc=$rc: $(cat "$T/out")"
fi
mv "$T/node-b.away" "$T/node-b"
QBDCTL="$QBD_BIN/qbdctl" "$root/scripts/mount-backends.sh" --frobnicate >"$T/out" 2>&1
rc=$?
[ $rc = 2 ] && pass "mount-backends.sh: an unknown argument exits 2" ||
  fail "mount-backends.sh: an unknown argument exits 2" "rc=$rc"
