#!/usr/bin/env bash
# The Proxmox VE storage plugin (proxmox/QBDPlugin.pm) against the real qbd-master: the functions
# Proxmox calls (alloc_image, list_images, volume_resize, status, free_image, ...) through the
# REST API, driven by tests/proxmox/plugin_test.pl, whose stand-ins for PVE's base classes are
# the only thing not real (Proxmox does not run here). This host has no kernel nbd module:
# activate_volume must fail with the daemon's answer (400, "modprobe nbd"). Attaching, writing
# through the device, resizing and deleting an attached disk run in the VM
# (tests/vm/guest/proxmox_plugin.sh, the same harness with "attach"). Then a second node: a
# second qbd-master over the same backends lists the disk but refuses to attach it while the
# first holds its lease (one master per volume: never two kernel devices on two nodes).
# The Perl code below is single-quoted: its $ are Perl's.
# shellcheck disable=SC2016
. "$(dirname "$0")/lib.sh"

qbd_conf 3
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
plugin "$API2" 'eval { $P->activate_volume("qbd", $s, "vm-200-disk-0") }; print $@' >"$T/m2.activate" 2>&1
if [ "$(cat "$T/m2.activate")" = "qbd: POST /v1/volumes/vm-200-disk-0/attach: HTTP 404: volume vm-200-disk-0 is not served by this qbd-master (no such volume, or another master holds its lease)" ]; then
  pass "node 2's activate_volume is refused while node 1's qbd-master holds the lease (404)"
else
  fail "node 2's activate_volume while node 1 holds the lease" "$(cat "$T/m2.activate")"
fi
kill -TERM "$M2"
if ! wait_pid "$M2" 20 || [ "$WAIT_RC" != 0 ]; then fail "master 2 stops" "exit $WAIT_RC"; fi
check "free_image on node 1" plugin "$(api_address)" '$P->free_image("qbd", $s, "vm-200-disk-0")'
qbd_stop
