#!/usr/bin/env bash
# Clients that announce much and send little: qbd-master's memory and threads follow what clients
# send, not what they announce. 200 idle connections, then 50 writers that announce 32 MiB each
# and send one byte a second, while a normal client copies and verifies data; the slow writers are
# dropped after client_timeout_ms, and connections beyond max_connections are refused cleanly.
# The margins are generous: the checks are on memory and threads, never on time.
. "$(dirname "$0")/lib.sh"

qbd_conf 3 "client_timeout_ms = 3000" "max_connections = 300"
qbdctl create hostile --size 64M >/dev/null || die setup "qbdctl create hostile failed"
qbd_start

rss_mib() { awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$MASTER_PID/status"; }
threads() { awk '/^Threads:/ { print $2 }' "/proc/$MASTER_PID/status"; }
clients() { # STATUS_FILE MODE N: start nbd_clients.py in the background; its PID in CLIENTS_PID
  python3 "$IT_DIR/nbd_clients.py" --port "$PORT" --export hostile --status "$1" "$2" "$3" \
    >"$1.log" 2>&1 &
  CLIENTS_PID=$!
  track $CLIENTS_PID
}
status_is() { grep -qx "$2" "$1" 2>/dev/null; } # STATUS_FILE LINE

# Known data at the start of the volume: the slow writers' announced writes must change nothing.
head -c 4M /dev/urandom >"$T/head.bin"
nbdcopy --flush "$T/head.bin" "$(uri hostile)" || die setup "nbdcopy into hostile failed"
RSS0=$(rss_mib)
THREADS0=$(threads)
echo "  before: RSS $RSS0 MiB, $THREADS0 threads"

clients "$T/idle" idle 200
IDLE_PID=$CLIENTS_PID
wait_until 120 status_is "$T/idle" "ready 200" || { show "$T/idle.log"; die idle "200 idle clients did not connect"; }
RSS_IDLE=$(rss_mib)
THREADS_IDLE=$(threads)
echo "  200 idle connections: RSS $RSS_IDLE MiB, $THREADS_IDLE threads"
check "200 idle connections hold one thread each (at most 200 + 20 more threads)" \
  test "$THREADS_IDLE" -le $((THREADS0 + 220))
check "200 idle connections take little memory (at most 100 MiB more)" test "$RSS_IDLE" -le $((RSS0 + 100))

clients "$T/slow" slow-writers 50
SLOW_PID=$CLIENTS_PID
wait_until 120 status_is "$T/slow" "ready 50" || { show "$T/slow.log"; die slow "50 slow writers did not connect"; }
RSS_SLOW=$(rss_mib)
THREADS_SLOW=$(threads)
echo "  + 50 writers announcing 32 MiB each: RSS $RSS_SLOW MiB, $THREADS_SLOW threads"
# Memory for what they announced would be 1.6 GiB; what they sent is a few bytes each.
check "50 writers announcing 32 MiB hold little memory (at most 200 MiB more)" \
  test "$RSS_SLOW" -le $((RSS0 + 200))

# A normal client keeps working meanwhile: a 16 MiB copy in and out, compared.
head -c 16M /dev/urandom >"$T/normal.bin"
normal_client() {
  nbdcopy --flush "$T/normal.bin" "$(uri hostile)" &&
    rm -f "$T/normal.out" && nbdcopy "$(uri hostile)" "$T/normal.out" &&
    cmp "$T/normal.bin" <(head -c 16M "$T/normal.out")
}
check "a normal client copies and verifies 16 MiB while the slow writers hang on" normal_client
RSS_PEAK=$(rss_mib)
echo "  after the normal client: RSS $RSS_PEAK MiB"

check "the slow writers are disconnected after client_timeout_ms" \
  wait_until 120 status_is "$T/slow" "closed 50"
check "the idle clients are kept" status_is "$T/idle" "closed 0"
# Workers that ran the normal client's requests end after a few seconds without work.
check "threads return to one per idle connection" \
  wait_until 120 test "$(threads)" -le $((THREADS0 + 220))
check "the log names the timeout" grep -q "reading write payload: timed out" "$T/master.log"

normal_intact() {
  rm -f "$T/all.out"
  nbdcopy --connections 1 "$(uri hostile)" "$T/all.out" &&
    cmp "$T/normal.bin" <(head -c 16M "$T/all.out")
}
check "no byte of the announced writes reached the volume" normal_intact

# Connections beyond max_connections (300): 200 idle are open; 120 more, of which 100 fit.
clients "$T/more" idle 100
MORE_PID=$CLIENTS_PID
wait_until 120 status_is "$T/more" "ready 100" || { show "$T/more.log"; die more "100 more idle clients did not connect"; }
clients "$T/refused" refused 20
check "connections beyond max_connections are closed before the greeting" \
  wait_until 120 grep -qx "closed 20" "$T/refused"
check "the refusal is logged" grep -q "refused a connection from .*max_connections" "$T/master.log"
check "the 300 served connections are still open" status_is "$T/more" "closed 0"
check "a client still gets served once one leaves" \
  bash -c "kill $MORE_PID; for i in \$(seq 600); do nbdinfo --size '$(uri hostile)' >/dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1"
kill "$IDLE_PID" 2>/dev/null

echo "  RSS/threads: before $RSS0 MiB/$THREADS0, 200 idle $RSS_IDLE/$THREADS_IDLE, +50 slow writers $RSS_SLOW/$THREADS_SLOW, after a normal client $RSS_PEAK"
check "qbd-master still runs" master_running
qbd_stop

