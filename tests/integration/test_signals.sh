#!/usr/bin/env bash
# SIGTERM and SIGINT while a client writes: qbd-master finishes what is in flight, flushes and exits
# 0 within a few seconds; after a restart every flushed block and every acknowledged write is
# there (a write still in flight may or may not be).
. "$(dirname "$0")/lib.sh"

FLUSHED=2048 # blocks = 8 MiB
qbd_conf 3
for v in sigterm sigint; do
  qbdctl create $v --size 48M --replicas 3 >/dev/null || die setup "qbdctl create $v failed"
done

signal_round() { # SIGNAL VOLUME ITERATION
  local sig=$1 vol=$2 iter=$3 wpid t0 t1 log="$T/writes-$1.log"
  qbd_start
  pattern write "$(uri "$vol")" "$log" --flushed $FLUSHED --iter "$iter" --depth 8 \
    >"$T/writer-$sig.out" 2>&1 &
  wpid=$!
  track $wpid
  if ! wait_for_line "$log" '^FLUSHED' 60; then
    show "$T/writer-$sig.out"
    die "SIG$sig: writer" "the writer did not flush 8 MiB within 60 s"
  fi
  # At least one write after the flush is acknowledged before the signal, however slow the machine.
  wait_for_line "$log" '^A ' 60 || { show "$T/writer-$sig.out"; die "SIG$sig: writer" "no write acknowledged within 60 s"; }
  sleep 0.5
  t0=$(date +%s%N)
  if qbd_stop "$sig" 5; then
    t1=$(date +%s%N)
    pass "SIG$sig while a client writes: exit 0 within 5 s ($(((t1 - t0) / 1000000)) ms)"
  fi
  master_running && qbd_kill
  if ! wait_pid $wpid 30; then
    kill -KILL $wpid
    fail "SIG$sig: writer" "the writer did not notice the shutdown within 30 s"
  fi
  echo "    | SIG$sig: $(grep -c '^A ' "$log") writes acknowledged after the flush"
  echo "    | the writer's last line: $(tail -n 1 "$log")"
  grep -q '^A ' "$log" || fail "SIG$sig: writer" "no write was acknowledged after the flush"

  qbd_start
  rm -f "$T/image.bin"
  check "SIG$sig: the volume reads back after the restart" nbdcopy "$(uri "$vol")" "$T/image.bin"
  check "SIG$sig: flushed blocks and every acknowledged write are intact after the restart" \
    pattern verify "$T/image.bin" "$log" --flushed $FLUSHED --iter "$iter" --acked
  qbd_stop
}

signal_round TERM sigterm 1
signal_round INT sigint 1000000

# An idle qbd-master stops promptly too.
qbd_start
t0=$(date +%s%N)
qbd_stop TERM 5 &&
  pass "SIGTERM of an idle qbd-master: exit 0 ($((($(date +%s%N) - t0) / 1000000)) ms)"
