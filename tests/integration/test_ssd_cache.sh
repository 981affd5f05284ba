#!/usr/bin/env bash
# The SSD cache directory (cache_dir in qbd.conf) on the real path, in write-back mode:
# - writes are acknowledged from the log and reach the parts later; SIGKILL of qbd-master in the
#   middle of a stream of writes loses no acknowledged write (flushed or not: the log is in the page
#   cache), because the next start replays the log onto the parts before serving;
# - two connections stay coherent (write, trim, write_zeroes, partial write);
# - the cache directory removed while fio writes and verifies: no client error, qbd-master logs that
#   the cache is off and writes go to the parts;
# - afterwards deep verify is clean and the parts alone hold the data (the cache emptied).
. "$(dirname "$0")/lib.sh"

BS=4096
FLUSHED=2048 # blocks = 8 MiB, flushed before the kill
# Nothing destages in the background (an hour's delay, room for 256 MiB), so that the kill finds
# every write in the log only.
qbd_conf 3 "cache_dir = ssd" "cache_mode = writeback" "cache_dir_size = 256M" "cache_dirty_max = 256M" \
  "cache_destage_delay_ms = 3600000"
qbdctl create wb --size 64M --replicas 3 >/dev/null || die setup "qbdctl create failed"
qbd_start
check "qbd-master says it has a write-back SSD cache" grep -q "SSD cache: $T/ssd, 256 MiB per volume, write-back" "$T/master.log"

# At most 1536 writes of 64 KiB after the flush: with the 8 MiB flushed that is 104 MiB of log,
# well under its 256 MiB, so the log never wraps (a wrap destages its oldest segment) however fast
# the machine is. The kill comes after 256 of them are acknowledged, while the rest may be in flight.
POST_FLUSH=1536
pattern write "$(uri wb)" "$T/writes.log" --flushed $FLUSHED --iter 7 --depth 16 --max $POST_FLUSH \
  >"$T/writer.out" 2>&1 &
wpid=$!
track $wpid
wait_for_line "$T/writes.log" '^FLUSHED' 60 || { show "$T/writer.out"; die writer "no flush within 60 s"; }
wait_until 60 bash -c '[ "$(grep -c "^A " "$1")" -ge 256 ] || grep -q "^END" "$1"' _ "$T/writes.log" ||
  { show "$T/writer.out"; die writer "256 writes after the flush not acknowledged within 60 s"; }
acked=$(grep -c '^A ' "$T/writes.log")
check "the parts do not hold the flushed writes yet (they wait in the SSD log)" \
  bash -c "! cmp -s -n 4096 <(python3 -c 'import struct,sys; sys.stdout.buffer.write(struct.pack(\"<QQ\", 0, 7) * 256)') '$(chunk_path node-a 1 a 0)'"
qbd_kill
wait_pid $wpid 30 || { kill -KILL $wpid; fail writer "the writer did not notice the kill within 30 s"; }
untrack $wpid
echo "    | killed qbd-master after $acked writes acknowledged since the flush"
[ "$acked" -gt 0 ] || fail writer "no write acknowledged after the flush"

qbd_start
check "the restart replays the SSD log onto the parts" \
  grep -qE "volume wb: replayed [1-9][0-9]* blocks of write-back data from the SSD cache" "$T/master.log"
check "the volume reads back after the kill" nbdcopy "$(uri wb)" "$T/image.bin"
check "every acknowledged write is there (flushed or not), others zero or one whole write" \
  pattern verify "$T/image.bin" "$T/writes.log" --flushed $FLUSHED --iter 7 --acked

check_multi_conn "write-back: a write, trim, write_zeroes and partial write on one connection are read at once on another" \
  "$(uri wb)" $((48 * 1048576))

metrics_text >"$T/stats.out" 2>&1
check "GET /metrics gives the volume's SSD cache hits and misses" \
  bash -c "grep -qE '^qbd_volume_ssd_cache_hits_total\\{volume=\"wb\"\\} [0-9]' '$T/stats.out' &&
           grep -qE '^qbd_volume_ssd_cache_misses_total\\{volume=\"wb\"\\} [0-9]' '$T/stats.out'"
qbd_stop
check "a clean stop destages everything: the SSD cache log summary says nothing is left" \
  grep -qE "volume wb: ssd cache .* not yet destaged 0 B" "$T/master.log"

# The parts alone: without the cache directory the volume reads the same.
rm -rf "$T/ssd"
qbd_start
check "after a clean stop the parts alone hold every write" \
  bash -c 'rm -f "$2"; nbdcopy "$1" "$2" && cmp -n $((40 * 1048576)) "$3" "$2"' _ "$(uri wb)" "$T/image2.bin" "$T/image.bin"
qbd_stop

# The cache directory removed while fio writes and then verifies, with background destaging.
sed -i 's/^cache_destage_delay_ms = .*/cache_destage_delay_ms = 50/; s/^cache_dirty_max = .*/cache_dirty_max = 8M/' "$T/qbd.conf"
qbd_start
# --rate_iops bounds how fast fio can go on any machine: 8 loops of 12288 writes take at least
# 4.9 s, so it is still writing when the directory goes 1 s after the start.
fio --name=wb --ioengine=nbd --uri="$(uri wb)" --rw=randwrite --bs=4k --iodepth=16 --size=48M --loops=8 \
  --rate_iops=20000 --verify=crc32c --verify_fatal=1 --output-format=json --output="$T/fio.json" \
  >"$T/fio.out" 2>&1 &
fpid=$!
track $fpid
sleep 1
alive $fpid || fail "fio" "finished before the cache directory was removed: the check below proves nothing"
rm -rf "$T/ssd"
wait_pid $fpid 300 || { kill -KILL $fpid; fail "fio" "did not finish within 300 s"; }
untrack $fpid
[ "$WAIT_RC" = 0 ] && pass "fio randwrite --verify passes although the SSD cache directory was removed during it" ||
  { fail "fio randwrite --verify passes although the SSD cache directory was removed during it" "exit $WAIT_RC"; show "$T/fio.out"; }
check "qbd-master noticed the removal and went on with the parts" \
  grep -qE "ssd/1/log: (the log was removed|writing the checkpoint: .*): the SSD cache is off; requests go to the parts" "$T/master.log"
qbd_stop
expect_findings "deep verify is clean after the write-back runs" 0 "" --deep
