#!/usr/bin/env bash
# qbd-verify and qbd-repair on NFS parts: parts a, b, c each on its own nfs-ganesha server on
# 127.0.0.1, reached through userspace libnfs. A volume filled through qbd-master verifies clean
# (quick and deep); chosen damage made directly in the export directories (chunk files deleted on
# part b, one truncated on part c, bytes flipped in two blocks on part a, one copy made stale, one
# chunk deleted on every part) gives exactly those findings and exit codes; an offline repair fixes
# all but the lost chunk, leaves the three exports' chunk files identical, and a second repair does
# nothing and says so. Then part c's chunk files of a second volume are deleted while fio writes
# with --verify through qbd-master, qbd-repair has the running daemon rebuild them, fio passes and
# the volume verifies clean.
. "$(dirname "$0")/lib.sh"
. "$IT_DIR/ganesha.sh" # lib.sh has cd-ed into $T: a relative $0 no longer leads here

volnr() { # NAME -> the volume's number, from .volumesmeta in n1's export
  sed -nE "s/^$1[[:space:]]*=[[:space:]]*([0-9]+)[[:space:]]*$/\1/p" "$(ganesha_export n1)/.volumesmeta"
}

chunk_sums() { # VOLNR: checksums of every chunk file of the volume in the three exports
  (cd "$T" && find "nfs-n1/export/$1/a" "nfs-n2/export/$1/b" "nfs-n3/export/$1/c" -type f \
    -name '[0-9]*' ! -name '*.tmp.*' -print0 | sort -z | xargs -0 md5sum)
}

REC=4112 # bytes per record: a 4096-byte block and its 16 bytes of metadata (layout-spec.md §4.2)

ganesha_start n1
ganesha_start n2
ganesha_start n3
qbd_conf_nfs n1 n2 n3
for v in v:48M live:64M; do
  qbdctl create "${v%%:*}" --size "${v#*:}" --replicas 3 --chunk-size 4M >"$T/create.out" 2>&1 ||
    { show "$T/create.out"; die setup "qbdctl create ${v%%:*} on NFS backends failed"; }
done
NR=$(volnr v)
NR_live=$(volnr live)
{ [ -n "$NR" ] && [ -n "$NR_live" ]; } || die setup "a volume is missing in $(ganesha_export n1)/.volumesmeta"
A=$(ganesha_export n1)/$NR/a
B=$(ganesha_export n2)/$NR/b
C=$(ganesha_export n3)/$NR/c

# =================================================================================================
# A clean volume
qbd_start
head -c 48M /dev/urandom >"$T/data.bin"
nbdcopy --flush "$T/data.bin" "$(uri v)" || die setup "nbdcopy --flush of 48 MiB into volume v failed"
head -c 64M /dev/urandom | nbdcopy --flush - "$(uri live)" || die setup "fill of volume live failed"
# Stale copy: part b's chunk 6 as it was before its blocks 3-4 were rewritten.
cp "$B/6" "$T/old-b6"
python3 - "$(uri v)" "$T/data.bin" <<'EOF' || die setup "rewrite of blocks 3-4 of chunk 6 failed"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
buf = bytes([0x5A]) * 8192
h.pwrite(buf, 5 * 4194304 + 3 * 4096); h.flush(); h.shutdown()
with open(sys.argv[2], "r+b") as f:
    f.seek(5 * 4194304 + 3 * 4096); f.write(buf)
EOF
qbd_stop
cmp -s "$T/old-b6" "$B/6" && die setup "part b's chunk 6 did not change when its blocks 3-4 were rewritten"
expect_findings "clean volume on NFS: quick verify exits 0 with no finding" 0 ""
expect_findings "clean volume on NFS: deep verify exits 0 with no finding" 0 "" --deep

# =================================================================================================
# Damage made directly in the export directories
cp "$T/old-b6" "$B/6"
rm "$B/2" "$B/7"
truncate -s 1000 "$C/3"
flip_byte "$A/4" $((1 * REC + 10))
flip_byte "$A/4" $((5 * REC + 4000))
rm "$A/8" "$B/8" "$C/8"

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
expect_findings "NFS: quick verify finds exactly the missing, short and lost chunk files (exit 2)" \
  2 "$quick_want"
expect_findings "NFS: deep verify also finds exactly the corrupt and stale blocks (exit 2)" \
  2 "$deep_want" --deep

# =================================================================================================
# Offline repair
repair >"$T/repair1.out" 2>&1
rc=$?
if [ "$rc" = 2 ] && grep -q "rebuilt 3 chunk file(s) and 4 block(s)" "$T/repair1.out" &&
  ! grep -q "qbd-master is running" "$T/repair1.out"; then
  pass "offline repair on NFS rebuilds 3 chunk files and 4 blocks, and exits 2 for the lost chunk"
else
  fail "offline repair on NFS rebuilds 3 chunk files and 4 blocks, and exits 2 for the lost chunk" "exit $rc"
  show "$T/repair1.out" 20
fi
expect_findings "after the offline repair, deep verify reports only the lost chunk (exit 2)" \
  2 "lost-chunk - 8 -" --deep
check "the three exports hold identical chunk files 1-7 and 9-12 after repair, and none for chunk 8" \
  bash -c "for n in 1 2 3 4 5 6 7 9 10 11 12; do cmp '$A/'\$n '$B/'\$n && cmp '$A/'\$n '$C/'\$n || exit 1; done
           ! ls '$A/8' '$B/8' '$C/8' 2>/dev/null"
before=$(chunk_sums "$NR")
repair >"$T/repair2.out" 2>&1
rc=$?
if [ "$rc" = 2 ] && grep -q "volume v: nothing to repair" "$T/repair2.out" &&
  [ "$(chunk_sums "$NR")" = "$before" ]; then
  pass "a second repair on NFS changes no chunk file and says so"
else
  fail "a second repair on NFS changes no chunk file and says so" "exit $rc"
  show "$T/repair2.out"
fi

# =================================================================================================
# Online repair: part c's chunk files deleted while fio writes, rebuilt by the running daemon
CL=$(ganesha_export n3)/$NR_live/c
nlive=$(find "$CL" -maxdepth 1 -type f -name '[0-9]*' | wc -l)
[ "$nlive" = 16 ] || die live "expected 16 chunk files of volume live on part c, found $nlive"
qbd_start
fio --name=live --ioengine=nbd --uri="$(uri live)" --rw=randwrite --bs=4k --iodepth=8 --size=64M \
  --io_size=32M --verify=crc32c --verify_fatal=1 --output-format=json --output="$T/fio.raw" \
  >"$T/fio.out" 2>&1 &
FIO=$!
track $FIO
sleep 1
rm -f "$CL"/[0-9]*
alive $FIO && fio_was_running=1 || fio_was_running=0
repair live >"$T/repair-live.out" 2>&1
rrc=$?
if [ "$rrc" = 0 ] && grep -q "qbd-master is running" "$T/repair-live.out"; then
  pass "repair on NFS through the running daemon while fio writes exits 0"
else
  fail "repair on NFS through the running daemon while fio writes exits 0" "exit $rrc"
  show "$T/repair-live.out"
fi
if ! wait_pid $FIO 120; then
  kill -KILL $FIO
  wait_pid $FIO 5
  fail "fio randwrite --verify=crc32c passes while part c is deleted and repaired" "fio still running after 120 s (killed)"
elif [ "$fio_was_running" = 0 ]; then
  fail "fio randwrite --verify=crc32c passes while part c is deleted and repaired" \
    "fio had already ended when part c's chunk files were deleted"
elif [ "$WAIT_RC" = 0 ] && python3 - "$T/fio.raw" <<'EOF'; then
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
sys.exit(1 if job["error"] or job["write"]["io_bytes"] != 32 * 1048576 else 0)
EOF
  pass "fio randwrite --verify=crc32c passes while part c is deleted and repaired"
else
  fail "fio randwrite --verify=crc32c passes while part c is deleted and repaired" "fio exit $WAIT_RC"
  show "$T/fio.out"
  show "$T/fio.raw"
fi
qbd_stop
expect_findings "after the online repair on NFS, deep verify of volume live is clean" 0 "" --deep live
