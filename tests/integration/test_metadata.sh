#!/usr/bin/env bash
# Metadata survives a bad minority (layout-spec.md §1.1): one backend's copy of .volumesmeta, .meta,
# .epoch, .chunkmap or a dirty map made garbage, cut short, emptied or removed. For each: qbd-verify
# --json exits 1 with valid JSON naming the copy; qbd-master starts, serves the data written before
# and logs exactly one line naming the copy (and the line, for a malformed text file); qbd-repair
# rewrites the copy (identical to a good one) and verify is clean after. A bad majority of any of
# them: qbd-master refuses (exit 2) naming file and line, and changes nothing. Every chunk map copy
# zeroed: verify exits 1, repair rebuilds the map from the chunk files, verify exits 0.
. "$(dirname "$0")/lib.sh"

qbd_conf 3
qbdctl create v --size 64M --replicas 3 >/dev/null || die setup "qbdctl create failed"
head -c 12M /dev/urandom >"$T/data.bin"
qbd_start
nbdcopy --flush "$T/data.bin" "$(uri v)" || die setup "nbdcopy in failed"
qbd_stop || die setup "qbd-master did not stop cleanly"
expect_findings "setup: the volume verifies clean" 0 ""

tree_sum() { # checksums of every file of the three backends (temporary files aside)
  (cd "$T" && find node-a node-b node-c -type f ! -name '*.tmp.*' -print0 | sort -z | xargs -0 md5sum)
}

reads_back() { # the data written at setup reads back through NBD
  nbdsh -u "$(uri v)" -c "
d = open('$T/data.bin', 'rb').read()
assert h.pread(len(d), 0) == d, 'data differs'
assert h.pread(4096, 40 << 20) == bytes(4096), 'unwritten block is not zero'"
}

damage() { # FILE MODE: garbage | truncated | empty | missing
  case $2 in
  garbage) printf 'qbd\xff\xfe\x00 not = a metadata \x80 file\n\x01\x02' >"$1" ;;
  truncated) truncate -s $(($(stat -c %s "$1") / 2)) "$1" ;;
  empty) : >"$1" ;;
  missing) rm -f "$1" ;;
  esac
}

# verify_names FILE REL: qbd-verify's JSON in FILE parses and holds a "metadata" finding whose
# `where` is the copy REL (e.g. node-b/1/.meta).
verify_names() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1], encoding="utf-8", errors="strict"))
fs = r["findings"] + [f for v in r["volumes"] for f in v["findings"]]
hits = [f for f in fs if f["kind"] == "metadata" and f["where"].endswith("/" + sys.argv[2])]
if not hits:
    print("no metadata finding names", sys.argv[2], "; findings:", [(f["kind"], f["where"], f["detail"]) for f in fs])
    sys.exit(1)
print(hits[0]["detail"])
EOF
}

# log_names_once SINCE REL TEXT_FILE: exactly one master.log line after line SINCE names the copy
# REL; for a malformed text file it also names the line (REL:N:).
log_names_once() {
  local n
  n=$(tail -n +"$1" "$T/master.log" | grep -cF -- "$2")
  if [ "$n" != 1 ]; then
    echo "$n master.log lines name $2:"
    tail -n +"$1" "$T/master.log" | grep -F -- "$2"
    return 1
  fi
  if [ "$3" = yes ] && ! tail -n +"$1" "$T/master.log" | grep -qE -- "$2:[0-9]+: "; then
    echo "the line naming $2 does not name a line: $(tail -n +"$1" "$T/master.log" | grep -F -- "$2")"
    return 1
  fi
}

# One file on node-b, damaged one way: REL (path under the backend) GOOD (a copy that must equal
# the repaired one) MODE TEXT (yes for a text file).
one_case() {
  local rel=$1 good=$2 mode=$3 text=$4 name="node-b/$1 $3" since rc detail
  damage "$T/node-b/$rel" "$mode"
  verify --json >"$T/case.json" 2>"$T/case.err"
  rc=$?
  if [ "$rc" = 1 ] && detail=$(verify_names "$T/case.json" "node-b/$rel" 2>&1); then
    pass "$name: verify --json exits 1, parses, and names the copy ($detail)"
  else
    fail "$name: verify --json exits 1, parses, and names the copy" "exit $rc: $detail"
    show "$T/case.err"
  fi
  since=$(($(wc -l <"$T/master.log") + 1))
  qbd_start
  check "$name: qbd-master starts and serves the data written before" reads_back
  qbd_stop
  check "$name: master.log has one line naming the copy" log_names_once "$since" "node-b/$rel" \
    "$([ "$text" = yes ] && [ "$mode" != missing ] && echo yes || echo no)"
  repair >"$T/case-repair.out" 2>&1
  rc=$?
  if [ "$rc" = 0 ] && cmp -s "$T/node-b/$rel" "$T/$good/$rel"; then
    pass "$name: qbd-repair exits 0 and the copy equals $good's"
  else
    fail "$name: qbd-repair exits 0 and the copy equals $good's" "exit $rc"
    show "$T/case-repair.out"
    cp "$T/$good/$rel" "$T/node-b/$rel" # the next case starts from good copies
  fi
  expect_findings "$name: verify is clean after repair" 0 ""
}

for mode in garbage truncated empty missing; do
  one_case .volumesmeta node-a "$mode" yes
  one_case 1/.meta node-a "$mode" yes
  one_case 1/.epoch node-a "$mode" yes
  one_case 1/.chunkmap node-a "$mode" no
  one_case 1/.dirty-a node-c "$mode" no # part a's dirty map lives on b and c
done

# --- a bad majority: qbd-master refuses, naming file and line, and writes nothing ---
refuses() { # REL HOLDER1 HOLDER2 WANT_REGEX
  local rel=$1 want=$4 rc before
  cp "$T/$2/$rel" "$T/save1"
  cp "$T/$3/$rel" "$T/save2"
  damage "$T/$2/$rel" garbage
  damage "$T/$3/$rel" garbage
  before=$(tree_sum)
  timeout 20 "$QBD_BIN/qbd-master" --config "$T/qbd.conf" >"$T/refuse.out" 2>&1 </dev/null
  rc=$?
  if [ "$rc" = 2 ] && grep -qE -- "$want" "$T/refuse.out"; then
    pass "bad majority of $rel: qbd-master exits 2 naming the file (and line)"
  else
    fail "bad majority of $rel: qbd-master exits 2 naming the file (and line)" \
      "exit $rc (124: still running), wanted /$want/: $(tail -n 3 "$T/refuse.out")"
  fi
  [ "$(tree_sum)" = "$before" ] && pass "bad majority of $rel: the refused start changes nothing" ||
    fail "bad majority of $rel: the refused start changes nothing" "files changed"
  verify --json >"$T/maj.json" 2>/dev/null
  rc=$?
  if [ "$rc" != 0 ] && python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$T/maj.json"; then
    pass "bad majority of $rel: verify --json exits $rc with valid JSON"
  else
    fail "bad majority of $rel: verify --json exits non-zero with valid JSON" "exit $rc"
  fi
  cp "$T/save1" "$T/$2/$rel"
  cp "$T/save2" "$T/$3/$rel"
}
refuses .volumesmeta node-a node-b 'node-[ab]/\.volumesmeta:1: '
refuses 1/.meta node-a node-c 'node-[ac]/1/\.meta:1: '
refuses 1/.epoch node-b node-c 'node-[bc]/1/\.epoch:1: '
refuses 1/.chunkmap node-a node-b 'node-[ab]/1/\.chunkmap: .*(bad magic|malformed)'
refuses 1/.dirty-a node-b node-c 'node-[bc]/1/\.dirty-a: .*(bad magic|malformed)'
expect_findings "after the bad-majority cases, verify is clean again" 0 ""

# --- every chunk map copy zeroed: repair rebuilds it from the chunk files ---
for l in a b c; do
  cp "$T/node-$l/1/.chunkmap" "$T/chunkmap-$l.good"
  dd if=/dev/zero of="$T/node-$l/1/.chunkmap" bs=1 count="$(stat -c %s "$T/node-$l/1/.chunkmap")" \
    conv=notrunc status=none
done
verify --json >"$T/zero.json" 2>&1
rc=$?
if [ "$rc" = 1 ] && python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$T/zero.json"; then
  pass "all chunk map copies zeroed: verify --json exits 1 with valid JSON"
else
  fail "all chunk map copies zeroed: verify --json exits 1 with valid JSON" "exit $rc"
fi
repair >"$T/zero-repair.out" 2>&1
rc=$?
if [ "$rc" = 0 ] && grep -q "rebuilt from the chunk files" "$T/zero-repair.out" &&
  ! grep -q "nothing to repair" "$T/zero-repair.out"; then
  pass "all chunk map copies zeroed: repair rebuilds the map from the chunk files (exit 0)"
else
  fail "all chunk map copies zeroed: repair rebuilds the map from the chunk files (exit 0)" "exit $rc"
  show "$T/zero-repair.out"
fi
check "the rebuilt chunk map copies equal the ones before the damage" \
  bash -c "for l in a b c; do cmp '$T/node-'\$l/1/.chunkmap '$T/chunkmap-'\$l.good || exit 1; done"
expect_findings "all chunk map copies zeroed: verify is clean after repair" 0 ""
qbd_start
check "after the rebuild qbd-master serves the data" reads_back
qbd_stop
