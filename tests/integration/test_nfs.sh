#!/usr/bin/env bash
# qbd-master over NFS backends: every part on its own nfs-ganesha server on 127.0.0.1, reached
# through userspace libnfs (no kernel mount). nbdcopy, qemu-img and fio move data in and out; the
# chunk files land at the layout's paths in each server's export, identical on every part. Then the
# servers fail under load: SIGKILL and restart of one (durability), SIGSTOP of one during writes
# (writes go on within nfs_timeout_ms, the part is marked down, then up and resynced after
# SIGCONT), SIGKILL of two (writes fail fast, no hang; after a restart they work again and the
# flushed data is intact), SIGKILL of one during a fio verify run (only the outage's writes are
# resynced). Two parts on one export are refused. Last, a volume with part a local and parts b, c
# on NFS.
# Timings measured along the way are printed on the PASS lines.
. "$(dirname "$0")/lib.sh"
. "$IT_DIR/ganesha.sh"

TIMEOUT_MS=2000 # nfs_timeout_ms, as qbd_conf_nfs writes it
MiB=$((1024 * 1024))

# master.log: a part that came back is in sync again (all its dirty regions copied)
IN_SYNC_RE="(resynced .* 0 still dirty|state up: .*(in sync|; 0 dirty regions))"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); } # MS -> "2.1"
log_lines() { wc -l <"$T/master.log"; }

tcheck() { # NAME CMD...: lib.sh's check, with the time CMD took on the PASS line ("NAME (2.1 s)")
  local name=$1 out="$T/.check.out" rc t0
  shift
  t0=$(now_ms)
  "$@" >"$out" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    pass "$name ($(secs $(($(now_ms) - t0))) s)"
  else
    fail "$name" "'$*' exited with status $rc"
    show "$out" 25
  fi
  return $rc
}

# wait_log SINCE_LINE REGEX SECONDS: wait until a master.log line after SINCE_LINE matches REGEX
wait_log() {
  local deadline=$(($(date +%s%N) + $3 * 1000000000))
  until tail -n +"$1" "$T/master.log" | grep -qE -- "$2"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

volnr() { # BACKEND NAME -> NAME's volume number, from .volumesmeta on BACKEND
  sed -nE "s/^$2[[:space:]]*=[[:space:]]*([0-9]+)[[:space:]]*$/\1/p" \
    "$(backend_root "$1")/.volumesmeta"
}

# parts_agree VOLNR NCHUNKS BACKEND_A BACKEND_B BACKEND_C: parts a, b, c of volume VOLNR hold the
# same chunk file names (NCHUNKS of them, 1..NCHUNKS, unless NCHUNKS is "any"), byte-identical.
parts_agree() {
  local v=$1 want=$2 da db dc names f n=0
  da="$(backend_root "$3")/$v/a"
  db="$(backend_root "$4")/$v/b"
  dc="$(backend_root "$5")/$v/c"
  names=$(cd "$da" && find . -maxdepth 1 -type f -name '[0-9]*' -printf '%f\n' | sort -n | xargs)
  for d in "$db" "$dc"; do
    local other
    other=$(cd "$d" && find . -maxdepth 1 -type f -name '[0-9]*' -printf '%f\n' | sort -n | xargs)
    if [ "$other" != "$names" ]; then
      echo "chunk files differ: $da: [$names] $d: [$other]"
      return 1
    fi
  done
  if [ "$want" != any ] && [ "$names" != "$(seq -s ' ' 1 "$want")" ]; then
    echo "expected chunk files 1..$want in $da, found [$names]"
    return 1
  fi
  for f in $names; do
    cmp "$da/$f" "$db/$f" || return 1
    cmp "$da/$f" "$dc/$f" || return 1
    n=$((n + 1))
  done
  [ $n -gt 0 ] || { echo "no chunk files in $da"; return 1; }
  echo "volume $v: $n chunk files on parts a, b, c, identical"
  ls -l "$da/1" "$db/1" "$dc/1"
}

copy_in_out() { # VOLUME INFILE OUTFILE [NBDCOPY_OPTIONS...]: copy in, copy out, compare
  local vol=$1 in=$2 out=$3
  shift 3
  nbdcopy "$@" "$in" "$(uri "$vol")" || { echo "nbdcopy $* $in -> $(uri "$vol") failed"; return 1; }
  rm -f "$out"
  nbdcopy "$@" "$(uri "$vol")" "$out" || { echo "nbdcopy $* $(uri "$vol") -> $out failed"; return 1; }
  cmp "$in" "$out"
}

reads_back() { # VOLUME EXPECTED [LENGTH]: the volume (or its first LENGTH bytes) reads back as EXPECTED
  rm -f "$T/readback.bin"
  nbdcopy "$(uri "$1")" "$T/readback.bin" || { echo "nbdcopy $(uri "$1") failed"; return 1; }
  if [ -n "${3:-}" ]; then
    cmp -n "$3" "$2" "$T/readback.bin"
  else
    cmp "$2" "$T/readback.bin"
  fi
}

try_write() { try_write_uri "$(uri "$1")" "$2"; } # VOLUME OFFSET (lib.sh)

# run_fio JSON FIO_ARGS...: fio with JSON output into JSON (fio's nbd engine prints a line before
# the JSON); checks exit 0, no job error, bytes moved.
run_fio() {
  local json=$1
  shift
  fio --output-format=json --output="$json.raw" "$@" || { show "$json.raw" 40; return 1; }
  fio_summary "$json.raw" "$json"
}

# fio_summary RAW JSON: the JSON part of fio's output RAW into JSON; one line per job; exit 1 if a
# job reported an error or moved no bytes.
fio_summary() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
doc = json.loads(text[text.index("{"):])
json.dump(doc, open(sys.argv[2], "w"))
ok = True
for job in doc["jobs"]:
    w = job["write"]
    print(f'{job["jobname"]}: error={job["error"]} write={w["io_bytes"]} read={job["read"]["io_bytes"]} '
          f'write iops={w["iops"]:.0f} max write latency={w["lat_ns"]["max"] / 1e6:.0f} ms')
    if job["error"] != 0 or w["io_bytes"] + job["read"]["io_bytes"] == 0:
        ok = False
sys.exit(0 if ok else 1)
EOF
}

# back_after BAD_REGEX GOOD_REGEX SECONDS: wait until master.log has no line matching BAD_REGEX, or
# a line matching GOOD_REGEX after the last one
back_after() {
  local deadline=$(($(date +%s%N) + $3 * 1000000000)) bad good
  while :; do
    bad=$(grep -nE -- "$1" "$T/master.log" | tail -n 1 | cut -d: -f1)
    good=$(grep -nE -- "$2" "$T/master.log" | tail -n 1 | cut -d: -f1)
    [ -z "$bad" ] || [ "${good:-0}" -gt "$bad" ] && return 0
    [ "$(date +%s%N)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}
# part_up VOLNR VOLUME PART SECONDS: the part is not down (never was, or in sync since)
part_up() { back_after "volume ($1|$2) part $3: state down" "volume ($1|$2) part $3: $IN_SYNC_RE" "$4"; }
# backend_reachable URL SECONDS: qbd reaches the NFS server URL (never lost it, or again since)
backend_reachable() {
  local u
  u=$(sed 's/[][\.*^$?+(){}|]/\\&/g' <<<"$1")
  back_after "$u unreachable" "$u reachable again" "$2"
}

# marked_down SINCE_LINE VOLNR VOLUME PART T0_MS WHAT ("SIGKILLed"): checks that master.log marks
# PART down within 20 s of its server being WHAT at T0_MS, and reports how long that took
marked_down() {
  local re="volume ($2|$3) part $4: state down"
  if wait_log "$1" "$re" 20; then
    pass "$6 server detected: part $4 of volume $3 marked down in $(secs $(($(now_ms) - $5))) s"
  else
    tail -n +"$1" "$T/master.log" | tail -n 15 | sed 's/^/    | /'
    fail "$6 server detected" "no master.log line /$re/ within 20 s"
  fi
}

# resynced_exactly SINCE_LINE VOLNR VOLUME PART BYTES SECONDS T0_MS WHAT: waits up to SECONDS for
# PART to be in sync again, then checks that the resync lines since SINCE_LINE copied BYTES
resynced_exactly() {
  local got
  if wait_log "$1" "volume ($2|$3) part $4: $IN_SYNC_RE" "$6"; then
    got=$(bytes_logged "$1" "volume ($2|$3) part $4: resynced")
    if [ "$got" = "$5" ]; then
      pass "part $4 of $3 in sync $(secs $(($(now_ms) - $7))) s later; resynced $((got / 1024)) KiB: $8"
    else
      fail "part $4 of $3 resynced $8" "resynced $got bytes, expected $5"
    fi
  else
    tail -n +"$1" "$T/master.log" | grep "part $4" | tail -n 10 | sed 's/^/    | /'
    fail "part $4 of $3 back in sync" "no master.log line /$IN_SYNC_RE/ within $6 s"
  fi
}

# bytes_logged SINCE_LINE REGEX: the sum of the "(N bytes)" of master.log lines after SINCE_LINE
# that match REGEX
bytes_logged() {
  tail -n +"$1" "$T/master.log" | grep -E -- "$2" | sed -nE 's/.*\(([0-9]+) bytes\).*/\1/p' |
    awk '{ s += $1 } END { print s + 0 }'
}

fio_max_write_ms() { # JSON -> the longest write latency of all jobs, in ms
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(max(j["write"]["lat_ns"]["max"] for j in d["jobs"]) / 1e6))' "$1"
}

# =================================================================================================
# Three parts on three ganesha servers
ganesha_start n1
ganesha_start n2
ganesha_start n3
qbd_conf_nfs n1 n2 n3
for v in big:64M fio:32M dur:32M stall:32M quorum:32M kill:128M; do
  qbdctl create "${v%%:*}" --size "${v#*:}" >"$T/create.out" 2>&1 ||
    { show "$T/create.out"; die setup "qbdctl create ${v%%:*} --size ${v#*:} on NFS backends failed"; }
done
NR_big=$(volnr n1 big)
NR_fio=$(volnr n1 fio)
NR_dur=$(volnr n1 dur)
NR_stall=$(volnr n1 stall)
NR_quorum=$(volnr n1 quorum)
NR_kill=$(volnr n1 kill)
for nr in "$NR_big" "$NR_fio" "$NR_dur" "$NR_stall" "$NR_quorum" "$NR_kill"; do
  [ -n "$nr" ] || die setup "a volume is missing in $(ganesha_export n1)/.volumesmeta"
done
head -c 64M /dev/urandom >"$T/big1.bin"
head -c 64M /dev/urandom >"$T/big4.bin"
qbd_start

tcheck "nbdcopy 64 MiB in and out over one connection, 3 parts on NFS" \
  copy_in_out big "$T/big1.bin" "$T/big.out" --connections 1
tcheck "nbdcopy 64 MiB in and out over 4 connections with --flush, 3 parts on NFS" \
  copy_in_out big "$T/big4.bin" "$T/big.out" --connections 4 --flush
check "qemu-img compare finds the NFS-backed export identical to the file" \
  qemu-img compare -f raw -F raw "$T/big4.bin" "$(uri big)"
tcheck "fio randwrite 4k iodepth 16 verify=crc32c 32 MiB, 3 parts on NFS" \
  run_fio "$T/fio.json" --name=nfsfio --ioengine=nbd --uri="$(uri fio)" --rw=randwrite --bs=4k \
  --iodepth=16 --size=32m --verify=crc32c &&
  echo "    | $(grep -m1 -oE 'write iops=[0-9]+ max write latency=[0-9]+ ms' "$T/.check.out")"
check "flush of volume big" nbdsh -u "$(uri big)" -c 'h.flush()'
qbd_stop
# layout-spec: <export>/<volnr>/<part>/<chunk index + 1>
check "64 MiB volume: chunk files 1..16 at <export>/$NR_big/{a,b,c}/N on n1, n2, n3, identical" \
  parts_agree "$NR_big" 16 n1 n2 n3
check "fio volume: the three parts' chunk files are identical" parts_agree "$NR_fio" any n1 n2 n3

# =================================================================================================
# Durability: flushed data survives SIGKILL and restart of one server
qbd_start
head -c 32M /dev/urandom >"$T/dur.bin"
tcheck "nbdcopy --flush of 32 MiB to volume dur" nbdcopy --flush "$T/dur.bin" "$(uri dur)"
ganesha_kill n2
ganesha_restart n2
tcheck "volume dur reads back identical after n2's SIGKILL and restart" reads_back dur "$T/dur.bin"
# A restart between WRITE and COMMIT: n2 may have dropped the unstable writes. The COMMIT sees a
# new write verifier, the flush fails on part b only, and just the chunk written is resynced.
check "part b of dur is up (in sync again after the first restart)" part_up "$NR_dur" dur b 30
head -c 1M /dev/urandom >"$T/dur2.bin"
since=$(($(log_lines) + 1))
check "1 MiB written to chunk 3 of volume dur, not flushed" \
  nbdsh -u "$(uri dur)" -c "h.pwrite(open('$T/dur2.bin', 'rb').read(), 9 * $MiB)"
ganesha_kill n2
sleep 1.1 # ganesha's write verifier is its start time in seconds: a restart within the second keeps it
ganesha_restart n2
# The volume poll may have found n2 down and opened its circuit breaker: then wait until qbd reaches
# it again, so that the flush below gets to send its COMMIT.
check "qbd reaches n2 again after its restart" backend_reachable "$(ganesha_url n2)" 10
check "a flush after n2 restarted between WRITE and COMMIT succeeds (parts a and c)" \
  nbdsh -u "$(uri dur)" -c 'h.flush()'
verf_re="volume ($NR_dur|dur) part b: flush failed: .*write verifier changed.*1 chunk\(s\) written"
if wait_log "$since" "$verf_re" 10; then
  pass "the COMMIT after n2's restart sees the new write verifier; one chunk of part b is marked for resync"
else
  tail -n +"$since" "$T/master.log" | tail -n 10 | sed 's/^/    | /'
  fail "write verifier checked" "no master.log line /$verf_re/ within 10 s of the flush"
fi
resynced_exactly "$since" "$NR_dur" dur b $((4 * MiB)) 30 "$(now_ms)" "the one 4 MiB chunk"
check "volume dur reads back the 1 MiB written before the restart" \
  nbdsh -u "$(uri dur)" -c "assert h.pread($MiB, 9 * $MiB) == open('$T/dur2.bin', 'rb').read()"
qbd_stop
check "after n2's SIGKILL, restart and a clean stop, parts a, b, c of dur are identical" \
  parts_agree "$NR_dur" 8 n1 n2 n3

# =================================================================================================
# SIGSTOP of one server during writes: writes go on, the part is marked down; after SIGCONT it
# comes back up and is resynced
qbd_start
since=$(($(log_lines) + 1))
fio --output-format=json --output="$T/stall.json.raw" --name=stall --ioengine=nbd \
  --uri="$(uri stall)" --rw=randwrite --bs=4k --iodepth=16 --size=32m --time_based --runtime=8 \
  >/dev/null 2>&1 &
fio_pid=$!
track $fio_pid
sleep 2
t_stop=$(now_ms)
ganesha_pause n3
marked_down "$since" "$NR_stall" stall c "$t_stop" SIGSTOPped
if ! wait_pid $fio_pid 40; then
  kill -KILL $fio_pid
  wait_pid $fio_pid 5
  fail "writes during SIGSTOP" "fio (8 s time_based) did not end within 40 s with n3 stopped"
else
  fio_rc=$WAIT_RC
  if [ "$fio_rc" = 0 ] && fio_summary "$T/stall.json.raw" "$T/stall.json" >"$T/stall.out" 2>&1; then
    max_ms=$(fio_max_write_ms "$T/stall.json")
    if [ "$max_ms" -le $((TIMEOUT_MS + 4000)) ]; then
      pass "writes complete while n3 is SIGSTOPped: longest write $(secs "$max_ms") s (nfs_timeout_ms $TIMEOUT_MS)"
    else
      fail "writes complete while n3 is SIGSTOPped" \
        "longest write took $(secs "$max_ms") s, more than nfs_timeout_ms + 4 s"
    fi
    echo "    | $(grep -m1 -oE 'write=[0-9]+ .*' "$T/stall.out")"
  else
    show "$T/stall.out"
    show "$T/stall.json.raw" 20
    fail "writes complete while n3 is SIGSTOPped" "fio exited with status $fio_rc or reported an error"
  fi
fi
# Still stopped: a copy with part c down, then SIGCONT.
head -c 16M /dev/urandom >"$T/stall.bin"
tcheck "nbdcopy --flush of 16 MiB while n3 is SIGSTOPped" \
  timeout 60 nbdcopy --flush "$T/stall.bin" "$(uri stall)"
since=$(($(log_lines) + 1))
t_cont=$(now_ms)
ganesha_resume n3
up_re="volume ($NR_stall|stall) part c: state (up|resyncing)"
if wait_log "$since" "$up_re" 20; then
  pass "SIGCONTed server back: part c of volume stall up or resyncing in $(secs $(($(now_ms) - t_cont))) s"
else
  tail -n +"$since" "$T/master.log" | tail -n 15 | sed 's/^/    | /'
  fail "SIGCONTed server back" "no master.log line /$up_re/ within 20 s of SIGCONT"
fi
clean_re="volume ($NR_stall|stall) part c: $IN_SYNC_RE"
if wait_log "$since" "$clean_re" 30; then
  pass "part c of volume stall resynced $(secs $(($(now_ms) - t_cont))) s after SIGCONT"
else
  tail -n +"$since" "$T/master.log" | grep -E "part c" | tail -n 10 | sed 's/^/    | /'
  fail "part c resynced after SIGCONT" "no master.log line /$clean_re/ within 30 s of SIGCONT"
fi
check "volume stall reads back the 16 MiB written while n3 was stopped" \
  reads_back stall "$T/stall.bin" $((16 * MiB))
check "flush of volume stall" nbdsh -u "$(uri stall)" -c 'h.flush()'
qbd_stop
check "after SIGSTOP/SIGCONT of n3, a flush and a stop, parts a, b, c of stall are identical" \
  parts_agree "$NR_stall" 8 n1 n2 n3

# =================================================================================================
# SIGKILL of one server during a fio verify write run: fio ends without error; after a restart only
# the regions written during the outage are resynced, and the three exports agree block by block
qbd_start
head -c 128M /dev/urandom >"$T/kill.bin"
tcheck "nbdcopy --flush of 128 MiB to volume kill (every chunk written)" \
  nbdcopy --flush "$T/kill.bin" "$(uri kill)"
since=$(($(log_lines) + 1))
# 16 MiB of 4 KiB random writes at 1000 IOPS: about 4 s, then fio reads every block back.
fio --output-format=json --output="$T/kill.json.raw" --name=killverify --ioengine=nbd \
  --uri="$(uri kill)" --rw=randwrite --bs=4k --iodepth=16 --size=16m --rate_iops=1000 \
  --verify=crc32c --verify_fatal=1 >/dev/null 2>&1 &
fio_pid=$!
track $fio_pid
sleep 1.5
t_kill=$(now_ms)
ganesha_kill n2
marked_down "$since" "$NR_kill" kill b "$t_kill" SIGKILLed
if ! wait_pid $fio_pid 60; then
  kill -KILL $fio_pid
  wait_pid $fio_pid 5
  fail "fio verify with n2 SIGKILLed" "fio did not end within 60 s"
elif [ "$WAIT_RC" = 0 ] && fio_summary "$T/kill.json.raw" "$T/kill.json" >"$T/kill.out" 2>&1; then
  pass "fio randwrite verify=crc32c finishes without error with n2 SIGKILLed during the run"
  echo "    | $(grep -m1 -oE 'write=[0-9]+ .*' "$T/kill.out")"
else
  show "$T/kill.json.raw" 20
  fail "fio verify with n2 SIGKILLed" "fio exited with status $WAIT_RC or reported an error"
fi
# More during the outage: 8 MiB at 64 MiB (128 regions of 64 KiB), flushed.
head -c 8M /dev/urandom >"$T/kill8.bin"
check "8 MiB written and flushed at 64 MiB while n2 is down" \
  nbdsh -u "$(uri kill)" -c "h.pwrite(open('$T/kill8.bin', 'rb').read(), 64 * $MiB); h.flush()"
since=$(($(log_lines) + 1))
t_restart=$(now_ms)
ganesha_restart n2
back_re="volume ($NR_kill|kill) part b: state resyncing"
if wait_log "$since" "$back_re" 30; then
  back_ms=$(($(now_ms) - t_restart))
  # The amount dirty when it came back: the first such line (a flush that fails right after, on a
  # file written before the outage, brings the part down and back once more with the same regions).
  todo=$(tail -n +"$since" "$T/master.log" | grep -E -- "$back_re" | head -n 1 | sed -nE 's/.*\(([0-9]+) bytes\).*/\1/p')
  # Outage writes: fio's 16 MiB range (what it wrote after the kill) plus the 8 MiB; never the
  # 128 MiB volume.
  if [ "$todo" -gt $((8 * MiB)) ] && [ "$todo" -le $((24 * MiB)) ]; then
    pass "part b of kill back after the restart with $((todo / 1024)) KiB dirty: the outage's writes (8 MiB + fio's part of 16 MiB), not the 128 MiB volume"
  else
    fail "dirty amount after the outage" "$todo bytes dirty, expected more than 8 MiB and at most 24 MiB"
  fi
else
  tail -n +"$since" "$T/master.log" | tail -n 15 | sed 's/^/    | /'
  fail "part b of kill back" "no master.log line /$back_re/ within 30 s of the restart"
fi
resynced_exactly "$since" "$NR_kill" kill b "${todo:-0}" 60 "$t_restart" \
  "exactly the dirty regions; reconnected $(secs "${back_ms:-0}") s after the restart, backoff included"
check "volume kill reads back the 8 MiB written during the outage" \
  nbdsh -u "$(uri kill)" -c "assert h.pread(8 * $MiB, 64 * $MiB) == open('$T/kill8.bin', 'rb').read()"
check "volume kill reads back the nbdcopy data outside the fio range and the 8 MiB" \
  nbdsh -u "$(uri kill)" -c "
d = open('$T/kill.bin', 'rb').read()
for off in list(range(16, 64, 16)) + list(range(72, 128, 8)):
    n = min(16, 128 - off) if off < 64 else 8
    assert h.pread(n * $MiB, off * $MiB) == d[off * $MiB:(off + n) * $MiB], f'at {off} MiB'"
qbd_stop
check "after the outage, parts a, b, c of kill (read directly from the three exports) are identical" \
  parts_agree "$NR_kill" 32 n1 n2 n3

# =================================================================================================
# Two of three servers SIGKILLed: writes fail within a bounded time; after a restart they work
# again and the data flushed before the outage is intact
qbd_start
head -c 16M /dev/urandom >"$T/quorum.bin"
tcheck "nbdcopy --flush of 16 MiB to volume quorum" nbdcopy --flush "$T/quorum.bin" "$(uri quorum)"
ganesha_kill n2
ganesha_kill n3
t0=$(now_ms)
try_write quorum $((20 * MiB)) >"$T/try.out" 2>&1
rc=$?
ms=$(($(now_ms) - t0))
case $rc in
  3) pass "with n2 and n3 SIGKILLed a write fails with an NBD error in $(secs $ms) s" ;;
  124) fail "write with 2 of 3 servers dead" "no answer within 30 s (hung)" ;;
  0) fail "write with 2 of 3 servers dead" "the write and flush succeeded with 1 of 3 parts: $(cat "$T/try.out")" ;;
  *) fail "write with 2 of 3 servers dead" "exit status $rc, not an NBD error: $(cat "$T/try.out")" ;;
esac
[ $rc -ne 124 ] && [ $ms -gt 15000 ] &&
  fail "write with 2 of 3 servers dead" "took $(secs $ms) s to fail (more than 15 s)"
t0=$(now_ms)
try_write quorum $((24 * MiB)) >"$T/try2.out" 2>&1
rc=$?
case $rc in
  3) pass "and a second write fails too, in $(secs $(($(now_ms) - t0))) s" ;;
  124) fail "second write with 2 of 3 servers dead" "no answer within 30 s (hung)" ;;
  *) fail "second write with 2 of 3 servers dead" "exit status $rc: $(cat "$T/try2.out")" ;;
esac
since=$(($(log_lines) + 1))
t_restart=$(now_ms)
ganesha_restart n2
ganesha_restart n3
t0=$(now_ms)
ok=0
while [ $(($(now_ms) - t0)) -lt 30000 ]; do
  if try_write quorum $((20 * MiB)) >"$T/try3.out" 2>&1; then
    ok=1
    break
  fi
  sleep 0.5
done
if [ $ok = 1 ]; then
  pass "after n2 and n3 restart, writes work again within $(secs $(($(now_ms) - t0))) s"
else
  sed 's/^/    | /' "$T/try3.out"
  tail -n +"$since" "$T/master.log" | tail -n 15 | sed 's/^/    | /'
  fail "writes work again after restarting n2 and n3" "a write still fails 30 s after the restart"
fi
check "the 16 MiB flushed before the outage read back intact" \
  reads_back quorum "$T/quorum.bin" $((16 * MiB))
synced=0
for p in b c; do
  re="volume ($NR_quorum|quorum) part $p: $IN_SYNC_RE"
  if wait_log "$since" "$re" 30; then
    synced=$((synced + 1))
  else
    tail -n +"$since" "$T/master.log" | grep -E "part $p" | tail -n 10 | sed 's/^/    | /'
    fail "part $p of quorum resynced" "no master.log line /$re/ within 30 s of the restart"
  fi
done
[ $synced = 2 ] &&
  pass "parts b and c of quorum in sync again $(secs $(($(now_ms) - t_restart))) s after the restart"
check "flush of volume quorum" nbdsh -u "$(uri quorum)" -c 'h.flush()'
qbd_stop
check "after the outage and the resync, parts a, b, c of quorum are identical" \
  parts_agree "$NR_quorum" any n1 n2 n3

# =================================================================================================
# Failure domains: two parts on one server and export are refused; the override starts with a warning
url1=$(ganesha_url n1)
same_conf() { # EXTRA_LINE: a qbd.conf with parts a and b in two directories of n1's export
  cat <<EOF
listen = 127.0.0.1:$(free_port)
parts = x y
$1
api_listen = 127.0.0.1:$(free_port)
[backend x]
url = ${url1%%\?*}/x?${url1#*\?}
[backend y]
url = ${url1%%\?*}/y?${url1#*\?}
EOF
}
mkdir -p "$(ganesha_export n1)/x" "$(ganesha_export n1)/y"
same_conf "" >"$T/same.conf"
timeout 20 "$QBD_BIN/qbd-master" --config "$T/same.conf" >"$T/same.out" 2>&1 </dev/null
rc=$?
if [ $rc = 4 ] && grep -q "same.conf:2: parts a (nfs://127.0.0.1/n1/x.*), b (nfs://127.0.0.1/n1/y.*) share nfs://" "$T/same.out"; then
  pass "qbd-master refuses (exit 4, a bad configuration) parts a and b on the same NFS server and export, naming both and the parts line"
else
  fail "two parts on one NFS export refused" "exit status $rc: $(head -c 400 "$T/same.out")"
fi
same_conf "allow_shared_failure_domain = true" >"$T/same2.conf"
"$QBD_BIN/qbd-master" --config "$T/same2.conf" >"$T/same2.out" 2>&1 </dev/null &
same_pid=$!
track $same_pid
if wait_for_line "$T/same2.out" "serving" 10 &&
  grep -q "share nfs://127.0.0.1:[0-9]*/n1: losing it loses all their copies (allowed by allow_shared_failure_domain)" \
    "$T/same2.out"; then
  pass "with allow_shared_failure_domain = true it starts and warns once about the pair"
else
  fail "allow_shared_failure_domain = true on one NFS export" "$(head -c 600 "$T/same2.out")"
fi
alive $same_pid && kill -TERM $same_pid
wait_pid $same_pid 20 || fail "qbd-master with a shared NFS export" "did not stop on SIGTERM within 20 s"

# =================================================================================================
# Mixed: part a in a local directory, parts b and c on NFS
ganesha_start m2
ganesha_start m3
qbd_conf_nfs local:node-a m2 m3
qbdctl create mixed --size 64M >"$T/create.out" 2>&1 ||
  { show "$T/create.out"; die setup "qbdctl create mixed (local + 2 NFS) failed"; }
NR_mixed=$(volnr local:node-a mixed)
qbd_start
tcheck "mixed volume (a local, b and c on NFS): nbdcopy 64 MiB in and out over 4 connections" \
  copy_in_out mixed "$T/big1.bin" "$T/mixed.out" --connections 4 --flush
check "qemu-img compare finds the mixed volume identical to the file" \
  qemu-img compare -f raw -F raw "$T/big1.bin" "$(uri mixed)"
tcheck "fio randwrite 4k iodepth 16 verify=crc32c over the first 16 MiB of the mixed volume" \
  run_fio "$T/mixedfio.json" --name=mixedfio --ioengine=nbd --uri="$(uri mixed)" --rw=randwrite \
  --bs=4k --iodepth=16 --size=16m --verify=crc32c
check "flush of volume mixed" nbdsh -u "$(uri mixed)" -c 'h.flush()'
check "the mixed volume past fio's range still holds the file's data" \
  nbdsh -u "$(uri mixed)" -c "
d = open('$T/big1.bin', 'rb').read()
for off in range(16, 64, 16):
    assert h.pread(16 * $MiB, off * $MiB) == d[off * $MiB:(off + 16) * $MiB], f'at {off} MiB'"
qbd_stop
check "mixed volume: chunk files 1..16 on node-a, m2, m3, identical" \
  parts_agree "$NR_mixed" 16 local:node-a m2 m3

# =================================================================================================
# Restarts one after the other, quorum never lost: part c's server down and back, then a's and b's
# servers restarted in turn (their write verifiers change under the daemon's open handles of the
# dirty map copies); when c's server dies again, the next write still succeeds on a and b.
ganesha_start r1
ganesha_start r2
ganesha_start r3
qbd_conf_nfs r1 r2 r3
qbdctl create roll --size 32M >"$T/create.out" 2>&1 || { show "$T/create.out"; die setup "qbdctl create roll failed"; }
NR_roll=$(volnr r1 roll)
head -c 8M /dev/urandom >"$T/roll.bin"
qbd_start
tcheck "nbdcopy --flush of 8 MiB to volume roll" nbdcopy --flush "$T/roll.bin" "$(uri roll)"
since=$(($(log_lines) + 1))
ganesha_kill r3
check "with r3 SIGKILLed a write and flush succeed on parts a and b" try_write roll $((8 * MiB))
wait_log "$since" "volume ($NR_roll|roll) part c: state down" 20 || fail "roll: part c marked down" "no line within 20 s"
sleep 1.1 # ganesha's write verifier is its start time in seconds
ganesha_restart r3
check "part c of roll is back in sync after r3's restart" part_up "$NR_roll" roll c 30
for s in r1 r2; do
  ganesha_kill $s
  sleep 1.1
  ganesha_restart $s
  check "a write and flush succeed after $s restarted" try_write roll $((9 * MiB))
done
check "part a of roll is up" part_up "$NR_roll" roll a 30
check "part b of roll is up" part_up "$NR_roll" roll b 30
ganesha_kill r3
check "with r3 SIGKILLed again, a write and flush succeed on parts a and b (the dirty map is persisted)" \
  try_write roll $((10 * MiB))

# A replaced server: r3 comes back with an empty export (a new disk). The daemon does not write
# into it on its own; an online qbd-repair recreates the part and rebuilds it, and part c is up.
rm -rf "$(ganesha_export r3)"/* "$(ganesha_export r3)"/.[!.]*
ganesha_restart r3
repair roll >"$T/replaced.out" 2>&1
rc=$?
[ $rc = 0 ] && pass "online qbd-repair of a replaced (empty) NFS server exits 0" ||
  { fail "online qbd-repair of a replaced (empty) NFS server exits 0" "exit $rc"; show "$T/replaced.out"; }
check "part c of roll is up again after the repair" part_up "$NR_roll" roll c 30
check "a write and flush succeed with all three parts" try_write roll $((11 * MiB))
qbd_stop
check "after the replaced server was rebuilt online, parts a, b, c of roll are identical" \
  parts_agree "$NR_roll" any r1 r2 r3
