#!/usr/bin/env bash
# SIGKILL of qbd-master in the middle of a stream of writes: after a restart every block flushed
# before the kill reads back exactly; every other block is zero or holds one whole write that was
# sent to it; qbd-master sees the unclean shutdown and makes the copies agree, so the volume reads
# the same twice; and the next run works normally.
. "$(dirname "$0")/lib.sh"

BS=4096
FLUSHED=4096 # blocks = 16 MiB, flushed before the kill
qbd_conf 3
qbdctl create crash --size 64M --replicas 3 >/dev/null || die setup "qbdctl create crash failed"

crash_round() { # ROUND ITERATION KILL_DELAY
  local round=$1 iter=$2 delay=$3 wpid
  qbd_start
  pattern write "$(uri crash)" "$T/writes$round.log" --flushed $FLUSHED --iter "$iter" --depth 16 \
    >"$T/writer$round.out" 2>&1 &
  wpid=$!
  track $wpid
  if ! wait_for_line "$T/writes$round.log" '^FLUSHED' 60; then
    show "$T/writer$round.out"
    die "round $round: writer" "the writer did not flush 16 MiB within 60 s"
  fi
  wait_for_line "$T/writes$round.log" '^A ' 60 ||
    { show "$T/writer$round.out"; die "round $round: writer" "no write acknowledged within 60 s"; }
  sleep "$delay"
  local acked
  acked=$(grep -c '^A ' "$T/writes$round.log")
  qbd_kill
  if ! wait_pid $wpid 30; then
    kill -KILL $wpid
    fail "round $round: writer" "the writer did not notice the server's death within 30 s"
  fi
  echo "    | round $round: killed qbd-master ${delay}s after the flush, $acked writes acknowledged"
  [ "$acked" -gt 0 ] || fail "round $round: writer" "no write acknowledged after the flush"

  qbd_start
  rm -f "$T/image.bin" "$T/image2.bin"
  check "round $round: the volume reads back after the crash" \
    nbdcopy "$(uri crash)" "$T/image.bin"
  # Blocks beyond the flushed range may still hold writes of earlier rounds.
  cat "$T/writes$round.log" >>"$T/all-writes.log"
  check "round $round: flushed blocks intact, others zero or one whole write" \
    pattern verify "$T/image.bin" "$T/all-writes.log" --flushed $FLUSHED --iter "$iter"
  check "round $round: a second read after the crash gives the same data" \
    bash -c 'nbdcopy "$1" "$2" && cmp "$3" "$2"' _ "$(uri crash)" "$T/image2.bin" "$T/image.bin"
  check "round $round: qbd-master saw the unclean shutdown and compared every written chunk" \
    bash -c "grep -c 'volume crash: it was not closed cleanly' '$T/master.log' | grep -qx $round &&
             for i in \$(seq 600); do
               tail -n +\$(grep -n 'volume crash: it was not closed cleanly' '$T/master.log' | tail -n 1 | cut -d: -f1) '$T/master.log' |
                 grep -q 'volume crash: every written chunk compared since the start' && exit 0
               sleep 0.1
             done; exit 1"
  qbd_stop
}

crash_round 1 1 0.7
crash_round 2 100000000 2.5

# After the crashes, a clean run: writes, flush, stop, start, read back.
qbd_start
head -c 64M /dev/urandom >"$T/final.bin"
check "after two crashes nbdcopy --flush of 64 MiB works" \
  nbdcopy --flush "$T/final.bin" "$(uri crash)"
qbd_stop
check "a clean stop removes <volnr>/.running from every part (layout-spec.md 4.5)" \
  bash -c "! ls '$T'/node-*/1/.running 2>/dev/null | grep -q ."
qbd_start
check "and reads back identical after a clean restart" \
  bash -c 'rm -f "$2"; nbdcopy "$1" "$2" && cmp "$3" "$2"' _ \
  "$(uri crash)" "$T/final.out" "$T/final.bin"
qbd_stop
