#!/usr/bin/env bash
# Parts whose file systems fill up (small tmpfs mounts):
#  1. every part full: the NBD client's writes and flushes fail with ENOSPC, data written before
#     stays intact and its reads never fail; once the parts have room again, they come back and
#     the volume takes writes; after a clean stop qbd-verify finds nothing;
#  2. one part full: writes go on (on the other parts), the full part logs a few state changes,
#     not one per write, and resyncs once space is freed; after a clean stop qbd-verify finds
#     nothing (the dirty maps and chunk maps on disk agree with the resync) without qbd-repair;
#  3. qbd-repair, offline, with a part full: says "part b ... no space left on device", exits 1,
#     and repairs everything once the space is back.
. "$(dirname "$0")/lib.sh"

MIB=$((1 << 20))
qbd_conf 3
for l in a b c; do
  mount -t tmpfs -o size=40M tmpfs "$(node_dir $l)" || die setup "mount tmpfs on node-$l failed"
  track_mount "$(node_dir $l)"
done
qbdctl create full --size 64M --replicas 3 >/dev/null || die setup "qbdctl create full failed"
qbdctl create one --size 64M --replicas 3 >/dev/null || die setup "qbdctl create one failed"
volnr() { # NAME -> the volume's number (its directory on the parts)
  grep -l "^name = $1\$" "$(node_dir a)"/*/.meta | xargs -n 1 dirname | xargs -n 1 basename
}
VFULL=$(volnr full)
VONE=$(volnr one)

# nbdio URI CMD ARGS...: libnbd from python (nbdsh's module), one connection; nbd.Error.errno is
# the errno's name ("ENOSPC").
#   fill SEED FROM TO     1 MiB writes of pattern SEED from MiB FROM to MiB TO (exclusive) and a
#                         flush; prints "ok" or "ENOSPC at MiB N" / "flush ENOSPC"; other errors
#                         exit 1
#   check SEED FROM TO    reads MiB [FROM, TO) and compares them with pattern SEED; exit 1 on a
#                         read error or a difference
#   nospace MIB           a 64 KiB write at MiB MIB, then a flush: both must fail with ENOSPC
#   readall               reads the whole device in 1 MiB requests; exit 1 on any read error
cat >"$T/nbdio.py" <<'EOF'
import errno, hashlib, sys
import nbd
MIB = 1 << 20
def block(seed, mib):
    return hashlib.sha256(f"{seed}:{mib}".encode()).digest() * (MIB // 32)
uri, cmd = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
if cmd == "fill":
    seed, lo, hi = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    for m in range(lo, hi):
        try:
            h.pwrite(block(seed, m), m * MIB)
        except nbd.Error as e:
            if e.errno == "ENOSPC":
                print(f"ENOSPC at MiB {m}")
                break
            print(f"write at MiB {m} failed: {e}")
            sys.exit(1)
    try:
        h.flush()
    except nbd.Error as e:
        if e.errno == "ENOSPC":
            print("flush ENOSPC")
            sys.exit(0)
        print(f"flush failed: {e}")
        sys.exit(1)
    print("ok")
elif cmd == "check":
    seed, lo, hi = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    for m in range(lo, hi):
        if h.pread(MIB, m * MIB) != block(seed, m):
            print(f"MiB {m} differs")
            sys.exit(1)
    print("ok")
elif cmd == "nospace":
    for what, call in (("write", lambda: h.pwrite(b"x" * 65536, int(sys.argv[3]) * MIB)), ("flush", h.flush)):
        try:
            call()
            sys.exit(f"the {what} succeeded")
        except nbd.Error as e:
            if e.errno != "ENOSPC":
                sys.exit(f"the {what} failed with {e}, not ENOSPC")
    print("ok")
elif cmd == "readall":
    size = h.get_size()
    bad = 0
    for off in range(0, size, MIB):
        try:
            h.pread(min(MIB, size - off), off)
        except nbd.Error as e:
            bad += 1
            print(f"read at {off} failed: {e}")
    print(f"{size // MIB} reads, {bad} failed")
    sys.exit(1 if bad else 0)
EOF
nbdio() { timeout 300 python3 "$T/nbdio.py" "$@"; }
state_lines() { # VOLUME PART -> the number of state changes qbd-master logged for that part
  grep -c "volume $1 part $2: state " "$T/master.log"
}
in_sync() { # VOLUME PART...: each part's last state line says "up"
  local p
  for p in "${@:2}"; do
    grep "volume $1 part $p: state " "$T/master.log" | tail -n 1 | grep -q "state up" || return 1
  done
}

# --- 1. every part full --------------------------------------------------------------------------
qbd_start
check "all parts full: 16 MiB written and flushed first" bash -c "[ \"\$(timeout 300 python3 '$T/nbdio.py' '$(uri full)' fill A 0 16)\" = ok ]"
nbdio "$(uri full)" fill B 16 64 >"$T/fill1.out" 2>&1
check "all parts full: the client's write fails with ENOSPC" grep -q '^ENOSPC at MiB' "$T/fill1.out"
show "$T/fill1.out" 3
check "all parts full: the next write and a flush fail with ENOSPC too" nbdio "$(uri full)" nospace 60
check "all parts full: the data written before reads back intact" nbdio "$(uri full)" check A 0 16
check "all parts full: no read fails, of any part of the volume" nbdio "$(uri full)" readall
check "all parts full: the log names the parts as out of space, not as failing" \
  grep -qE "volume full part [abc]: state full: out of space" "$T/master.log"
for l in a b c; do mount -o remount,size=160M "$(node_dir $l)" || die "remount" "remount of node-$l failed"; done
if wait_until 120 in_sync full a b c; then
  pass "all parts full: space returns and every part is in sync again"
else
  fail "all parts full: space returns and every part is in sync again" "see master.log"
  show "$T/master.log" 20
fi
check "all parts full: after space returns, writes succeed" \
  bash -c "[ \"\$(timeout 300 python3 '$T/nbdio.py' '$(uri full)' fill C 16 48)\" = ok ]"
check "all parts full: and read back" nbdio "$(uri full)" check C 16 48
check "all parts full: the first data is still intact" nbdio "$(uri full)" check A 0 16
qbd_stop
check "all parts full: qbd-verify finds nothing after a clean stop" verify full

# --- 2. one part full ----------------------------------------------------------------------------
# Part b's file system is filled by a file beside the parts.
dd if=/dev/zero of="$(node_dir b)/filler" bs=1M status=none 2>/dev/null
qbd_start
nbdio "$(uri one)" fill D 0 32 >"$T/fill2.out" 2>&1
check "one part full: every write and the flush succeed on the other parts" grep -qx ok "$T/fill2.out"
show "$T/fill2.out" 2
check "one part full: the data reads back" nbdio "$(uri one)" check D 0 32
check "one part full: part b is full, a and c are in sync" \
  bash -c "grep 'volume one part b: state ' '$T/master.log' | tail -n 1 | grep -q 'state full: out of space' &&
           ! grep -q 'volume one part [ac]: state ' '$T/master.log'"
nbdio "$(uri one)" fill E 32 48 >/dev/null 2>&1
rm -f "$(node_dir b)/filler"
if wait_until 120 in_sync one b; then
  pass "one part full: once space is freed part b resyncs and is in sync"
else
  fail "one part full: once space is freed part b resyncs and is in sync" "see master.log"
  show "$T/master.log" 20
fi
n=$(state_lines one b)
echo "    | part b logged $n state changes (full, resyncing, up)"
check "one part full: part b logged at most 3 state changes, not one per write" test "$n" -le 3
check "one part full: everything written reads back" \
  bash -c "timeout 300 python3 '$T/nbdio.py' '$(uri one)' check D 0 32 && timeout 300 python3 '$T/nbdio.py' '$(uri one)' check E 32 48"
qbd_stop
check "one part full: qbd-verify exits 0 after a clean stop, without qbd-repair" verify one
check "one part full: the chunk map copies are identical on every part" \
  bash -c "cmp '$(node_dir a)/$VONE/.chunkmap' '$(node_dir b)/$VONE/.chunkmap' &&
           cmp '$(node_dir a)/$VONE/.chunkmap' '$(node_dir c)/$VONE/.chunkmap'"
check "one part full: part b's dirty map copies are identical and clear" \
  bash -c "cmp '$(node_dir a)/$VONE/.dirty-b' '$(node_dir c)/$VONE/.dirty-b' &&
           [ -z \"\$(tail -c +33 '$(node_dir a)/$VONE/.dirty-b' | tr -d '\\000')\" ]"

# --- 3. offline repair with a part full ----------------------------------------------------------
rm -f "$(node_dir b)/$VONE/b/2" "$(node_dir b)/$VONE/b/3"
dd if=/dev/zero of="$(node_dir b)/filler" bs=1M status=none 2>/dev/null
repair one >"$T/repair1.out" 2>&1
rc=$?
show "$T/repair1.out" 8
check "repair with part b full: exits 1 (copies not repaired)" test "$rc" = 1
check "repair with part b full: says part b has no space left" \
  grep -qiE "part b.*no space left on device" "$T/repair1.out"
check "repair with part b full: no spurious flush failure" bash -c "! grep -q 'flush reached' '$T/repair1.out'"
rm -f "$(node_dir b)/filler"
repair one >"$T/repair2.out" 2>&1
rc=$?
show "$T/repair2.out" 4
check "repair once space is back: exits 0" test "$rc" = 0
check "and qbd-verify exits 0" verify one
