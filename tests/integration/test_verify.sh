#!/usr/bin/env bash
# qbd-verify and qbd-repair on local parts: chosen damage (chunk files deleted on one part, one
# truncated, bytes flipped in blocks of another, one copy made stale, one chunk deleted on every
# part) gives exactly those findings and exit codes; the dry-run plan lists exactly the repairs and
# changes nothing; repair fixes all but the lost chunk, which reads fail on rather than return
# zeros; a second repair does nothing and says so. Then: repair while fio writes with --verify
# through qbd-master (the daemon repairs each chunk), a repair killed midway and rerun, and a part
# wiped entirely and rebuilt.
. "$(dirname "$0")/lib.sh"

tree_sum() { # checksums of every file under the three parts' volume directories
  (cd "$T" && find node-a node-b node-c -type f ! -name '*.tmp.*' -print0 | sort -z | xargs -0 md5sum)
}

MiB=$((1024 * 1024))
REC=4112 # bytes per record: a 4096-byte block and its 16 bytes of metadata (layout-spec.md §4.2)
qbd_conf 3
qbdctl create v --size 64M --replicas 3 >/dev/null || die setup "qbdctl create failed"
qbd_start
head -c 40M /dev/urandom >"$T/data.bin"
nbdcopy --flush "$T/data.bin" "$(uri v)" || die setup "nbdcopy in failed"
expect_findings "clean volume: quick verify exits 0 with no finding" 0 ""
out=$(verify --quiet 2>&1)
rc=$?
[ "$rc" = 0 ] && [ -z "$out" ] && pass "verify --quiet prints nothing for a clean volume (cron mails nothing)" ||
  fail "verify --quiet prints nothing for a clean volume (cron mails nothing)" "exit $rc, printed: $out"

# Stale copy: part b's chunk 6 as it was before blocks 3-4 were rewritten.
cp "$T/node-b/1/b/6" "$T/old-b6"
python3 - "$(uri v)" "$T/data.bin" <<'EOF'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
buf = bytes([0x5A]) * 8192
h.pwrite(buf, 5 * 4194304 + 3 * 4096); h.flush(); h.shutdown()
with open(sys.argv[2], "r+b") as f:
    f.seek(5 * 4194304 + 3 * 4096); f.write(buf)
EOF
qbd_stop
expect_findings "clean volume: deep verify (at --rate 400 MB/s) exits 0 with no finding" 0 "" --deep --rate 400

cp "$T/old-b6" "$T/node-b/1/b/6"
rm "$T/node-b/1/b/2" "$T/node-b/1/b/7"
truncate -s 1000 "$T/node-c/1/c/3"
flip_byte "$T/node-a/1/a/4" $((1 * REC + 10))
flip_byte "$T/node-a/1/a/4" $((5 * REC + 4000))
rm "$T/node-a/1/a/8" "$T/node-b/1/b/8" "$T/node-c/1/c/8"

quick_want="lost-chunk - 8 -
missing b 2 -
missing b 7 -
short c 3 -"
deep_want="corrupt a 4 1,5
lost-chunk - 8 -
missing b 2 -
missing b 7 -
short c 3 -
stale b 6 3,4"
expect_findings "quick verify finds exactly the missing, short and lost chunk files (exit 2)" 2 "$quick_want"
expect_findings "deep verify also finds exactly the corrupt and stale blocks (exit 2)" 2 "$deep_want" --deep
verify --deep >"$T/verify.txt"
check "the text report says DATA LOST and names part b's missing chunk 2" \
  grep -q "DATA LOST" "$T/verify.txt"
check "the text report names the corrupt blocks of part a chunk 4" \
  grep -qE "corrupt +part a chunk 4: 2 block\(s\) fail their checksum: 1, 5" "$T/verify.txt"
check "verify --quiet prints the damaged volume" bash -c "'$QBD_BIN/qbd-verify' --config '$T/qbd.conf' --quiet | grep -q 'volume v (1): DATA LOST'"

before=$(tree_sum)
repair --dry-run >"$T/plan.out" 2>&1
rc=$?
grep -E '^(plan: volume v chunk|data lost)' "$T/plan.out" | sed -E 's/ \(([a-z]+)\)$/ \1/' >"$T/plan.lines"
want_plan="plan: volume v chunk 2: part b <- a: rebuild the chunk file (missing)
plan: volume v chunk 3: part c <- a: rebuild the chunk file (short)
plan: volume v chunk 4: part a <- b: rewrite 2 blocks: 1, 5 (corrupt)
plan: volume v chunk 6: part b <- a: rewrite 2 blocks: 3-4 (stale)
plan: volume v chunk 7: part b <- a: rebuild the chunk file (missing)
data lost: volume v chunk 8: the whole chunk is without a good copy on any part; their copies are left as they are"
if [ "$rc" = 2 ] && [ "$(grep -E '^(plan: volume v chunk|data lost)' "$T/plan.out")" = "$want_plan" ]; then
  pass "repair --dry-run plans exactly the five repairs and reports the lost chunk (exit 2)"
else
  fail "repair --dry-run plans exactly the five repairs and reports the lost chunk (exit 2)" "exit $rc"
  show "$T/plan.out" 20
fi
[ "$(tree_sum)" = "$before" ] && pass "repair --dry-run changes no file" || fail "repair --dry-run changes no file" "files changed"

repair >"$T/repair1.out" 2>&1
rc=$?
if [ "$rc" = 2 ] && grep -q "rebuilt 3 chunk file(s) and 4 block(s)" "$T/repair1.out"; then
  pass "repair rebuilds 3 chunk files and 4 blocks, and exits 2 for the lost chunk"
else
  fail "repair rebuilds 3 chunk files and 4 blocks, and exits 2 for the lost chunk" "exit $rc"
  show "$T/repair1.out" 20
fi
expect_findings "after repair, deep verify reports only the lost chunk" 2 "lost-chunk - 8 -" --deep
check "parts a, b, c hold identical chunk files after repair" \
  bash -c "for n in 1 2 3 4 5 6 7 9 10; do cmp -s $T/node-a/1/a/\$n $T/node-b/1/b/\$n && cmp -s $T/node-a/1/a/\$n $T/node-c/1/c/\$n || exit 1; done"
before=$(tree_sum)
repair >"$T/repair2.out" 2>&1
rc=$?
if [ "$rc" = 2 ] && grep -q "volume v: nothing to repair" "$T/repair2.out" && [ "$(tree_sum)" = "$before" ]; then
  pass "a second repair changes nothing and says so"
else
  fail "a second repair changes nothing and says so" "exit $rc"
  show "$T/repair2.out"
fi

# Through NBD: every chunk but the lost one reads back as written; the lost one fails, never zeros.
qbd_start
python3 - "$(uri v)" "$T/data.bin" >"$T/read.out" 2>&1 <<'EOF'
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
data = open(sys.argv[2], "rb").read()
C = 4194304
for c in range(10):
    if c == 7:
        try:
            h.pread(4096, c * C)
            print("chunk 8 read returned data"); sys.exit(1)
        except nbd.Error as e:
            print("chunk 8: error as expected:", e)
        continue
    if h.pread(C, c * C) != data[c * C:(c + 1) * C]:
        print("chunk", c + 1, "differs"); sys.exit(1)
print("ok")
EOF
rc=$?
[ $rc = 0 ] && pass "NBD reads return the written data, and an error for the chunk lost everywhere" ||
  { fail "NBD reads return the written data, and an error for the chunk lost everywhere" "see below"; show "$T/read.out"; }
check "master.log says chunk 8 was written but is missing on every part" \
  grep -q "chunk 8: written (chunk map) but its file is missing on every part" "$T/master.log"
qbdctl delete v >/dev/null

# Repair beside production I/O: qbd-master serves fio --verify while qbd-repair has it repair the
# damage chunk by chunk under its region locks.
qbdctl create live --size 128M --replicas 3 >/dev/null || die live "create failed"
wait_until 30 nbdinfo "$(uri live)" || die live "the volume poll did not export it within 30 s"
head -c 128M /dev/urandom | nbdcopy --flush - "$(uri live)" || die live "fill failed"
nr=$(qbdctl info live | awk '/^number:/ {print $2}')
rm -f "$T"/node-c/"$nr"/c/{3,9,17,25}
flip_byte "$T/node-a/$nr/a/5" $((7 * REC + 1))
flip_byte "$T/node-b/$nr/b/11" $((100 * REC + 2048))
fio --name=live --ioengine=nbd --uri="$(uri live)" --rw=randwrite --bs=4k --iodepth=8 --size=128M \
  --io_size=48M --verify=crc32c --verify_fatal=1 --output-format=json --output="$T/fio.json" >"$T/fio.out" 2>&1 &
FIO=$!
track $FIO
sleep 0.5
repair live >"$T/repair-live.out" 2>&1
rrc=$?
wait_pid $FIO 300
frc=$WAIT_RC
untrack $FIO
if [ "$rrc" = 0 ] && grep -q "qbd-master is running: it repairs each chunk" "$T/repair-live.out"; then
  pass "repair through the running daemon while fio writes exits 0"
else
  fail "repair through the running daemon while fio writes exits 0" "exit $rrc"
  show "$T/repair-live.out"
fi
if [ "$frc" = 0 ] && python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(j['jobs'][0]['error'])" "$T/fio.json"; then
  pass "fio randwrite --verify=crc32c passes while repair runs"
else
  fail "fio randwrite --verify=crc32c passes while repair runs" "fio exit $frc"
  show "$T/fio.out"
fi
qbd_stop
expect_findings "after the live repair, deep verify is clean" 0 "" --deep live

# Killed midway and rerun: a whole part rebuilt offline, the first run killed after a few chunks.
rm -rf "$T/node-c/$nr/c"
"$QBD_BIN/qbd-repair" --config "$T/qbd.conf" --rate 50 live >"$T/kill1.out" 2>&1 &
RP=$!
track $RP
for _ in $(seq 1 200); do
  [ "$(ls "$T/node-c/$nr/c" 2>/dev/null | grep -c '^[0-9]')" -ge 6 ] && break
  sleep 0.05
done
sleep 1.2 # past the first progress save
kill -KILL $RP
wait_pid $RP 10
untrack $RP
done_files=$(ls "$T/node-c/$nr/c" 2>/dev/null | grep -c '^[0-9]')
if [ "$done_files" -lt 32 ]; then
  pass "qbd-repair killed midway (after $done_files of 32 chunk files)"
else
  fail "qbd-repair killed midway" "it had already finished ($done_files files)"
fi
repair live >"$T/kill2.out" 2>&1
rc=$?
if [ "$rc" = 0 ] && grep -q "resuming at chunk" "$T/kill2.out"; then
  pass "the rerun resumes where the killed run stopped and exits 0"
else
  fail "the rerun resumes where the killed run stopped and exits 0" "exit $rc"
  show "$T/kill2.out"
fi
expect_findings "after the rerun, deep verify is clean" 0 "" --deep live

# A part wiped entirely (a replaced disk): everything on node-c, metadata included.
rm -rf "${T:?}"/node-c/*
verify --json live >"$T/wiped.json"
rc=$?
nmiss=$(findings "$T/wiped.json" | grep -c '^missing c [0-9]')
nmeta=$(findings "$T/wiped.json" | grep -c '^metadata c')
if [ "$rc" = 1 ] && [ "$nmiss" = 32 ] && [ "$nmeta" -ge 4 ]; then
  pass "verify of a wiped part c: exit 1, all 32 chunk files and the metadata copies missing"
else
  fail "verify of a wiped part c: exit 1, all 32 chunk files and the metadata copies missing" \
    "exit $rc, $nmiss chunk files, $nmeta metadata findings"
  findings "$T/wiped.json" | show /dev/stdin
fi
repair >"$T/wipe.out" 2>&1
rc=$?
[ "$rc" = 0 ] && pass "repair rebuilds the wiped part c (exit 0)" || { fail "repair rebuilds the wiped part c (exit 0)" "exit $rc"; show "$T/wipe.out"; }
expect_findings "after rebuilding part c, deep verify is clean" 0 "" --deep
check "part c's .volumesmeta, .meta, .epoch and .chunkmap are back" \
  test -s "$T/node-c/.volumesmeta" -a -s "$T/node-c/$nr/.meta" -a -s "$T/node-c/$nr/.epoch" -a -s "$T/node-c/$nr/.chunkmap"
check "part c's 32 rebuilt chunk files are identical to part a's" \
  bash -c "for n in \$(seq 1 32); do cmp -s $T/node-a/$nr/a/\$n $T/node-c/$nr/c/\$n || exit 1; done"

# The configuration's lock: while another process holds it (an offline qbd-repair), qbd-master does
# not start, and qbd-repair without a daemon to talk to refuses too.
# Waits for the lock (never -n: a process that held it a moment ago, the last repair, may still be
# ending on a slow machine, and -n would fail at once).
flock -o "$T/qbd.sock.lock" sleep 60 &
HOLDER=$!
track $HOLDER
wait_until 60 bash -c '! flock -n "$1" true' _ "$T/qbd.sock.lock" || die lock "flock did not take the lock"
timeout 20 "$QBD_BIN/qbd-master" --config "$T/qbd.conf" >"$T/locked.out" 2>&1 </dev/null
rc=$?
if [ "$rc" != 0 ] && grep -q "another qbd-master or an offline qbd-repair" "$T/locked.out"; then
  pass "qbd-master refuses to start while the configuration's lock is held (exit $rc)"
else
  fail "qbd-master refuses to start while the configuration's lock is held" "exit $rc"
  show "$T/locked.out"
fi
repair >"$T/locked2.out" 2>&1
rc=$?
[ "$rc" = 4 ] && grep -q "is held by" "$T/locked2.out" && pass "qbd-repair exits 4 while the lock is held and no daemon answers" ||
  { fail "qbd-repair exits 4 while the lock is held and no daemon answers" "exit $rc"; show "$T/locked2.out"; }
kill $HOLDER
wait_pid $HOLDER 5
untrack $HOLDER
