#!/usr/bin/env bash
# Block status (NBD base:allocation, layout-spec.md §4.3) per block, read from the slot pairs: after
# the same writes, trims and zeroings, qbd reports the holes and zeros nbdkit's file plugin reports
# on a sparse file, as nbdinfo --map and qemu-img map see them; before a flush, after it, and after
# a restart. A chunk once written and then trimmed whole is a hole again. One difference is
# intended: a zeroing with NO_HOLE stays allocated in qbd (zero, not a hole: the flag asks for
# that), where nbdkit's fallocate(ZERO_RANGE) leaves an extent ext4 reports as a hole.
. "$(dirname "$0")/lib.sh"

MiB=$((1024 * 1024))
qbd_conf 3
qbdctl create holes --size 16M --replicas 3 >/dev/null || die setup "qbdctl create holes failed"
qbdctl create holes1 --size 16M --replicas 1 >/dev/null || die setup "qbdctl create holes1 failed"
truncate -s 16M "$T/peer.img"
NPORT=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$NPORT" -P "$T/nbdkit.pid" file "$T/peer.img" 2>"$T/nbdkit.log" &
track $!
wait_until 10 nbdinfo --size "nbd://127.0.0.1:$NPORT" >/dev/null || die setup "nbdkit did not start"
qbd_start

# The same requests on every export: data, a trim inside it, a whole chunk written then trimmed,
# a zeroing that may trim, one with NO_HOLE, and blocks never touched.
ops() { # URI
  PATH=/usr/bin:$PATH nbdsh -u "$1" -c "
import os
h.pwrite(os.urandom(256 * 1024), 0)
h.pwrite(os.urandom(4096), 1048576 + 8192)
h.pwrite(os.urandom(4 * 1048576), 4 * 1048576)
h.trim(4 * 1048576, 4 * 1048576)
h.pwrite(os.urandom(1048576), 12 * 1048576)
h.trim(128 * 1024, 12 * 1048576 + 256 * 1024)
h.zero(64 * 1024, 12 * 1048576 + 512 * 1024)
h.pwrite(os.urandom(64 * 1024), 9 * 1048576)
h.zero(64 * 1024, 9 * 1048576, nbd.CMD_FLAG_NO_HOLE)
h.trim(8192, 64 * 1024)
"
}
# per_block URI OUT: the base:allocation state of every 4 KiB block, one per line: "hole" (hole and
# zero), "zero" (allocated zeros) or "data"; the NO_HOLE range (9 MiB + 64 KiB) counts zero ones as
# holes, so that both servers' answers compare.
per_block() {
  nbdinfo --map=base:allocation "$1" >"$2.map" || return 1
  python3 - "$2.map" <<'PY' >"$2"
import sys
out = []
for line in open(sys.argv[1]):
    f = line.split()
    off, length, typ = int(f[0]), int(f[1]), int(f[2])
    out += ["hole" if typ & 1 else "zero" if typ & 2 else "data"] * (length // 4096)
nohole = range(9 * 256, 9 * 256 + 16)
print("\n".join("hole" if i in nohole and s == "zero" else s for i, s in enumerate(out)))
PY
}
same_map() { # WHAT: qbd's volumes report the blocks nbdkit reports
  local v rc=0
  per_block "nbd://127.0.0.1:$NPORT" "$T/peer.blocks" || return 1
  for v in holes holes1; do
    per_block "$(uri $v)" "$T/$v.blocks" || return 1
    if ! cmp -s "$T/peer.blocks" "$T/$v.blocks"; then
      echo "$v differs from nbdkit file (block: nbdkit qbd):"
      paste "$T/peer.blocks" "$T/$v.blocks" | awk '$1 != $2 {print NR - 1 ": " $1 " " $2}' | head -20
      rc=1
    fi
  done
  return $rc
}

export -f ops
check "the same writes, trims and zeroings on nbdkit file and on both qbd volumes" \
  bash -c 'ops "$1" && ops "$2" && ops "$3"' _ "nbd://127.0.0.1:$NPORT" "$(uri holes)" "$(uri holes1)"
check "before a flush: nbdinfo --map gives the holes nbdkit file gives, block by block" same_map
check "the map is not trivial: holes and data both present" \
  bash -c 'grep -q hole "$1" && grep -q data "$1"' _ "$T/holes.blocks"
check "the range zeroed with NO_HOLE is allocated zeros (NBD_STATE_ZERO without HOLE) in qbd" \
  bash -c 'nbdinfo --map=base:allocation "$1" | awk "\$1 == $((9 * 1048576)) {print \$3}" | grep -qx 2' _ "$(uri holes)"
check "the chunk written whole and trimmed whole (4-8 MiB) is a hole again" \
  bash -c '[ "$(sed -n "$((1024 + 1)),$((2048))p" "$1" | sort -u)" = hole ]' _ "$T/holes.blocks"
for v in holes holes1; do nbdsh -u "$(uri $v)" -c 'h.flush()'; done
check "after a flush: the same holes" same_map
qbd_stop
qbd_start
check "after a restart: the same holes" same_map
qemu_map() { # URI OUT: qemu-img map's zero flag per 4 KiB block
  qemu-img map --output=json -f raw "$1" >"$2.json" || return 1
  python3 - "$2.json" <<'PY' >"$2"
import json, sys
out = []
for e in json.load(open(sys.argv[1])):
    out += ["zero" if e["zero"] else "data"] * (e["length"] // 4096)
print("\n".join(out))
PY
}
export -f qemu_map
check "qemu-img map finds zeros where nbdkit file has them, on both volumes" bash -c '
  qemu_map "$1" "$4/peer.q" && qemu_map "$2" "$4/holes.q" && qemu_map "$3" "$4/holes1.q" &&
  cmp "$4/peer.q" "$4/holes.q" && cmp "$4/peer.q" "$4/holes1.q"' \
  _ "nbd://127.0.0.1:$NPORT" "$(uri holes)" "$(uri holes1)" "$T"
check "nbdcopy of a volume to a file keeps its holes (the copy is sparse)" bash -c '
  nbdcopy "$1" "$2/copy.img" && [ "$(stat -c %b "$2/copy.img")" -lt $((8 * 1024 * 2)) ]' _ "$(uri holes)" "$T"
qbd_stop
