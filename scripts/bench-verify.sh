#!/usr/bin/env bash
# qbd-verify and qbd-repair, benchmarked in one run on this machine against the plain tools that
# do the same I/O:
#   quick verify    `qbd-verify big` on a 3-replica volume of 33,334 chunks of 64 KiB, every
#                   chunk written: 100,002 chunk files (seconds; the chunk files are cp copies of
#                   one chunk qbd-master wrote, the chunk maps have every bit set)
#   deep verify     `qbd-verify --deep deep` against `cat` of the same chunk files (MB/s), on a
#                   3-replica volume of BENCH_VERIFY_SIZE filled with random data by qbd-master
#   repair part c   `qbd-repair deep` (offline) after `rm -rf` of part c's directory, against
#                   `cp -r` of part a's directory (MB/s of part a's chunk files)
# Medians of 3 runs each (deep verify and cat, repair and cp alternate). Printed as a markdown
# table, appended to bench/results/history.txt and written to bench/results/latest-verify.json.
# Everything runs on 127.0.0.1 and in one scratch directory on one file system.
#
# Two modes:
#   local (default)     parts a, b, c are three local directories (path = backends)
#   BENCH_VERIFY_NFS=1  parts a, b, c are on three nfs-ganesha servers (FSAL VFS, NFSv3 over TCP on
#                       127.0.0.1, one export each; url = nfs:// backends, reached through libnfs),
#                       started with tests/integration/ganesha.sh and stopped by PID on exit. The
#                       chunk files of big are made in the export directories as in local mode
#                       (FSAL VFS serves plain directories); qbd-verify and qbd-repair go through
#                       the servers, cat and cp -r read the export directories locally. Results
#                       go to bench/results/latest-verify-nfs.json (same keys).
#
# usage: scripts/bench-verify.sh [BUILD_DIR]   (make bench-verify; BUILD_DIR default build/release)
#        BENCH_VERIFY_NFS=1 scripts/bench-verify.sh [BUILD_DIR]   (make bench-verify-nfs)
#   BENCH_VERIFY_SIZE=S  size of volume deep (default 1G, 512M in NFS mode); BENCH_DIR=D  scratch
#   directory under D (default /tmp): it needs about 7 GB plus 5 x BENCH_VERIFY_SIZE
set -uo pipefail
# Debian's python3 first: nbdsh (python3-libnbd) does not work with a pyenv python.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
export LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-build/release}
NFS=${BENCH_VERIFY_NFS:-0}
[ "$NFS" = 0 ] || [ "$NFS" = 1 ] || {
  echo "bench-verify: BENCH_VERIFY_NFS must be 0 or 1, not '$NFS'" >&2
  exit 1
}
if [ "$NFS" = 1 ]; then SIZE=${BENCH_VERIFY_SIZE:-512M}; else SIZE=${BENCH_VERIFY_SIZE:-1G}; fi
RUNS=3
QUICK_CHUNKS=33334 # x 3 parts = 100,002 chunk files
QUICK_CHUNK_SIZE_K=64

die() {
  echo "bench-verify: $*" >&2
  exit 1
}
note() { printf '  [%3ds] %s\n' "$SECONDS" "$*" >&2; } # progress, on stderr
show() { # FILE: its last lines, indented
  [ -f "$1" ] && tail -n 30 "$1" | sed 's/^/    | /' >&2
  return 0
}
[ -x "$BUILD/bin/qbd-verify" ] || die "$BUILD/bin/qbd-verify is missing (make MODE=release)"
BIN=$(cd "$BUILD/bin" && pwd)
for tool in nbdsh nbdcopy nbdinfo python3; do
  command -v $tool >/dev/null || die "$tool is missing (make deps installs it)"
done

if [ "$NFS" = 0 ]; then
  S=$(mktemp -d "${BENCH_DIR:-/tmp}/qbd-bench-verify.XXXXXX") || die "mktemp -d failed"
  MASTER_PID=""
  cleanup() {
    local i
    trap - EXIT INT TERM
    if [ -n "$MASTER_PID" ] && kill -0 "$MASTER_PID" 2>/dev/null; then
      kill -TERM "$MASTER_PID" 2>/dev/null
      for ((i = 0; i < 100; i++)); do
        kill -0 "$MASTER_PID" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$MASTER_PID" 2>/dev/null
      wait "$MASTER_PID" 2>/dev/null
    fi
    note "remove $S"
    rm -rf --one-file-system "$S"
    note "done"
  }
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  cd "$S" || die "cd $S"

  free_port() { # a free TCP port on 127.0.0.1, never 10809 (the default NBD port)
    python3 - <<'EOF'
import socket
while True:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if port != 10809:
        print(port)
        break
EOF
  }

  # Three local parts on one file system (the demo's layout): part a on node-a, b on node-b, c on
  # node-c.
  PORT=$(free_port)
  CONF=$S/qbd.conf
  cat >"$CONF" <<EOF
# qbd-verify / qbd-repair benchmark (scripts/bench-verify.sh)
listen = 127.0.0.1:$PORT
api_listen = 127.0.0.1:$(free_port)
parts = node-a node-b node-c
allow_shared_failure_domain = true
[backend node-a]
path = node-a
[backend node-b]
path = node-b
[backend node-c]
path = node-c
EOF
  mkdir -p node-a node-b node-c
  declare -A ROOT=([a]=node-a [b]=node-b [c]=node-c) # part -> the directory holding its backend
else
  # lib.sh makes the scratch directory $T (moved under BENCH_DIR here, before anything is in it)
  # and the EXIT trap that stops by PID what it tracks: the servers, rpcbind if it started one, and
  # qbd-master. Its die and show are replaced by this script's.
  export QBD_BIN=$BIN
  . "$root/tests/integration/lib.sh"
  die() { # MESSAGE, or NAME REASON (ganesha.sh's calls)
    if [ $# -ge 2 ]; then echo "bench-verify: $1: $2"; else echo "bench-verify: $*"; fi >&2
    exit 1
  }
  show() { # FILE: its last lines, indented
    [ -f "$1" ] && tail -n 30 "$1" | sed 's/^/    | /' >&2
    return 0
  }
  cd / || die "cd /"
  rmdir "$T" || die "rmdir $T"
  T=$(mktemp -d "${BENCH_DIR:-/tmp}/qbd-bench-verify-nfs.XXXXXX") || die "mktemp -d failed"
  S=$T
  cd "$S" || die "cd $S"
  . "$IT_DIR/ganesha.sh"
  nfs_exit() { # the EXIT trap: ganesha.sh's (SIGKILL the servers), then lib.sh's (the rest, rm $T)
    local rc=$?
    note "stop the servers and qbd-master by PID, remove $S"
    (exit $rc)
    _ganesha_exit
  }
  trap nfs_exit EXIT

  # Three nfs-ganesha servers, one export each: part a on node-a, b on node-b, c on node-c.
  for p in a b c; do
    ganesha_start "node-$p"
    note "nfs-ganesha node-$p: $(ganesha_url "node-$p") (pid $(ganesha_pid "node-$p"))"
  done
  PORT=$(free_port)
  CONF=$S/qbd.conf
  cat >"$CONF" <<EOF
# qbd-verify / qbd-repair benchmark over NFS (scripts/bench-verify.sh, BENCH_VERIFY_NFS=1)
listen = 127.0.0.1:$PORT
api_listen = 127.0.0.1:$(free_port)
parts = node-a node-b node-c
[backend node-a]
url = $(ganesha_url node-a)
[backend node-b]
url = $(ganesha_url node-b)
[backend node-c]
url = $(ganesha_url node-c)
EOF
  declare -A ROOT=([a]="$(ganesha_export node-a)" [b]="$(ganesha_export node-b)" [c]="$(ganesha_export node-c)")
fi

qbdctl() { "$BIN/qbdctl" --config "$CONF" "$@"; }
qbdctl create big --size "$((QUICK_CHUNKS * QUICK_CHUNK_SIZE_K))K" --replicas 3 \
  --chunk-size "${QUICK_CHUNK_SIZE_K}K" >/dev/null || die "qbdctl create big failed"
qbdctl create deep --size "$SIZE" --replicas 3 >/dev/null || die "qbdctl create deep --size $SIZE failed"
volnr() { sed -nE "s/^$1[[:space:]]*=[[:space:]]*([0-9]+)[[:space:]]*$/\1/p" "${ROOT[a]}/.volumesmeta"; }
VB=$(volnr big)
VD=$(volnr deep)
if [ -z "$VB" ] || [ -z "$VD" ]; then die "no volume numbers for big and deep in ${ROOT[a]}/.volumesmeta"; fi

# ---------------------------------------------------------------------------------------------
# Data through qbd-master: one chunk of big, all of deep.

note "write chunk 1 of big and all of deep ($SIZE) through qbd-master"
"$BIN/qbd-master" --config "$CONF" </dev/null >"$S/master.log" 2>&1 &
MASTER_PID=$!
[ "$NFS" = 0 ] || track "$MASTER_PID"
for ((i = 0; ; i++)); do
  kill -0 "$MASTER_PID" 2>/dev/null || { show "$S/master.log"; die "qbd-master exited during start-up"; }
  timeout 5 nbdinfo --list "nbd://127.0.0.1:$PORT" >/dev/null 2>&1 && break
  [ $i -lt 100 ] || { show "$S/master.log"; die "qbd-master does not answer on 127.0.0.1:$PORT"; }
  sleep 0.1
done
nbdsh -u "nbd://127.0.0.1:$PORT/big" -c 'import os' \
  -c "h.pwrite(os.urandom($QUICK_CHUNK_SIZE_K * 1024), 0)" -c 'h.flush()' ||
  die "nbdsh: writing chunk 1 of big failed"
head -c "$SIZE" /dev/urandom >"$S/random.img" || die "head -c $SIZE /dev/urandom failed"
nbdcopy --flush "$S/random.img" "nbd://127.0.0.1:$PORT/deep" || die "nbdcopy into deep failed"
rm -f "$S/random.img"
kill -TERM "$MASTER_PID"
wait "$MASTER_PID"
rc=$?
[ "$NFS" = 0 ] || untrack "$MASTER_PID"
MASTER_PID=""
[ $rc -eq 0 ] || { show "$S/master.log"; die "qbd-master exited with status $rc after SIGTERM"; }

# ---------------------------------------------------------------------------------------------
# Volume big: chunk files 2..33334 on every part as cp copies of its chunk file 1, chunk maps full.

note "populate $((QUICK_CHUNKS * 3)) chunk files of big"
populate() { # DIR N: DIR holds only the chunk file 1; add 2..N, each a real copy (cp) of it
  local dir=$1 n=$2 have=1 take
  [ "$(ls -A "$dir")" = 1 ] || die "$dir should hold only the chunk file 1, it holds: $(ls -A "$dir" | head)"
  # Doubling: cp copies files 1..take into a staging directory, one process renames them to
  # have+1..have+take (a new process per file costs more than the copy).
  while [ $have -lt "$n" ]; do
    take=$((have < n - have ? have : n - have))
    rm -rf "$S/stage" && mkdir "$S/stage"
    (cd "$dir" && seq 1 $take | xargs cp --reflink=never -t "$S/stage") || die "cp into $S/stage failed"
    python3 - "$S/stage" "$dir" "$have" "$take" <<'EOF' || die "renaming the copies into $dir failed"
import os, sys
stage, dest, have, take = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(1, take + 1):
    os.rename(f"{stage}/{i}", f"{dest}/{have + i}")
EOF
    have=$((have + take))
  done
  rmdir "$S/stage"
}
for p in a b c; do
  populate "${ROOT[$p]}/$VB/$p" "$QUICK_CHUNKS"
  note "part $p: $QUICK_CHUNKS chunk files"
done
python3 - "$QUICK_CHUNKS" "${ROOT[a]}/$VB/.chunkmap" "${ROOT[b]}/$VB/.chunkmap" "${ROOT[c]}/$VB/.chunkmap" <<'EOF' || die "writing the chunk maps of big failed"
# layout-spec section 6: 32-byte header, then one bit per chunk (least significant first); 1 = written
import sys
n = int(sys.argv[1])
for path in sys.argv[2:]:
    head = open(path, "rb").read(32)
    if len(head) != 32 or head[:8] != b"QBDCHUNK":
        sys.exit(f"{path}: not a chunk map")
    bits = bytearray(b"\xff" * (n // 8))
    if n % 8:
        bits.append((1 << (n % 8)) - 1)
    with open(path, "wb") as f:
        f.write(head + bytes(bits))
EOF
note "sync"
sync # the copies are on disk before anything is timed

# ---------------------------------------------------------------------------------------------
# Timing helpers

ELAPSED=""
RC=0
timed() { # OUT CMD...: run CMD with its output in OUT; ELAPSED = seconds, RC = exit status
  local out=$1 t0 t1
  shift
  t0=$EPOCHREALTIME
  "$@" >"$out" 2>&1
  RC=$?
  t1=$EPOCHREALTIME
  ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
bytes_of() { stat -c %s "$@" | awk '{ s += $1 } END { print s + 0 }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? b / 1e6 / s : 0) }'; }
cat_files() { cat "$@" >/dev/null; }

# ---------------------------------------------------------------------------------------------
# 1. Quick verify of big.

QUICK=()
for ((r = 1; r <= RUNS; r++)); do
  timed "$S/verify-big.out" "$BIN/qbd-verify" --config "$CONF" big
  [ $RC -eq 0 ] || { show "$S/verify-big.out"; die "qbd-verify big exited with status $RC (0 expected)"; }
  grep -q "$QUICK_CHUNKS of $QUICK_CHUNKS chunks written, $((QUICK_CHUNKS * 3)) chunk files" "$S/verify-big.out" ||
    { show "$S/verify-big.out"; die "qbd-verify big does not report $QUICK_CHUNKS of $QUICK_CHUNKS chunks written, $((QUICK_CHUNKS * 3)) chunk files"; }
  QUICK+=("$ELAPSED")
  note "quick verify big, run $r: $ELAPSED s"
done
QUICK_S=$(printf '%.3f' "$(median "${QUICK[@]}")")

# ---------------------------------------------------------------------------------------------
# 2. Deep verify of deep against cat, both from the page cache.

DEEP_FILES=("${ROOT[a]}/$VD"/a/[0-9]* "${ROOT[b]}/$VD"/b/[0-9]* "${ROOT[c]}/$VD"/c/[0-9]*)
[ -f "${DEEP_FILES[0]}" ] || die "volume deep has no chunk files"
DEEP_BYTES=$(bytes_of "${DEEP_FILES[@]}")
cat_files "${DEEP_FILES[@]}" # warm the page cache
DV=() DC=()
for ((r = 1; r <= RUNS; r++)); do
  timed "$S/verify-deep.out" "$BIN/qbd-verify" --deep --config "$CONF" deep
  [ $RC -eq 0 ] || { show "$S/verify-deep.out"; die "qbd-verify --deep deep exited with status $RC (0 expected)"; }
  DV+=("$(mbps "$DEEP_BYTES" "$ELAPSED")")
  timed "$S/cat.out" cat_files "${DEEP_FILES[@]}"
  [ $RC -eq 0 ] || { show "$S/cat.out"; die "cat of the chunk files of deep failed"; }
  DC+=("$(mbps "$DEEP_BYTES" "$ELAPSED")")
  note "deep verify deep, run $r: ${DV[-1]} MB/s (cat ${DC[-1]} MB/s)"
done
DEEP_V=$(median "${DV[@]}")
DEEP_C=$(median "${DC[@]}")

# ---------------------------------------------------------------------------------------------
# 3. Repair part c of deep (offline) against cp -r of part a.

A_FILES=("${ROOT[a]}/$VD"/a/[0-9]*)
A_BYTES=$(bytes_of "${A_FILES[@]}")
RV=() CV=()
for ((r = 1; r <= RUNS; r++)); do
  rm -rf "${ROOT[c]}/$VD/c"
  timed "$S/repair.out" "$BIN/qbd-repair" --config "$CONF" deep
  [ $RC -eq 0 ] || { show "$S/repair.out"; die "qbd-repair deep exited with status $RC (0 expected)"; }
  RV+=("$(mbps "$A_BYTES" "$ELAPSED")")
  timed "$S/verify-repaired.out" "$BIN/qbd-verify" --deep --config "$CONF" deep
  [ $RC -eq 0 ] || { show "$S/verify-repaired.out"; die "qbd-verify --deep deep exited with status $RC after qbd-repair (0 expected)"; }
  timed "$S/cp.out" cp -r --reflink=never "${ROOT[a]}/$VD/a" "$S/copy"
  [ $RC -eq 0 ] || { show "$S/cp.out"; die "cp -r of part a failed"; }
  CV+=("$(mbps "$A_BYTES" "$ELAPSED")")
  rm -rf "$S/copy"
  note "repair part c of deep, run $r: ${RV[-1]} MB/s (cp ${CV[-1]} MB/s)"
done
REP_V=$(median "${RV[@]}")
REP_C=$(median "${CV[@]}")

# ---------------------------------------------------------------------------------------------
# Report

for v in "$QUICK_S" "$DEEP_V" "$DEEP_C" "$REP_V" "$REP_C"; do
  [[ $v =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "a result is not a number: '$v' (nothing written to bench/results)"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
gb() { awk -v b="$1" 'BEGIN { printf "%.2f GB", b / 1e9 }'; }
table=$(
  echo "| measurement | qbd | peer | peer value | qbd/peer |"
  echo "|---|---:|---|---:|---:|"
  echo "| quick verify, $((QUICK_CHUNKS * 3)) chunk files of 64 KiB chunks (s) | $QUICK_S | - | - | - |"
  echo "| deep verify, $(gb "$DEEP_BYTES") of chunk files, 3 parts (MB/s) | $DEEP_V | cat | $DEEP_C | $(ratio "$DEEP_V" "$DEEP_C") |"
  echo "| repair part c, $(gb "$A_BYTES") of chunk files (MB/s) | $REP_V | cp -r | $REP_C | $(ratio "$REP_V" "$REP_C") |"
  echo
  if [ "$NFS" = 0 ]; then
    echo "Medians of $RUNS runs. Deep verify and cat read from a warm page cache (one cat first);"
    echo "qbd-repair reads parts a and b from the page cache and syncs every rebuilt file (fdatasync,"
    echo "directory sync), cp does not sync. MB/s = bytes of the chunk files (data + 16 bytes per block) / s."
  else
    echo "Medians of $RUNS runs. Parts a, b, c on three nfs-ganesha servers (FSAL VFS, NFSv3 over TCP on"
    echo "127.0.0.1, one export each), reached by qbd-verify and qbd-repair through libnfs; the quick pass"
    echo "lists each part directory with READDIRPLUS. cat and cp -r read the same chunk files in the export"
    echo "directories locally, not over NFS. Deep verify (through the servers) and cat read from a warm"
    echo "page cache (one cat first); qbd-repair reads parts a and b through their servers and writes part"
    echo "c through its server (UNSTABLE WRITEs, a COMMIT per rebuilt file), cp does not sync."
    echo "MB/s = bytes of the chunk files (data + 16 bytes per block) / s."
  fi
)
echo "$table"
mem=$(awk '/^MemTotal:/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)
if [ "$NFS" = 0 ]; then
  title="qbd-verify/qbd-repair (local parts)"
  json=latest-verify.json
else
  title="qbd-verify/qbd-repair, parts on NFS (nfs-ganesha on 127.0.0.1)"
  json=latest-verify-nfs.json
fi
mkdir -p "$root/bench/results"
{
  echo
  echo "## $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git -C "$root" rev-parse --short HEAD), $title, $SIZE volume deep; $(hostname) $(nproc) cores, $mem, $(uname -sr)"
  echo "$table"
} >>"$root/bench/results/history.txt"
python3 - "$root/bench/results/$json" "$QUICK_S" "$DEEP_V" "$DEEP_C" "$REP_V" "$REP_C" <<'EOF'
import json, sys
q, dv, dc, rv, rc = (float(x) for x in sys.argv[2:])
json.dump({"quick verify 100k chunk files (s)": {"qbd-verify": q},
           "deep verify (MB/s)": {"qbd-verify --deep": dv, "cat": dc},
           "repair part c (MB/s)": {"qbd-repair": rv, "cp": rc}}, open(sys.argv[1], "w"), indent=1)
EOF
