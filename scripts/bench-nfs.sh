#!/usr/bin/env bash
# qbd over NFS, benchmarked: the fio jobs of scripts/bench.py (nbd ioengine) against
#   qbd 3 ganesha   a 3-replica volume whose parts are on three nfs-ganesha servers (libnfs)
#   qbd 1 ganesha   a 1-replica volume on the first of them
#   qbd 3 local     a 3-replica volume on three local directories (same disk as the exports)
#   qemu-nbd nfs    qemu-nbd --cache=writeback on one image file in the first server's export,
#                   through qemu's own nfs:// driver (libnfs): the single-copy peer
# interleaved (every server per workload, in turn) in one run, printed as a table with the ratios
# to the peer, appended to bench/results/history.txt and written to bench/results/latest-nfs.json.
# All servers run on 127.0.0.1 on this machine, sharing its cores with fio.
#
# usage: QBD_BIN=build/release/bin scripts/bench-nfs.sh   (make bench-nfs)
#   BENCH_SECONDS=N  each job's length (default 30); BENCH_SIZE=S  device size (default 1G)
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/tests/integration/lib.sh"
. "$IT_DIR/ganesha.sh"

SECONDS_PER_JOB=${BENCH_SECONDS:-30}
SIZE=${BENCH_SIZE:-1G}
WORKLOADS=(
  "4k randread iodepth32 (IOPS)|randread|4k|32|iops"
  "4k randwrite iodepth32 (IOPS)|randwrite|4k|32|iops"
  "1m read iodepth8 (MB/s)|read|1m|8|mbps"
  "1m write iodepth8 (MB/s)|write|1m|8|mbps"
)
wait_for() { # SECONDS CMD...: run CMD every 0.1 s until it succeeds; 1 after SECONDS
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
for tool in fio qemu-nbd nbdinfo; do
  command -v $tool >/dev/null || die setup "$tool is missing (make deps installs it)"
done
# qemu's nfs:// driver is a module of its own package (Debian: qemu-block-extra); without it
# qemu-nbd fails with "Unknown protocol 'nfs'" after a 15 s wait.
[ -n "$(find /usr/lib /usr/lib64 -path '*qemu*' -name 'block-nfs.so' -print -quit 2>/dev/null)" ] ||
  die setup "qemu's nfs:// block driver (block-nfs.so) is missing: scripts/install-deps.sh installs it (qemu-block-extra)"

# The peer first: qemu's nfs:// driver finds the MOUNT service through rpcbind, so it must mount
# while the first server is the only one registered there.
ganesha_start n1
truncate -s "$SIZE" "$(ganesha_export n1)/peer.img"
PEER_PORT=$(free_port)
qemu-nbd -f raw -t -e 16 --cache=writeback -b 127.0.0.1 -p "$PEER_PORT" \
  "nfs://127.0.0.1:$(sed -nE 's/.*nfsport=([0-9]+).*/\1/p' <<<"$(ganesha_url n1)")/n1/peer.img" \
  >"$T/qemu-nbd.log" 2>&1 &
PEER_PID=$!
track $PEER_PID
wait_for 15 nbdinfo --size "nbd://127.0.0.1:$PEER_PORT/" >/dev/null ||
  { show "$T/qemu-nbd.log"; die setup "qemu-nbd on nfs:// does not answer"; }
ganesha_start n2
ganesha_start n3

# qbd over the three servers: volume three (3 replicas), volume one (1 replica, on n1).
qbd_conf_nfs n1 n2 n3
qbdctl create three --size "$SIZE" --replicas 3 >/dev/null || die setup "qbdctl create three"
qbdctl create one --size "$SIZE" --replicas 1 >/dev/null || die setup "qbdctl create one"
qbd_start

# A second qbd-master over three local directories (one disk: allowed, it measures the cost).
mkdir -p "$T/local/a" "$T/local/b" "$T/local/c"
LOCAL_PORT=$(free_port)
cat >"$T/local/qbd.conf" <<EOF
listen = 127.0.0.1:$LOCAL_PORT
api_listen = 127.0.0.1:$(free_port)
parts = a b c
allow_shared_failure_domain = true
[backend a]
path = a
[backend b]
path = b
[backend c]
path = c
EOF
"$QBD_BIN/qbdctl" --config "$T/local/qbd.conf" create three --size "$SIZE" --replicas 3 >/dev/null ||
  die setup "qbdctl create (local)"
"$QBD_BIN/qbd-master" --config "$T/local/qbd.conf" >"$T/local/master.log" 2>&1 </dev/null &
LOCAL_PID=$!
track $LOCAL_PID
wait_for 15 nbdinfo --size "nbd://127.0.0.1:$LOCAL_PORT/three" >/dev/null ||
  { show "$T/local/master.log"; die setup "the local qbd-master does not answer"; }

NAMES=("qbd 3 ganesha" "qbd 1 ganesha" "qbd 3 local" "qemu-nbd nfs")
URIS=("$(uri three)" "$(uri one)" "nbd://127.0.0.1:$LOCAL_PORT/three" "nbd://127.0.0.1:$PEER_PORT/")

run_fio() { # URI RW BS IODEPTH -> "IOPS MBPS"
  fio --name=b --ioengine=nbd --uri="$1" --size="$SIZE" --runtime="$SECONDS_PER_JOB" --time_based \
    --output-format=json --rw="$2" --bs="$3" --iodepth="$4" 2>/dev/null |
    python3 -c '
import json, sys
t = sys.stdin.read()
j = json.loads(t[t.index("{"):])["jobs"][0]
print(j["read"]["iops"] + j["write"]["iops"], (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6)'
}

# Fill every device once so that reads find data, not holes.
for i in "${!URIS[@]}"; do
  echo "  fill ${NAMES[$i]}" >&2
  fio --name=fill --ioengine=nbd --uri="${URIS[$i]}" --size="$SIZE" --rw=write --bs=1m --iodepth=8 \
    >/dev/null 2>&1 || die bench "filling ${NAMES[$i]} failed"
done

declare -A R=()
for w in "${WORKLOADS[@]}"; do
  IFS='|' read -r wname rw bs depth unit <<<"$w"
  for i in "${!URIS[@]}"; do # interleaved: every server per workload, in turn
    read -r iops mbps < <(run_fio "${URIS[$i]}" "$rw" "$bs" "$depth")
    [ -n "$iops" ] || die bench "fio $wname against ${NAMES[$i]} failed"
    if [ "$unit" = iops ]; then v=$iops; else v=$mbps; fi
    R["$wname|$i"]=$(printf '%.0f' "$v")
    printf '  %-32s %-14s %10s\n' "$wname" "${NAMES[$i]}" "${R["$wname|$i"]}" >&2
  done
done

table=$(
  printf '%-32s' workload
  for n in "${NAMES[@]}"; do printf '%15s' "$n"; done
  printf '%12s%12s%12s\n' "3g/qemu" "1g/qemu" "3g/3local"
  for w in "${WORKLOADS[@]}"; do
    IFS='|' read -r wname _ <<<"$w"
    printf '%-32s' "$wname"
    for i in "${!NAMES[@]}"; do printf '%15s' "${R["$wname|$i"]}"; done
    awk -v a="${R["$wname|0"]}" -v b="${R["$wname|1"]}" -v p="${R["$wname|3"]}" -v l="${R["$wname|2"]}" \
      'BEGIN { printf "%12.2f%12.2f%12.2f\n", a / (p ? p : 1), b / (p ? p : 1), a / (l ? l : 1) }'
  done
)
echo "$table"
mkdir -p "$root/bench/results"
{
  echo
  echo "## $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git -C "$root" rev-parse --short HEAD), NFS (nfs-ganesha on 127.0.0.1), ${SECONDS_PER_JOB}s per job, $SIZE devices; $(hostname) $(nproc) cores, $(uname -sr)"
  echo "$table"
} >>"$root/bench/results/history.txt"
python3 - "$root/bench/results/latest-nfs.json" "${NAMES[@]}" <<EOF
import json, sys
rows = """$(for w in "${WORKLOADS[@]}"; do IFS='|' read -r wname _ <<<"$w"; for i in "${!NAMES[@]}"; do echo "$wname|$i|${R["$wname|$i"]}"; done; done)"""
names = sys.argv[2:]
out = {}
for line in rows.strip().splitlines():
    w, i, v = line.rsplit("|", 2)
    out.setdefault(w, {})[names[int(i)]] = float(v)
json.dump(out, open(sys.argv[1], "w"), indent=1)
EOF
qbd_stop
kill -TERM $LOCAL_PID $PEER_PID
wait_pid $LOCAL_PID 20
wait_pid $PEER_PID 20
