#!/usr/bin/env bash
# qbdctl convert and qbdctl block on a format-1 volume written by the qbd-master of commit eb53ac1
# (tests/fixtures/format1): qbd-master refuses to start on it and names `qbdctl convert`; convert
# refuses while the configuration's lock is held or a part says the volume is open, takes a corrupt block from
# another part, rewrites every chunk file in format 2 (unwritten blocks stay holes, generations
# kept) and switches .meta on every part; qbd-verify --deep finds it clean; qbd-master serves
# exactly the fixture's data (unwritten and trimmed blocks read as zeros); a second convert changes
# nothing; qbdctl block reads written, unwritten and never-written blocks.
. "$(dirname "$0")/lib.sh"

FIX="$IT_DIR/../fixtures/format1"
VOLNR=1
F1_SIZE=$((16 * (4096 + 16))) # a format-1 chunk file: 16 records of a block and 16 bytes of metadata
F2_SIZE=$((65536 + 16 * 32))  # a format-2 chunk file: the data area, then a slot pair per block

tree_sum() { # every file under the three parts, with its size and checksum
  (cd "$T" && find node-a node-b node-c -type f -print0 | sort -z | xargs -0 md5sum)
}
chunk_sizes() { # the sizes of every chunk file of the volume, one per line, deduplicated
  find "$T"/node-?/$VOLNR/? -type f -name '[0-9]*' -printf '%s\n' | sort -u
}
block_json() { # OFFSET FIELD...: a field of `qbdctl block v OFFSET --json` (a python expression on j)
  qbdctl block v "$1" --json | python3 -c "import json, sys; j = json.load(sys.stdin); print($2)"
}

qbd_conf 3
tar -xzf "$FIX/format1.tar.gz" -C "$T" || die setup "unpacking $FIX/format1.tar.gz failed"
[ "$(chunk_sizes)" = "$F1_SIZE" ] || die setup "the fixture's chunk files are not all $F1_SIZE bytes: $(chunk_sizes | tr '\n' ' ')"

# --- before: the inspector reads format 1; qbd-master refuses the volume ---
qbdctl block v 8K >"$T/block-f1.out" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "format 1" "$T/block-f1.out" &&
  [ "$(grep -c 'record at byte 8224 (data), metadata at byte 12320' "$T/block-f1.out")" = 3 ] &&
  [ "$(grep -c 'verdict: good' "$T/block-f1.out")" = 3 ]; then
  pass "qbdctl block reads a format-1 block: its record and metadata offsets, good on every part"
else
  fail "qbdctl block reads a format-1 block: its record and metadata offsets, good on every part" "exit $rc"
  show "$T/block-f1.out" 30
fi
GEN8=$(block_json 32K "j['parts'][0]['stored']['generation']['value']")
GEN0=$(block_json 0 "j['parts'][0]['stored']['generation']['value']")

before=$(tree_sum)
timeout 20 "$QBD_BIN/qbd-master" --config "$T/qbd.conf" >"$T/master-f1.log" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "volume v: its chunk files are in format 1.*run \`qbdctl convert v\`" "$T/master-f1.log" &&
  [ "$(tree_sum)" = "$before" ]; then
  pass "qbd-master refuses the format-1 volume (exit 2), names 'qbdctl convert v' and writes nothing"
else
  fail "qbd-master refuses the format-1 volume (exit 2), names 'qbdctl convert v' and writes nothing" "exit $rc"
  show "$T/master-f1.log"
fi
# The configuration's lock (qbd-master holds it while it runs) held by another process.
flock -o "$T/qbd.sock.lock" sleep 60 &  # blocks until free: never -n, which fails at once on a slow machine
LOCK_PID=$!
track $LOCK_PID
wait_until 60 bash -c "! flock -n '$T/qbd.sock.lock' true" || die setup "flock did not take $T/qbd.sock.lock"
qbdctl convert v >"$T/convert-locked.out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "is qbd-master starting or stopping" "$T/convert-locked.out" && [ "$(tree_sum)" = "$before" ]; then
  pass "convert refuses while the configuration's lock is held (exit 1) and changes nothing"
else
  fail "convert refuses while the configuration's lock is held (exit 1) and changes nothing" "exit $rc"
  show "$T/convert-locked.out"
fi
kill $LOCK_PID
wait_pid $LOCK_PID 5

touch "$T/node-b/$VOLNR/.running"
before=$(tree_sum)
qbdctl convert v >"$T/convert-open.out" 2>&1
rc=$?
if [ $rc = 1 ] && grep -q "node-b/1/.running is present" "$T/convert-open.out" && [ "$(tree_sum)" = "$before" ]; then
  pass "convert refuses a volume whose part says it is open (.running; exit 1) and changes nothing"
else
  fail "convert refuses a volume whose part says it is open (.running; exit 1) and changes nothing" "exit $rc"
  show "$T/convert-open.out"
fi
rm "$T/node-b/$VOLNR/.running"

bad_usage() { # NAME ARGS...: qbdctl exits 2 and changes nothing
  local name=$1 rc
  shift
  before=$(tree_sum)
  qbdctl "$@" >"$T/usage.out" 2>&1
  rc=$?
  [ $rc = 2 ] && [ "$(tree_sum)" = "$before" ] && pass "$name" || {
    fail "$name" "exit $rc"
    show "$T/usage.out" 5
  }
}
bad_usage "convert without a volume is a usage error (exit 2)" convert
bad_usage "convert of an unknown volume is a usage error (exit 2)" convert nosuch
bad_usage "block without an offset is a usage error (exit 2)" block v
bad_usage "block beyond the volume's end is a usage error (exit 2)" block v 512K
bad_usage "block with a malformed offset is a usage error (exit 2)" block v 12Q

# --- convert ---
# Part b's copy of block 16 (chunk file 2, block 0) rots: the conversion takes it from part a.
flip_byte "$T/node-b/$VOLNR/b/2" 100
qbdctl convert v >"$T/convert.out" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "volume v: converted to format 2: 7 chunk(s), 21 chunk file(s) rewritten, 1 block(s) taken from another part" "$T/convert.out" &&
  grep -q "note: volume v chunk file 2 part b: 1 block(s) failed their check (0): taken from part a" "$T/convert.out"; then
  pass "convert rewrites the 21 chunk files and takes part b's corrupt block from part a"
else
  fail "convert rewrites the 21 chunk files and takes part b's corrupt block from part a" "exit $rc"
  show "$T/convert.out"
fi
[ "$(chunk_sizes)" = "$F2_SIZE" ] && pass "every chunk file has format 2's size ($F2_SIZE bytes)" ||
  fail "every chunk file has format 2's size ($F2_SIZE bytes)" "sizes: $(chunk_sizes | tr '\n' ' ')"
check "no chunk file 4 was made (that chunk was never written) and no temporary file is left" \
  bash -c "! ls '$T'/node-?/$VOLNR/?/4 2>/dev/null && ! find '$T' -name '.*.tmp' | grep -q ."
check ".meta says format 2 and block_meta_size 32, serial 2, on every part" \
  bash -c "for p in a b c; do f='$T'/node-\$p/$VOLNR/.meta; grep -qx 'format = 2' \$f && grep -qx 'block_meta_size = 32' \$f && grep -qx 'serial = 2' \$f || exit 1; done"
# Chunk file 8 holds block 127 only: the other 15 blocks of its data area stay holes.
alloc=$(($(stat -c %b "$T/node-a/$VOLNR/a/8") * 512))
[ "$alloc" -le 16384 ] && pass "unwritten blocks stay holes (chunk file 8 holds one block: $alloc bytes allocated)" ||
  fail "unwritten blocks stay holes (chunk file 8 holds one block: $alloc bytes allocated)" "more than 16384"
check "blocks 0 and 8 keep their generations" \
  test "$(block_json 0 "j['parts'][0]['slots'][0]['generation']['value']") $(block_json 32K "j['parts'][0]['slots'][0]['generation']['value']")" = "$GEN0 $GEN8"
expect_findings "qbd-verify --deep finds the converted volume clean" 0 "" --deep

before=$(tree_sum)
qbdctl convert v >"$T/convert2.out" 2>&1
rc=$?
if [ $rc = 0 ] && grep -q "volume v: already in format 2, nothing to convert" "$T/convert2.out" && [ "$(tree_sum)" = "$before" ]; then
  pass "a second convert exits 0, says so and changes nothing"
else
  fail "a second convert exits 0, says so and changes nothing" "exit $rc"
  show "$T/convert2.out"
fi

# --- qbdctl block after the conversion, daemon down ---
qbdctl block v 4K >"$T/block-w.out" 2>&1
rc=$?
if [ $rc = 0 ] && [ "$(grep -c 'verdict: good (slot 0)' "$T/block-w.out")" = 3 ] &&
  [ "$(grep -c 'data at byte 4096, slot pair at byte 65568' "$T/block-w.out")" = 3 ] &&
  grep -q "judge: source part a (generation .*); every copy agrees" "$T/block-w.out"; then
  pass "qbdctl block on a written block: offsets, slot 0 good on every part, the judge's source"
else
  fail "qbdctl block on a written block: offsets, slot 0 good on every part, the judge's source" "exit $rc"
  show "$T/block-w.out" 40
fi
qbdctl block v $((71 * 4096)) >"$T/block-t.out" 2>&1
rc=$?
[ $rc = 0 ] && [ "$(grep -c 'verdict: unwritten' "$T/block-t.out")" = 3 ] &&
  pass "qbdctl block on a trimmed block: unwritten on every part (exit 0)" || {
  fail "qbdctl block on a trimmed block: unwritten on every part (exit 0)" "exit $rc"
  show "$T/block-t.out" 40
}
qbdctl block v 200K >"$T/block-u.out" 2>&1
rc=$?
[ $rc = 0 ] && grep -q "judge: the chunk was never written on any part" "$T/block-u.out" &&
  pass "qbdctl block on a never-written chunk: no file on any part, reads as zeros (exit 0)" || {
  fail "qbdctl block on a never-written chunk: no file on any part, reads as zeros (exit 0)" "exit $rc"
  show "$T/block-u.out" 40
}
check "qbdctl block --json says the written block is readable from part a" \
  test "$(block_json 4K "j['judge']['source'], j['judge']['readable'], j['chunk_file'], j['block']")" = "a True 1 1"

# --- served ---
qbd_start
check "qbd-master serves exactly the fixture's data (unwritten and trimmed blocks read as zeros)" \
  /usr/bin/python3 "$FIX/pattern.py" check "$(uri v)"
qbd_stop
expect_findings "qbd-verify --deep is still clean after qbd-master served the volume" 0 "" --deep

# A block corrupt on every part: the inspector says so and exits 1.
for p in a b c; do flip_byte "$T/node-$p/$VOLNR/$p/1" $((2 * 4096 + 9)); done
qbdctl block v 8K >"$T/block-lost.out" 2>&1
rc=$?
[ $rc = 1 ] && [ "$(grep -c 'verdict: corrupt' "$T/block-lost.out")" = 3 ] && grep -q "DATA LOST" "$T/block-lost.out" &&
  pass "qbdctl block on a block without a good copy: corrupt on every part, exit 1" || {
  fail "qbdctl block on a block without a good copy: corrupt on every part, exit 1" "exit $rc"
  show "$T/block-lost.out" 40
}
