#!/usr/bin/env bash
# One judge for every copy, on the real daemon with local parts:
# - a block bad on every copy (its data, or its 32-byte slot pair) stays an error: reads fail with
#   EIO, deep verify reports data lost, and neither the daemon's background work nor a restart
#   rewrites it, until the admin runs qbd-repair --accept-loss (then it reads as zeros);
# - a stale copy put back while the daemon was down (one or two parts of three) is never served:
#   the first access after the start compares the copies and rewrites the stale ones;
# - concurrent first writes to new chunks report no damage (no read-repair lines);
# - a volume grown while the daemon runs is repaired past its old end.
. "$(dirname "$0")/lib.sh"

BS=4096
CHUNK=$((4 * 1048576))
# layout-spec.md §4.2: block i's data at i * BS, its slot pair (32 bytes) at CHUNK + i * 32
data_at() { echo $(($1 * BS)); }
pair_at() { echo $((CHUNK + $1 * 32)); }
qbd_conf 3
qbdctl create lost --size 16M --replicas 3 >/dev/null || die setup "qbdctl create lost failed"
qbdctl create stale --size 32M --replicas 3 >/dev/null || die setup "qbdctl create stale failed"
qbdctl create fresh --size 64M --replicas 3 >/dev/null || die setup "qbdctl create fresh failed"
qbdctl create grown --size 2M --replicas 3 --chunk-size 1M >/dev/null || die setup "qbdctl create grown failed"
nr() { qbdctl info "$1" | awk '/^number:/ {print $2}'; }
NR_lost=$(nr lost)
NR_stale=$(nr stale)
NR_grown=$(nr grown)

head -c 16M /dev/urandom >"$T/lost.bin"
qbd_start
check "16 MiB written to volume lost" nbdcopy --flush "$T/lost.bin" "$(uri lost)"
qbd_stop

# read_at URI OFFSET LENGTH OUT: one NBD read; its data in OUT, its error in OUT.err
read_at() {
  rm -f "$4"
  PATH=/usr/bin:$PATH nbdsh -u "$1" -c "open('$4', 'wb').write(h.pread($3, $2))" 2>"$4.err"
}
expected_at() { # FILE OFFSET LENGTH OUT: that range of FILE in OUT
  python3 -c "import sys; f=open(sys.argv[1],'rb'); f.seek(int(sys.argv[2])); open(sys.argv[4],'wb').write(f.read(int(sys.argv[3])))" "$@"
}

# lost_block_round WHAT OFFSET_IN_BLOCK|meta: block 10 of chunk file 3 damaged on every part
lost_block_round() {
  local what=$1 at=$2 p off=$((2 * CHUNK + 10 * BS))
  for p in a b c; do
    if [ "$at" = meta ]; then
      python3 -c "
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(int(sys.argv[2])); f.write(bytes(32))" "$(chunk_path node-$p "$NR_lost" $p 2)" "$(pair_at 10)"
    else
      flip_byte "$(chunk_path node-$p "$NR_lost" $p 2)" $(($(data_at 10) + at))
    fi
  done
  for p in a b c; do cp "$(chunk_path node-$p "$NR_lost" $p 2)" "$T/damaged-$p"; done
  qbd_start
  check "$what: a read of the block bad on every copy fails" bash -c '! "$@"' _ read_at "$(uri lost)" $off $BS "$T/r.bin"
  check "$what: the read error is an I/O error" grep -q "Input/output error\|EIO" "$T/r.bin.err"
  expected_at "$T/lost.bin" $((2 * CHUNK)) $BS "$T/want.bin"
  check "$what: another block of the chunk reads back" bash -c 'read_at "$1" $2 4096 "$3" && cmp "$3" "$4"' \
    _ "$(uri lost)" $((2 * CHUNK)) "$T/r2.bin" "$T/want.bin"
  # What background work would do has had its chance: the region was read, the chunk compared,
  # and resync runs every second. The copies must be as they were, the block still an error.
  wait_for_line "$T/master.log" "volume lost chunk 3 block 10: no good copy on any part" 30 ||
    fail "$what: master.log names the lost block" "no line"
  sleep 2.5
  check "$what: a second read still fails" bash -c '! "$@"' _ read_at "$(uri lost)" $off $BS "$T/r.bin"
  for p in a b c; do
    check "$what: part $p's copy of the chunk file is untouched" cmp "$T/damaged-$p" "$(chunk_path node-$p "$NR_lost" $p 2)"
  done
  qbd_stop
  expect_findings "$what: deep verify reports the block lost (exit 2)" 2 "$(printf 'corrupt a 3 10\ncorrupt b 3 10\ncorrupt c 3 10\nlost - 3 10')" --deep lost
  qbd_start
  check "$what: after a restart the read still fails" bash -c '! "$@"' _ read_at "$(uri lost)" $off $BS "$T/r.bin"
  repair lost >"$T/repair.out" 2>&1
  rc=$?
  [ $rc = 2 ] && pass "$what: qbd-repair without --accept-loss reports data lost (exit 2) and changes nothing" ||
    { fail "$what: qbd-repair reports data lost" "exit $rc"; show "$T/repair.out"; }
  check "$what: the copies are still untouched after qbd-repair" cmp "$T/damaged-a" "$(chunk_path node-a "$NR_lost" a 2)"
  repair --accept-loss lost >"$T/accept.out" 2>&1
  rc=$?
  [ $rc = 0 ] && grep -q "loss accepted: volume lost chunk 3: 1 block: 10" "$T/accept.out" &&
    pass "$what: qbd-repair --accept-loss through the daemon lists the block and exits 0" ||
    { fail "$what: qbd-repair --accept-loss" "exit $rc"; show "$T/accept.out"; }
  check "$what: master.log logs the accepted loss" grep -q "volume lost chunk 3: loss accepted by the admin: block(s) 10" "$T/master.log"
  head -c $BS /dev/zero >"$T/zero.bin"
  check "$what: the block now reads as zeros" bash -c 'read_at "$1" $2 4096 "$3" && cmp "$3" "$4"' _ "$(uri lost)" $off "$T/r.bin" "$T/zero.bin"
  qbd_stop
  expect_findings "$what: deep verify is clean after the loss was accepted" 0 "" --deep lost
  # Put the data back for the next round.
  qbd_start
  nbdcopy --flush "$T/lost.bin" "$(uri lost)" || die "$what" "rewrite failed"
  qbd_stop
}
export -f read_at
lost_block_round "one byte of the block's data flipped on all three parts" 100
lost_block_round "the block's slot pair zeroed on all three parts" meta
check "qbd-repair --accept-loss without a volume named is a usage error" \
  bash -c '"$@" 2>/dev/null; [ $? = 3 ]' _ "$QBD_BIN/qbd-repair" --config "$T/qbd.conf" --accept-loss

# ---------------------------------------------------------------------------------------------
# Stale copies put back while the daemon is down (a restored backup, a disk swapped back).
head -c 32M /dev/urandom >"$T/stale-old.bin"
head -c 32M /dev/urandom >"$T/stale-new.bin"
stale_round() { # PARTS...: these parts get the old copy of chunk file 6 back
  local p
  qbd_start
  nbdcopy --flush "$T/stale-old.bin" "$(uri stale)" || die stale "write failed"
  qbd_stop
  for p in "$@"; do cp "$(chunk_path node-$p "$NR_stale" $p 5)" "$T/old-$p"; done
  qbd_start
  nbdcopy --flush "$T/stale-new.bin" "$(uri stale)" || die stale "write failed"
  qbd_stop
  for p in "$@"; do cp "$T/old-$p" "$(chunk_path node-$p "$NR_stale" $p 5)"; done
  local agreed
  agreed=$(grep -c "volume stale chunk 6: copies made to agree at first access" "$T/master.log")
  qbd_start
  check "old copies on part(s) $*: the volume reads the new data" \
    bash -c 'rm -f "$2"; nbdcopy "$1" "$2" && cmp "$2" "$3"' _ "$(uri stale)" "$T/stale.out" "$T/stale-new.bin"
  # The first access queued the chunk's comparison, which runs in the background.
  check "old copies on part(s) $*: master.log says the comparison after the first access made the copies agree" \
    wait_until 60 bash -c '[ "$(grep -c "volume stale chunk 6: copies made to agree at first access" "$1")" -gt "$2" ]' \
    _ "$T/master.log" "$agreed"
  for p in "$@"; do
    check "old copies on part(s) $*: part $p's chunk file 6 is rewritten (identical to part c's)" \
      cmp "$(chunk_path node-$p "$NR_stale" $p 5)" "$(chunk_path node-c "$NR_stale" c 5)"
  done
  qbd_stop
}
stale_round a
stale_round a b
expect_findings "deep verify of the stale volume is clean" 0 "" --deep stale

# ---------------------------------------------------------------------------------------------
# Concurrent first writes to new chunks are no damage.
qbd_start
since=$(($(wc -l <"$T/master.log") + 1))
check "fio: 4 jobs of concurrent first writes to a new volume" \
  fio --name=first --ioengine=nbd --uri="$(uri fresh)" --rw=randwrite --bs=4k --iodepth=16 --numjobs=4 \
  --size=64M --io_size=8M --output-format=json --output="$T/fio.json"
check "no damage reported for concurrent first writes (no read-repair or missing-file lines)" \
  bash -c '! tail -n +"$1" "$2" | grep -E "read-repair|chunk file (was )?missing|repairing"' _ "$since" "$T/master.log"

# ---------------------------------------------------------------------------------------------
# Repair after a grow: chunk 4 of a volume grown from 2 MiB to 4 MiB while the daemon runs.
qbdctl resize grown --size 4M >/dev/null || die grown "resize failed"
wait_until 30 bash -c '[ "$(nbdinfo --size "$1")" = 4194304 ]' _ "$(uri grown)" || die grown "the daemon did not grow the volume"
head -c 1M /dev/urandom >"$T/grown.bin"
check "1 MiB written at 3 MiB of the grown volume" \
  nbdsh -u "$(uri grown)" -c "h.pwrite(open('$T/grown.bin','rb').read(), 3 * 1048576); h.flush()"
rm -f "$(chunk_path node-c "$NR_grown" c 3)"
repair grown >"$T/grown.out" 2>&1
rc=$?
[ $rc = 0 ] && pass "qbd-repair of the grown volume through the daemon exits 0" ||
  { fail "qbd-repair of the grown volume through the daemon exits 0" "exit $rc"; show "$T/grown.out"; }
check "part c's chunk file 4 (past the old end) is rebuilt" \
  cmp "$(chunk_path node-a "$NR_grown" a 3)" "$(chunk_path node-c "$NR_grown" c 3)"
qbd_stop

# ---------------------------------------------------------------------------------------------
# A lone copy that claims a generation no write of this volume made (a later epoch, with a valid
# checksum: a file from elsewhere or a forged record) is the suspect, not the agreeing parts.
qbdctl create forged --size 8M --replicas 3 >/dev/null || die setup "qbdctl create forged failed"
NR_forged=$(nr forged)
head -c 8M /dev/urandom >"$T/forged.bin"
qbd_start
check "8 MiB written to volume forged" nbdcopy --flush "$T/forged.bin" "$(uri forged)"
qbd_stop
forge() { # a valid block with a generation 5 epochs ahead on part a, block 3 of chunk file 1
  local epoch sum gen
  epoch=$(sed -nE 's/^epoch = ([0-9]+)$/\1/p' "$T/node-a/$NR_forged/.epoch")
  head -c $BS /dev/urandom >"$T/forged-block.bin"
  sum=$(xxh3 "$T/forged-block.bin")
  gen=$(((epoch + 5) << 40 | 7))
  python3 - "$(chunk_path node-a "$NR_forged" a 0)" "$(data_at 3)" "$(pair_at 3)" "$T/forged-block.bin" "$gen" \
    "$sum" "$(address_key "$NR_forged" 0 3 "$gen")" <<'PY'
import struct, sys
path, off, pair_off, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), open(sys.argv[4], "rb").read()
gen, csum, key = int(sys.argv[5]), int(sys.argv[6], 16), int(sys.argv[7], 16)
with open(path, "r+b") as f:
    f.seek(off)
    f.write(data)
    f.seek(pair_off)
    f.write(struct.pack("<QQ", gen, csum ^ key) + bytes(16))
PY
}
forge
expect_findings "deep verify calls part a's copy with a generation of a later epoch a conflict (exit 1)" 1 "conflict a 1 3" --deep forged
repair forged >"$T/forged.out" 2>&1
rc=$?
[ $rc = 0 ] && grep -q "part a <- .*: rewrote 1 block: 3 (conflict)" "$T/forged.out" &&
  pass "offline qbd-repair rewrites the suspect copy from the agreeing parts" ||
  { fail "offline qbd-repair rewrites the suspect copy" "exit $rc"; show "$T/forged.out"; }
expect_findings "deep verify of volume forged is clean after the repair" 0 "" --deep forged
forge
agreed=$(grep -c "volume forged chunk 1: copies made to agree at first access" "$T/master.log")
qbd_start
expected_at "$T/forged.bin" $((3 * BS)) $BS "$T/want.bin"
check "NBD reads the agreeing copies' data, not the suspect copy's" \
  bash -c 'read_at "$1" $2 4096 "$3" && cmp "$3" "$4"' _ "$(uri forged)" $((3 * BS)) "$T/r.bin" "$T/want.bin"
check "the daemon's comparison after the first access rewrites the suspect copy" \
  wait_until 60 bash -c '[ "$(grep -c "volume forged chunk 1: copies made to agree at first access" "$1")" -gt "$2" ]' \
  _ "$T/master.log" "$agreed"
qbd_stop
expect_findings "deep verify of volume forged is clean after the daemon's comparison" 0 "" --deep forged

# ---------------------------------------------------------------------------------------------
# A misplaced chunk file or a misdirected record (layout-spec.md §4.2: each slot's check binds the
# data to its volume, chunk and block) is a corrupt copy on the part that holds it: verify names
# it, repair rewrites it from the good copies, and reads never return it.
qbdctl create misplaced --size 16M --replicas 3 >/dev/null || die setup "qbdctl create misplaced failed"
NR_mis=$(nr misplaced)
head -c 16M /dev/urandom >"$T/misplaced.bin"
qbd_start
check "16 MiB written to volume misplaced" nbdcopy --flush "$T/misplaced.bin" "$(uri misplaced)"
qbd_stop
cp "$(chunk_path node-a "$NR_mis" a 1)" "$(chunk_path node-a "$NR_mis" a 0)"
expect_findings "part a's chunk file 2 copied over its chunk file 1: deep verify calls part a's copy of every block of chunk 1 corrupt (exit 1)" \
  1 "corrupt a 1 $(seq -s, 0 1023)" --deep misplaced
qbd_start
check "NBD reads of chunk 1 return the volume's data, not chunk 2's" \
  bash -c 'read_at "$1" 0 $((4 * 1048576)) "$2" && cmp "$2" <(head -c $((4 * 1048576)) "$3")' \
  _ "$(uri misplaced)" "$T/r.bin" "$T/misplaced.bin"
qbd_stop
repair misplaced >"$T/misplaced.out" 2>&1
rc=$?
[ $rc = 0 ] && pass "offline qbd-repair rewrites part a's misplaced chunk file 1 (exit 0)" ||
  { fail "offline qbd-repair of the misplaced file" "exit $rc"; show "$T/misplaced.out"; }
expect_findings "deep verify of volume misplaced is clean after the repair" 0 "" --deep misplaced
check "part a's chunk file 1 is again identical to part b's" \
  cmp "$(chunk_path node-a "$NR_mis" a 0)" "$(chunk_path node-b "$NR_mis" b 0)"
# One record (data and slot pair) of part b copied over its neighbour: what a misdirected write does.
python3 - "$(chunk_path node-b "$NR_mis" b 2)" "$BS" "$CHUNK" <<'PY'
import sys
path, bs, cs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "r+b") as f:
    f.seek(5 * bs); data = f.read(bs)
    f.seek(cs + 5 * 32); pair = f.read(32)
    f.seek(4 * bs); f.write(data)
    f.seek(cs + 4 * 32); f.write(pair)
PY
expect_findings "part b's block 5 (data and slots) copied over its block 4: deep verify calls part b's block 4 of chunk 3 corrupt (exit 1)" \
  1 "corrupt b 3 4" --deep misplaced
qbd_start
expected_at "$T/misplaced.bin" $((2 * CHUNK + 4 * BS)) $BS "$T/want.bin"
check "NBD reads block 4 of chunk 3 as written, whichever part serves it" \
  bash -c 'for i in 1 2 3 4 5 6; do read_at "$1" $2 4096 "$3" && cmp -s "$3" "$4" || exit 1; done' \
  _ "$(uri misplaced)" $((2 * CHUNK + 4 * BS)) "$T/r.bin" "$T/want.bin"
check "the daemon's comparison at the first access rewrites part b's block 4 from the good copies" \
  wait_for_line "$T/master.log" "volume misplaced chunk 3: copies made to agree at first access" 60
qbd_stop
check "part b's chunk file 3 is again identical to part c's" \
  cmp "$(chunk_path node-b "$NR_mis" b 2)" "$(chunk_path node-c "$NR_mis" c 2)"
expect_findings "deep verify of volume misplaced is clean after that repair" 0 "" --deep misplaced
