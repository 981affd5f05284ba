#!/usr/bin/env bash
# The Proxmox VE storage plugin (proxmox/QBDPlugin.pm) against the real qbd-master: the functions
# Proxmox calls (alloc_image, list_images, volume_resize, status, free_image, ...) through the
# REST API, driven by tests/proxmox/plugin_test.pl, whose stand-ins for PVE's base classes are
# the only thing not real (Proxmox does not run here). This host has no kernel nbd module:
# activate_volume must fail with the daemon's answer (400, "modprobe nbd"). Attaching, writing
# through the device, resizing and deleting an attached disk run in the VM
# (tests/vm/guest/proxmox_plugin.sh, the same harness with "attach").
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
qbd_stop
