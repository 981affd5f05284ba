# shellcheck shell=bash
# Fixture verbs for the integration tests: the real qbd-master over local directories, driven by
# real NBD clients. Every test sources this file first:
#   . "$(dirname "$0")/lib.sh"
# It creates the test's scratch directory $T and an EXIT trap that unmounts what the test mounted,
# detaches its loop devices, stops every process it started (by PID) and removes $T.
# A test reports one line per check group: "PASS: <name>" or "FAIL: <name>: <reason>";
# scripts/run-tests.sh counts them. QBD_BIN (set by the runner) is the build's bin directory.

set -uo pipefail
# Debian's python3 first: nbdsh and `import nbd` (python3-libnbd) do not work with a pyenv python.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

if [ -z "${QBD_BIN:-}" ] || [ ! -d "$QBD_BIN" ]; then
  echo "FAIL: $(basename "$0" .sh): QBD_BIN is not a directory (run through scripts/run-tests.sh)"
  exit 1
fi
QBD_BIN=$(cd "$QBD_BIN" && pwd)
IT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
T=$(mktemp -d /tmp/qbd-it.XXXXXX)
cd "$T" || exit 1 # tools that drop files in the working directory (fio's verify state) drop them here
PORT=""
MASTER_PID=""
FAILS=0
PASSES=0
_PIDS=()
_MOUNTS=()
_LOOPS=()
_FUSES=()

# ---------------------------------------------------------------------------------------------
# Reporting

pass() { # NAME
  echo "PASS: $1"
  PASSES=$((PASSES + 1))
}

fail() { # NAME REASON (the reason is flattened onto the one FAIL line)
  local reason=${2:-failed}
  reason=${reason//$'\n'/ | }
  echo "FAIL: $1: $reason"
  FAILS=$((FAILS + 1))
}

die() { # NAME REASON: report a failed precondition and end the test (the trap cleans up)
  fail "$1" "$2"
  exit 1
}

show() { # FILE [LINES]: the last lines of FILE, indented so the runner does not count them
  [ -f "$1" ] && tail -n "${2:-20}" "$1" | sed 's/^/    | /'
  return 0
}

check() { # NAME CMD...: run CMD; pass if it exits 0, else fail and show the end of its output
  local name=$1 out="$T/.check.out" rc
  shift
  "$@" >"$out" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    pass "$name"
  else
    fail "$name" "'$*' exited with status $rc"
    show "$out" 25
  fi
  return $rc
}

# ---------------------------------------------------------------------------------------------
# Processes, mounts, loop devices

track() { _PIDS+=("$@"); } # PID...: killed by the EXIT trap if still running

untrack() { # PID
  local p keep=()
  for p in "${_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  _PIDS=("${keep[@]}")
}

alive() { # PID: running (a zombie does not count)
  [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

wait_pid() { # PID SECONDS: wait for our child PID to end, its exit status in WAIT_RC; 1 on timeout
  # (never call it in $(...): a subshell cannot wait for the test's children)
  local pid=$1 deadline
  deadline=$(($(date +%s%N) + $2 * 1000000000))
  WAIT_RC=""
  while alive "$pid"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
  wait "$pid" 2>/dev/null
  WAIT_RC=$?
  untrack "$pid"
  return 0
}

track_mount() { _MOUNTS+=("$1"); } # DIR: a filesystem mount, unmounted by the trap
track_loop() { _LOOPS+=("$1"); }   # DEV: a loop device, detached by the trap
track_fuse() { _FUSES+=("$1"); }   # DIR: a FUSE mountpoint, unmounted by the trap

untrack_mount() { # DIR
  local m keep=()
  for m in "${_MOUNTS[@]}"; do [ "$m" = "$1" ] || keep+=("$m"); done
  _MOUNTS=("${keep[@]}")
}
untrack_loop() { # DEV
  local l keep=()
  for l in "${_LOOPS[@]}"; do [ "$l" = "$1" ] || keep+=("$l"); done
  _LOOPS=("${keep[@]}")
}
untrack_fuse() { # DIR
  local f keep=()
  for f in "${_FUSES[@]}"; do [ "$f" = "$1" ] || keep+=("$f"); done
  _FUSES=("${keep[@]}")
}

_cleanup() {
  local rc=$? i p m deadline
  trap - EXIT INT TERM
  set +e
  for ((i = ${#_MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${_MOUNTS[i]}
    mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }
  done
  for m in "${_LOOPS[@]}"; do
    losetup "$m" >/dev/null 2>&1 && losetup -d "$m"
  done
  for m in "${_FUSES[@]}"; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m"; }
  done
  for p in "${_PIDS[@]}"; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
  deadline=$(($(date +%s) + 5))
  for p in "${_PIDS[@]}"; do
    while alive "$p" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    alive "$p" && kill -KILL "$p" 2>/dev/null
  done
  # A sanitizer build reports into master.log; a report there fails the test.
  if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|runtime error:' \
    "$T/master.log" 2>/dev/null; then
    grep -m 1 -A 12 -E 'ERROR: |runtime error:' "$T/master.log" | sed 's/^/    | /'
    fail "sanitizer" "qbd-master reported: $(grep -m 1 -oE '(ERROR: |runtime error:).*' "$T/master.log")"
    [ $rc -eq 0 ] && rc=1
  fi
  # Anything still mounted below $T (a test that died between mount and track): lazy unmount.
  awk -v t="$T/" 'index($2, t) == 1 { print $2 }' /proc/mounts 2>/dev/null | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null; done
  if [ -n "${QBD_KEEP:-}" ]; then
    echo "    | QBD_KEEP set: scratch directory kept at $T"
  else
    rm -rf --one-file-system "$T"
  fi
  [ $rc -eq 0 ] && [ "$FAILS" -gt 0 ] && rc=1
  exit $rc
}
trap _cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# ---------------------------------------------------------------------------------------------
# qbd fixture

free_port() { # prints a free TCP port on 127.0.0.1 (never 10809 or 10810, the default NBD and API ports)
  python3 - <<'EOF'
import socket
while True:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if port not in (10809, 10810):
        print(port)
        break
EOF
}

part_letter() { # INDEX (0-based) -> a, b, c, ...
  local letters=abcdefghijklmnopqrstuvwxyz
  echo "${letters:$1:1}"
}

node_dir() { # PART_LETTER -> the backend directory holding that part in the test config
  echo "$T/node-$1"
}

_conf_sets() { # KEY LINE...: one of the LINEs sets KEY
  local k=$1 l
  shift
  for l in "$@"; do [[ $l =~ ^[[:space:]]*${k}[[:space:]]*= ]] && return 0; done
  return 1
}

# qbd_conf NPARTS [EXTRA_GLOBAL_LINE...]: writes $T/qbd.conf with NPARTS local parts under $T,
# sets PORT. The parts share $T's file system, so the config allows a shared failure domain unless
# an extra line sets allow_shared_failure_domain itself.
qbd_conf() {
  local n=$1 i l parts=""
  shift
  PORT=$(free_port)
  for ((i = 0; i < n; i++)); do
    l=$(part_letter $i)
    parts+="${parts:+ }node-$l"
    mkdir -p "$T/node-$l"
  done
  {
    echo "# qbd integration test config ($(basename "$0"))"
    echo "listen = 127.0.0.1:$PORT"
    echo "parts = $parts"
    _conf_sets allow_shared_failure_domain "$@" || echo "allow_shared_failure_domain = true"
    # The REST API's default port (10810) is shared by everything on this machine.
    _conf_sets api_listen "$@" || echo "api_listen = 127.0.0.1:$(free_port)"
    # Attached devices' state: the test's own, never the host's /var/lib/qbd.
    _conf_sets state_dir "$@" || echo "state_dir = $T/state"
    for l in "$@"; do echo "$l"; done
    for ((i = 0; i < n; i++)); do
      l=$(part_letter $i)
      echo "[backend node-$l]"
      echo "path = node-$l"
    done
  } >"$T/qbd.conf"
}

uri() { # VOLUME -> nbd://127.0.0.1:PORT/VOLUME
  echo "nbd://127.0.0.1:$PORT/$1"
}

qbdctl() { # ARGS...: qbdctl against the test config
  "$QBD_BIN/qbdctl" --config "$T/qbd.conf" "$@"
}

master_running() { [ -n "$MASTER_PID" ] && alive "$MASTER_PID"; }

qbd_start() { # [EXTRA_ARGS...]: start qbd-master, wait until it serves NBD (fatal if it does not)
  local deadline
  if master_running; then die qbd_start "qbd-master is already running (pid $MASTER_PID)"; fi
  echo "=== $(date +%T.%N) qbd_start" >>"$T/master.log"
  "$QBD_BIN/qbd-master" --config "$T/qbd.conf" "$@" </dev/null >>"$T/master.log" 2>&1 &
  MASTER_PID=$!
  track "$MASTER_PID"
  deadline=$(($(date +%s%N) + 10000000000))
  while :; do
    if ! alive "$MASTER_PID"; then
      wait_pid "$MASTER_PID" 1
      show "$T/master.log"
      die qbd_start "qbd-master exited with status $WAIT_RC during start-up (see master.log above)"
    fi
    timeout 5 nbdinfo --list "nbd://127.0.0.1:$PORT" >/dev/null 2>&1 && return 0
    if [ "$(date +%s%N)" -gt "$deadline" ]; then
      show "$T/master.log"
      die qbd_start "qbd-master does not answer 'nbdinfo --list nbd://127.0.0.1:$PORT' within 10 s"
    fi
    sleep 0.1
  done
}

qbd_stop() { # [SIGNAL] [SECONDS]: signal qbd-master (TERM); expect exit 0 within SECONDS (20)
  local sig=${1:-TERM} secs=${2:-20}
  if ! master_running; then
    [ -n "$MASTER_PID" ] && wait_pid "$MASTER_PID" 1
    show "$T/master.log" 40
    fail "qbd_stop" "qbd-master is not running (it had exited with status ${WAIT_RC:-?})"
    MASTER_PID=""
    return 1
  fi
  echo "=== $(date +%T.%N) qbd_stop SIG$sig" >>"$T/master.log"
  kill -"$sig" "$MASTER_PID"
  if ! wait_pid "$MASTER_PID" "$secs"; then
    kill -KILL "$MASTER_PID"
    wait_pid "$MASTER_PID" 5
    show "$T/master.log"
    fail "qbd_stop" "qbd-master did not exit within $secs s of SIG$sig (killed)"
    return 1
  fi
  if [ "$WAIT_RC" != 0 ]; then
    show "$T/master.log"
    fail "qbd_stop" "qbd-master exited with status $WAIT_RC after SIG$sig"
    return 1
  fi
  return 0
}

qbd_kill() { # SIGKILL qbd-master and reap it
  master_running || return 0
  echo "=== $(date +%T.%N) qbd_kill" >>"$T/master.log"
  kill -KILL "$MASTER_PID"
  wait_pid "$MASTER_PID" 10
  return 0
}

chunk_path() { # NODE VOLNR PART CHUNK_INDEX (0-based: offset / chunk_size) -> chunk file path
  # layout-spec: <backend root>/<volnr>/<part letter>/<chunk index + 1>
  echo "$T/$1/$2/$3/$(($4 + 1))"
}

xxh3() { # FILE -> the XXH3-64 of FILE as 16 hex digits (xxhsum -H3)
  xxhsum -H3 "$1" | grep -oE '\b[0-9a-f]{16}\b' | head -n 1
}

# address_key VOLNR CHUNK_INDEX BLOCK GENERATION -> the AddressKey of layout-spec.md §4.2 (XXH3-64
# of the four numbers as u64 little-endian) as 16 hex digits: a slot's check is the data's XXH3
# XOR this.
address_key() {
  python3 -c "import struct, sys; sys.stdout.buffer.write(struct.pack('<QQQQ', *map(int, sys.argv[1:])))" "$@" |
    xxhsum -H3 | grep -oE '\b[0-9a-f]{16}\b' | head -n 1
}

# ---------------------------------------------------------------------------------------------
# qbd-verify and qbd-repair against the test config (a hung tool fails its check, never the run)

verify() { timeout 120 "$QBD_BIN/qbd-verify" --config "$T/qbd.conf" "$@"; }
repair() { timeout 300 "$QBD_BIN/qbd-repair" --config "$T/qbd.conf" "$@"; }

# findings JSON_FILE: one line per finding of `qbd-verify --json` that is not a note,
# "kind part chunk blocks", sorted (blocks as "1,5"; "-" for none).
findings() {
  python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
out = [f"{f['kind']} {f['part'] or '-'} {f['chunk'] or '-'} {','.join(map(str, f['blocks'])) or '-'}"
       for v in r["volumes"] for f in v["findings"] if f["severity"] > 0]
out += [f"{f['kind']} - - -" for f in r["findings"] if f["severity"] > 0]
print("\n".join(sorted(out)))
EOF
}

# expect_findings NAME EXIT EXPECTED [VERIFY_ARGS...]: qbd-verify --json reports exactly EXPECTED
# (lines as `findings` prints them) and exits with EXIT.
expect_findings() {
  local name=$1 want_rc=$2 want=$3 rc got
  shift 3
  verify --json "$@" >"$T/verify.json" 2>"$T/verify.err"
  rc=$?
  got=$(findings "$T/verify.json" 2>&1)
  if [ "$rc" = "$want_rc" ] && [ "$got" = "$want" ]; then
    pass "$name"
  else
    fail "$name" "exit $rc (want $want_rc); findings: $(echo "$got" | tr '\n' ';') want: $(echo "$want" | tr '\n' ';')"
    show "$T/verify.err"
  fi
}

flip_byte() { # FILE OFFSET: invert one byte in place
  python3 -c "
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(int(sys.argv[2])); b = f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0xFF]))" "$1" "$2"
}

# pattern ARGS...: patterned writes and their verification, for crash and shutdown tests. Every
# 4 KiB block written holds struct.pack("<QQ", block_number, iteration) repeated, so any block
# read back tells which write put it there.
#   pattern write URI LOG --flushed N --iter K [--depth D] [--max M]
#     writes blocks [0, N) with iteration K, flushes, logs "FLUSHED", then writes 64 KiB extents
#     at random beyond block N until the connection fails (D requests in flight, never two on the
#     same block), logging "S first count iter" on submit and "A first count iter" on completion.
#     With --max, it stops after M such writes have completed, logs "DONE" and disconnects.
#   pattern verify IMAGE LOG --flushed N --iter K [--acked]
#     blocks [0, N) must hold iteration K; every later block must be zero or hold an iteration
#     submitted for it; with --acked, it must hold its last acknowledged iteration (or zero if none)
#     or the iteration of a write to it still in flight.
pattern() {
  python3 - "$@" <<'EOF'
import argparse, os, random, struct, sys, time
BS, EXT = 4096, 16

def block(b, it):
    return struct.pack("<QQ", b, it) * (BS // 16)

def write(a):
    import nbd
    h = nbd.NBD()
    h.connect_uri(a.target)
    total = h.get_size() // BS
    log = open(a.log, "w", buffering=1)
    for first in range(0, a.flushed, 64):
        n = min(64, a.flushed - first)
        h.pwrite(b"".join(block(b, a.iter) for b in range(first, first + n)), first * BS)
    h.flush()
    log.write("FLUSHED\n")
    it = a.iter + 1
    busy = {}  # cookie -> (first, n, iter)
    inflight = set()
    extents = (total - a.flushed) // EXT
    submitted = 0
    try:
        while busy or a.max is None or submitted < a.max:
            while len(busy) < a.depth and (a.max is None or submitted < a.max):
                first = a.flushed + random.randrange(extents) * EXT
                if first in inflight:
                    continue
                buf = nbd.Buffer.from_bytearray(
                    bytearray(b"".join(block(b, it) for b in range(first, first + EXT))))
                log.write(f"S {first} {EXT} {it}\n")
                c = h.aio_pwrite(buf, first * BS)
                busy[c] = (first, EXT, it, buf)
                inflight.add(first)
                it += 1
                submitted += 1
            h.poll(-1)
            for c in list(busy):
                if h.aio_command_completed(c):
                    first, n, i, _ = busy.pop(c)
                    inflight.discard(first)
                    log.write(f"A {first} {n} {i}\n")
        log.write("DONE\n")
    except Exception as e:  # the server went away: that is how this ends
        log.write(f"END {type(e).__name__}: {e}\n")
    log.close()

def verify(a):
    submitted, acked, pending = {}, {}, {}
    for line in open(a.log):
        f = line.split()
        if f[0] in ("S", "A"):
            first, n, it = int(f[1]), int(f[2]), int(f[3])
            for b in range(first, first + n):
                if f[0] == "S":
                    submitted.setdefault(b, set()).add(it)
                    pending[b] = it
                else:
                    acked[b] = it
                    pending.pop(b, None)
    bad = 0
    counts = {"flushed": 0, "zero": 0, "acked": 0, "in flight": 0}
    zero = bytes(BS)
    with open(a.target, "rb") as img:
        b = 0
        while True:
            data = img.read(BS)
            if not data:
                break
            head = struct.unpack("<QQ", data[:16]) if data != zero else None
            whole = head is not None and data == block(*head) and head[0] == b
            if b < a.flushed:
                ok = data == block(b, a.iter)
                why = f"flushed block {b}: expected iteration {a.iter}, got {head}"
                counts["flushed"] += ok
            elif data == zero:
                ok = not a.acked or b not in acked
                why = f"block {b}: zeros, but iteration {acked.get(b)} was acknowledged"
                counts["zero"] += ok
            elif not whole:
                ok, why = False, f"block {b}: not one whole write (header {head})"
            elif a.acked:
                ok = head[1] in (acked.get(b), pending.get(b))
                why = (f"block {b}: iteration {head[1]}, last acknowledged {acked.get(b)}, "
                       f"in flight {pending.get(b)}")
                counts["acked" if head[1] == acked.get(b) else "in flight"] += ok
            else:
                ok = head[1] in submitted.get(b, ())
                why = f"block {b}: iteration {head[1]} was never written there"
                counts["acked" if head[1] == acked.get(b) else "in flight"] += ok
            if not ok:
                bad += 1
                if bad <= 10:
                    print(why)
            b += 1
    print(f"blocks: {counts}, bad: {bad}")
    sys.exit(1 if bad else 0)

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["write", "verify"])
ap.add_argument("target")
ap.add_argument("log")
ap.add_argument("--flushed", type=int, required=True)
ap.add_argument("--iter", type=int, required=True)
ap.add_argument("--depth", type=int, default=8)
ap.add_argument("--acked", action="store_true")
ap.add_argument("--max", type=int, help="writes after the flush (default: until the server goes away)")
a = ap.parse_args()
write(a) if a.mode == "write" else verify(a)
EOF
}

second_master() { # start a second qbd-master on the test config's backends (another node sharing them):
  # its own NBD port ($PORT2), REST API ($API2) and lock (admin_socket m2.sock), config $T/m2.conf,
  # log $T/m2.log; its pid in $M2 (tracked). Fatal when its API does not answer.
  PORT2=$(free_port)
  local api_port
  api_port=$(free_port)
  sed -e "s/^listen = .*/listen = 127.0.0.1:$PORT2/" -e "s/^api_listen = .*/api_listen = 127.0.0.1:$api_port/" \
    "$T/qbd.conf" >"$T/m2.conf"
  { head -n 1 "$T/m2.conf"; echo "admin_socket = m2.sock"; tail -n +2 "$T/m2.conf"; } >"$T/m2.conf.tmp"
  mv "$T/m2.conf.tmp" "$T/m2.conf"
  API2="http://127.0.0.1:$api_port"
  "$QBD_BIN/qbd-master" --config "$T/m2.conf" </dev/null >>"$T/m2.log" 2>&1 &
  M2=$!
  track "$M2"
  wait_until 20 curl -sf "$API2/v1/daemon" -o /dev/null || { show "$T/m2.log"; die "master 2" "its API does not answer"; }
}

api_address() { # HOST:PORT of the REST API of the test config (its last api_listen line)
  sed -n 's/^api_listen *= *//p' "$T/qbd.conf" | tail -n 1
}

metrics_text() { # the running qbd-master's GET /metrics (the Prometheus text format)
  curl -sS --max-time 10 "http://$(api_address)/metrics"
}

# check_multi_conn NAME URI OFFSET: two connections; what one writes, trims, zeroes or partly writes
# at OFFSET (8 KiB there), the other reads at once (CAN_MULTI_CONN semantics, through any cache).
check_multi_conn() {
  python3 - "$2" "$3" >"$T/multi.out" 2>&1 <<'EOF'
import nbd, sys
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(sys.argv[1]); b.connect_uri(sys.argv[1])
assert a.can_multi_conn(), "the export does not advertise multi-conn"
off = int(sys.argv[2])
b.pread(8192, off)                       # b caches the old blocks
a.pwrite(b"\x42" * 8192, off)
assert b.pread(8192, off) == b"\x42" * 8192, "b reads stale data after a's write"
a.trim(4096, off)
assert b.pread(4096, off) == b"\0" * 4096, "b reads stale data after a's trim"
a.pwrite(b"\x43" * 4096, off + 4096)
b.pread(4096, off + 4096)
a.zero(4096, off + 4096)
assert b.pread(4096, off + 4096) == b"\0" * 4096, "b reads stale data after a's write_zeroes"
a.pwrite(b"\x44" * 100, off + 10)        # a partial block
assert b.pread(4096, off)[10:110] == b"\x44" * 100
print("ok")
EOF
  local rc=$?
  [ $rc = 0 ] && pass "$1" || { fail "$1" "see below"; show "$T/multi.out"; }
}

wait_for_line() { # FILE REGEX SECONDS: wait until FILE has a line matching REGEX
  local deadline=$(($(date +%s%N) + $3 * 1000000000))
  until grep -qE -- "$2" "$1" 2>/dev/null; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

wait_until() { # SECONDS CMD...: run CMD every 50 ms until it exits 0; 1 if it never did in time
  local deadline=$(($(date +%s%N) + $1 * 1000000000))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

# try_write_uri URI OFFSET: one 64 KiB write and a flush through libnbd, at most 30 s (timeout).
# Exit 0 if both succeed, 3 if the server answers with an error (printed), 4 if the connection
# fails, 124 if it hangs; prints how long it took.
try_write_uri() {
  [ -f "$T/try_write.py" ] || cat >"$T/try_write.py" <<'EOF'
import sys, time
import nbd
uri, off = sys.argv[1], int(sys.argv[2])
h = nbd.NBD()
try:
    h.connect_uri(uri)
except nbd.Error as e:
    print(f"connect failed: {e}")
    sys.exit(4)
t = time.monotonic()
try:
    h.pwrite(bytes([0xA5]) * 65536, off)
    h.flush()
except nbd.Error as e:
    print(f"write failed after {time.monotonic() - t:.2f} s: {e}")
    sys.exit(3)
print(f"write and flush succeeded in {time.monotonic() - t:.2f} s")
EOF
  timeout 30 python3 "$T/try_write.py" "$1" "$2"
}
