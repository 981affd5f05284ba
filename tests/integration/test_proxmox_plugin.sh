#!/usr/bin/env bash
# The Proxmox VE storage plugin (proxmox/QBDPlugin.pm) against the real qbd-master: the functions
# Proxmox calls (alloc_image, list_images, volume_resize, status, free_image, ...) through the
# REST API, driven by tests/proxmox/plugin_test.pl, whose stand-ins for PVE's base classes are
# the only thing not real (Proxmox does not run here). This host has no kernel nbd module:
# activate_volume must fail with the daemon's answer (400, "modprobe nbd"). Attaching, writing
# through the device, resizing and deleting an attached disk run in the VM
# (tests/vm/guest/proxmox_plugin.sh, the same harness with "attach"). Then a second node: a
# second qbd-master over the same backends lists the disk; its activate_volume is refused while a
# client uses the disk on the first node (one master per volume: never two kernel devices on two
# nodes), and takes the disk over once the client left (the lease moves to node 2; attaching then
# fails here only for want of the nbd module).
# The Perl code below is single-quoted: its $ are Perl's.
# shellcheck disable=SC2016
. "$(dirname "$0")/lib.sh"

qbd_conf 3 "lease_ms = 3000" "lease_renew_ms = 500" "volume_poll_ms = 200"
qbd_start
perl "$IT_DIR/../proxmox/plugin_test.pl" "http://$(api_address)" >"$T/plugin.out" 2>&1
rc=$?
cat "$T/plugin.out"
grep -q "^PASS: list_images is empty after" "$T/plugin.out" || fail "the plugin harness ran to its end" "exit $rc"
[ $rc = 0 ] || [ "$(grep -c '^FAIL' "$T/plugin.out")" != 0 ] || fail "the plugin harness" "exit $rc without a FAIL line"
# Its PASS/FAIL lines (printed above) count as this test's.
FAILS=$((FAILS + $(grep -c '^FAIL' "$T/plugin.out")))

# plugin API_ADDRESS PERL: runs PERL with $P (the plugin's class) and $s (a storage.cfg entry
# for the REST API at API_ADDRESS) defined.
plugin() {
  perl -I"$IT_DIR/../proxmox/stub" -e 'require "'"$IT_DIR"'/../../proxmox/QBDPlugin.pm";
    our $P = "PVE::Storage::Custom::QBDPlugin"; our $s = { "qbd-api" => "http://'"$1"'" };' -e "$2"
}
check "alloc_image on node 1 creates vm-200-disk-0" \
  plugin "$(api_address)" 'exit($P->alloc_image("qbd", $s, 200, "raw", undef, 65536) ne "vm-200-disk-0")'
sed -e "s/^listen = .*/listen = 127.0.0.1:$(free_port)/" -e "s/^api_listen = .*/api_listen = 127.0.0.1:$(free_port)/" \
  -e "s|^state_dir = .*|state_dir = $T/state2|" "$T/qbd.conf" >"$T/m2.conf"
{ head -n 1 "$T/m2.conf"; echo "admin_socket = m2.sock"; tail -n +2 "$T/m2.conf"; } >"$T/m2.conf.tmp"
mv "$T/m2.conf.tmp" "$T/m2.conf"
API2=$(sed -n 's/^api_listen = //p' "$T/m2.conf")
"$QBD_BIN/qbd-master" --config "$T/m2.conf" </dev/null >>"$T/m2.log" 2>&1 &
M2=$!
track "$M2"
wait_until 20 wget -q -O /dev/null "http://$API2/v1/daemon" || { show "$T/m2.log"; die "master 2" "its API does not answer"; }
check "node 2's list_images lists node 1's disk (shared backends)" \
  plugin "$API2" 'exit(!grep { $_->{volid} eq "qbd:vm-200-disk-0" } @{ $P->list_images("qbd", $s, 200, undef, {}) })'
# A client of the disk on node 1 (a VM still running there).
/usr/bin/python3 - "$(uri vm-200-disk-0)" "$T/holder.ready" "$T/holder.stop" >"$T/holder.out" 2>&1 <<'PY' &
import nbd, os, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
PY
HOLDER=$!
track "$HOLDER"
wait_until 20 test -e "$T/holder.ready" || fail "a client connects to vm-200-disk-0 on node 1" "$(cat "$T/holder.out")"
plugin "$API2" 'eval { $P->activate_volume("qbd", $s, "vm-200-disk-0") }; print $@' >"$T/m2.activate" 2>&1
if grep -q "^qbd: POST /v1/volumes/vm-200-disk-0/attach: HTTP 409: volume vm-200-disk-0 is served by qbd-master on host .*(pid $MASTER_PID, .*which did not hand it over" "$T/m2.activate"; then
  pass "node 2's activate_volume is refused (409, naming node 1's master) while a client uses the disk on node 1"
else
  fail "node 2's activate_volume while the disk is in use on node 1" "$(cat "$T/m2.activate")"
fi
touch "$T/holder.stop"
wait_pid "$HOLDER" 20
plugin "$API2" 'eval { $P->activate_volume("qbd", $s, "vm-200-disk-0") }; print $@' >"$T/m2.activate" 2>&1
if [ "$(cat "$T/m2.activate")" = "qbd: POST /v1/volumes/vm-200-disk-0/attach: HTTP 400: no /dev/nbdN: the kernel's nbd module is not loaded (modprobe nbd)" ] &&
  curl -sf "http://$API2/v1/volumes/vm-200-disk-0" | python3 -c 'import json,sys; j=json.load(sys.stdin); sys.exit(0 if j["served"] and j["lease"]["ours"] else 1)'; then
  pass "once the client left, node 2's activate_volume takes the disk over (its lease moved; only the nbd module is missing here)"
else
  fail "node 2 takes the disk over" "$(cat "$T/m2.activate")"
fi
check "free_image on node 2, which serves the disk now" plugin "$API2" '$P->free_image("qbd", $s, "vm-200-disk-0")'
kill -TERM "$M2"
if ! wait_pid "$M2" 20 || [ "$WAIT_RC" != 0 ]; then fail "master 2 stops" "exit $WAIT_RC"; fi
check "the disk is gone for node 1 too" plugin "$(api_address)" 'exit(scalar(grep { $_->{volid} eq "qbd:vm-200-disk-0" } @{ $P->list_images("qbd", $s, 200, undef, {}) }))'
qbd_stop
