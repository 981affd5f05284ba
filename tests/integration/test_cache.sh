#!/usr/bin/env bash
# The memory cache (cache_size in qbd.conf) on the real path: data read back right and served from
# memory the second time; coherent across connections (CAN_MULTI_CONN: a write, TRIM or
# WRITE_ZEROES on one connection is what another reads next); right after read-repair of damaged
# copies; fio randrw --verify passes with it; qbd-master reports the hit ratio when it stops.
. "$(dirname "$0")/lib.sh"

qbd_conf 3 "cache_size = 64M"
qbdctl create c --size 64M --replicas 3 >/dev/null || die setup "qbdctl create failed"
qbd_start
check "qbd-master says it has a 64 MiB memory cache" grep -q "memory cache: 64 MiB (write-through)" "$T/master.log"
head -c 32M /dev/urandom >"$T/in.bin"
check "nbdcopy 32 MiB in" nbdcopy --flush "$T/in.bin" "$(uri c)"
check "two reads of the volume give the written data" \
  bash -c 'for i in 1 2; do rm -f "$2"; nbdcopy "$1" "$2" && cmp -n 33554432 "$3" "$2" || exit 1; done' _ \
  "$(uri c)" "$T/out.bin" "$T/in.bin"

check_multi_conn "a write, trim, write_zeroes and partial write on one connection are read at once on another" \
  "$(uri c)" $((40 * 1048576 + 5 * 4096))

# Read-repair under the cache: damaged copies of a chunk not read yet.
flip_byte "$(chunk_path node-a 1 a 6)" $((3 * 4112 + 7))
rm -f "$(chunk_path node-b 1 b 6)"
check "reads of a damaged chunk return the written data (read-repair below the cache)" \
  bash -c 'rm -f "$2"; nbdcopy "$1" "$2" && cmp -n 33554432 "$3" "$2"' _ "$(uri c)" "$T/out2.bin" "$T/in.bin"

fio --name=c --ioengine=nbd --uri="$(uri c)" --rw=randrw --bs=4k --iodepth=16 --size=64M --io_size=24M \
  --verify=crc32c --verify_fatal=1 --output-format=json --output="$T/fio.json" >"$T/fio.out" 2>&1
rc=$?
[ $rc = 0 ] && pass "fio randrw --verify=crc32c passes with the cache" || { fail "fio randrw --verify=crc32c passes with the cache" "exit $rc"; show "$T/fio.out"; }
metrics_text >"$T/stats.out" 2>&1
check "GET /metrics gives the volume's request counters and its memory cache hits" \
  bash -c "grep -qE '^qbd_volume_requests_total\\{op=\"read\",volume=\"c\"\\} [1-9]' '$T/stats.out' &&
           grep -qE '^qbd_volume_cache_hits_total\\{volume=\"c\"\\} [1-9]' '$T/stats.out'"
qbd_stop
if grep -qE "cache: .* hits [1-9][0-9]* \(" "$T/master.log"; then
  pass "qbd-master reports cache hits when it stops ($(grep -oE 'hits [0-9]+ \([0-9.]+%\)' "$T/master.log" | tail -1))"
else
  fail "qbd-master reports cache hits when it stops" "no hits in the summary"
  grep "cache:" "$T/master.log" | show /dev/stdin
fi
# Reads repair only the copies they touch: part a's flipped block may still be there (the reads may
# have gone to part c). qbd-repair fixes whatever is left; then every copy agrees.
repair >"$T/repair.out" 2>&1 || { fail "qbd-repair after the cached run" "exit $?"; show "$T/repair.out"; }
expect_findings "deep verify is clean after the cached run and a repair" 0 "" --deep
