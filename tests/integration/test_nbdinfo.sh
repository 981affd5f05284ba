#!/usr/bin/env bash
# What nbdinfo sees: every volume listed with its size, the advertised capabilities and block
# sizes, read-only volumes, and a volume created while qbd-master runs.
. "$(dirname "$0")/lib.sh"

qbd_conf 3
qbdctl create small --size 16M >/dev/null || die setup "qbdctl create small failed"
qbdctl create medium --size 80M >/dev/null || die setup "qbdctl create medium failed"
qbdctl create huge --size 5G >/dev/null || die setup "qbdctl create huge failed"
qbdctl create ro --size 8M >/dev/null || die setup "qbdctl create ro failed"
qbdctl set ro read-only on >/dev/null || die setup "qbdctl set ro read-only on failed"
# Per-volume listeners: a TCP port for "medium", a unix socket for "small".
PORT2=$(free_port)
printf '[volume medium]\nlisten = 127.0.0.1:%s\n[volume small]\nlisten = unix:%s\n' \
  "$PORT2" "$T/small.sock" >>"$T/qbd.conf"
qbd_start

list_has() { # NAME=BYTES...: nbdinfo --list --json names every one of them with that size
  nbdinfo --list --json "nbd://127.0.0.1:$PORT" >"$T/list.json" || return 1
  python3 - "$T/list.json" "$@" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
sizes = {e["export-name"]: e.get("export-size") for e in doc["exports"]}
print("exports:", sizes)
ok = True
for want in sys.argv[2:]:
    name, size = want.split("=")
    if sizes.get(name) != int(size):
        print(f"export {name}: want size {size}, got {sizes.get(name)}")
        ok = False
sys.exit(0 if ok else 1)
EOF
}
check "nbdinfo --list shows every volume with its size" \
  list_has small=16777216 medium=83886080 huge=5368709120 ro=8388608
size_is() { # URI BYTES
  local got
  got=$(nbdinfo --size "$1") || return 1
  echo "nbdinfo --size $1: $got"
  [ "$got" = "$2" ]
}
check "nbdinfo --size of one export" size_is "$(uri medium)" 83886080

for cap in flush fua trim zero multi-conn; do
  check "nbdinfo --can $cap is true" nbdinfo --can "$cap" "$(uri small)"
done
check "nbdinfo --is read-only is false for a writable volume" \
  bash -c '! nbdinfo --is read-only "$1"' _ "$(uri small)"

block_sizes() { # URI: preferred block size 4096, maximum payload 32 MiB
  nbdinfo --json "$1" >"$T/info.json" || return 1
  python3 - "$T/info.json" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
got = (e.get("block_size_minimum"), e.get("block_size_preferred"), e.get("block_size_maximum"))
print("block sizes (minimum, preferred, maximum):", got)
sys.exit(0 if got[1] == 4096 and got[2] == 32 * 1024 * 1024 and got[0] in (1, 512, 4096) else 1)
EOF
}
check "export advertises block size 4096 preferred, 32 MiB maximum" block_sizes "$(uri small)"

check "nbdinfo --is read-only is true for a read-only volume" nbdinfo --is read-only "$(uri ro)"
ro_write_fails() {
  if nbdsh -u "$(uri ro)" -c 'h.pwrite(b"\x01" * 4096, 0)'; then
    echo "a write to the read-only volume succeeded"
    return 1
  fi
  # and the volume is unchanged (all zeros)
  nbdsh -u "$(uri ro)" -c 'assert h.pread(65536, 0) == bytes(65536), "read-only volume changed"'
}
check "writes to a read-only volume fail and change nothing" ro_write_fails
check "qemu-io cannot write to a read-only volume" \
  bash -c '! qemu-io -f raw -c "write -P 0x11 0 4096" "$1"' _ "$(uri ro)"

check "an unknown export name is refused" bash -c '! nbdinfo "$1"' _ "$(uri no-such-volume)"

check "the per-volume TCP listener serves its volume under any export name" \
  bash -c 'test "$(nbdinfo --size "$1")" = 83886080 && test "$(nbdinfo --size "$2")" = 83886080' _ \
  "nbd://127.0.0.1:$PORT2/" "nbd://127.0.0.1:$PORT2/whatever"
check "the per-volume unix socket serves its volume" \
  bash -c 'test "$(nbdinfo --size "$1")" = 16777216' _ "nbd+unix:///?socket=$T/small.sock"
per_volume_same_data() { # written through one listener, read through the other
  nbdsh -u "nbd://127.0.0.1:$PORT2/" -c 'h.pwrite(b"\x61" * 8192, 1 << 20); h.flush()' &&
    nbdsh -u "$(uri medium)" -c 'assert h.pread(8192, 1 << 20) == b"\x61" * 8192' &&
    nbdsh -u "$(uri small)" -c 'h.pwrite(b"\x62" * 4096, 8192); h.flush()' &&
    nbdsh -u "nbd+unix:///?socket=$T/small.sock" -c 'assert h.pread(4096, 8192) == b"\x62" * 4096'
}
check "per-volume listeners and the main listener serve the same data" per_volume_same_data

appears() { # NAME BYTES: created with qbdctl while running, listed (within 30 s), usable
  qbdctl create "$1" --size "$2" || return 1
  local deadline=$(($(date +%s%N) + 30000000000))
  until list_has "$1=$3" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || { list_has "$1=$3"; return 1; }
    sleep 0.2
  done
  nbdsh -u "$(uri "$1")" -c '
h.pwrite(b"\x42" * 8192, 4096)
assert h.pread(16384, 0) == bytes(4096) + b"\x42" * 8192 + bytes(4096)'
}
check "a volume created while qbd-master runs is listed and serves I/O" \
  appears late 24M 25165824
check "the earlier volumes are still listed" \
  list_has small=16777216 medium=83886080 huge=5368709120 ro=8388608 late=25165824
qbd_stop
