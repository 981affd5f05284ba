#!/usr/bin/env bash
# Malformed and out-of-range NBD traffic (tests/integration/nbd_abuse.py) gets NBD errors or closed
# connections while a well-behaved fio client on another volume keeps working and verifies its
# data; afterwards qbd-master still runs and serves.
. "$(dirname "$0")/lib.sh"

qbd_conf 3
qbdctl create abuse --size 64M >/dev/null || die setup "qbdctl create abuse failed"
qbdctl create busy --size 64M >/dev/null || die setup "qbdctl create busy failed"
qbdctl create locked --size 8M >/dev/null || die setup "qbdctl create locked failed"
qbdctl set locked read-only on >/dev/null || die setup "qbdctl set locked read-only on failed"
qbd_start

# Known data at the start of the abused volume: the cases check that rejected writes change nothing.
head -c 1M /dev/urandom >"$T/head.bin"
nbdcopy --flush "$T/head.bin" "$(uri abuse)" || die setup "nbdcopy into abuse failed"

# A well-behaved client on another volume for the whole test.
fio --output-format=json --output="$T/fio.json" --name=busy --ioengine=nbd --uri="$(uri busy)" \
  --rw=randwrite --bs=4k --iodepth=16 --numjobs=1 --size=64m --verify=crc32c --loops=2 \
  >"$T/fio.out" 2>&1 &
FIO_PID=$!
track $FIO_PID

abuse() { # CASE [EXPORT]
  python3 "$IT_DIR/nbd_abuse.py" --port "$PORT" --export "${2:-abuse}" "$1"
}
check "garbage instead of client flags closes the connection" abuse garbage-flags
check "clients vanishing mid-handshake or mid-request do no harm" abuse truncated-handshake
check "a huge option length gets an error or a closed connection" abuse huge-option
check "an unknown option gets NBD_REP_ERR_UNSUP" abuse unknown-option
check "an unknown export name is refused" abuse unknown-export
check "a bad request magic mid-stream closes the connection" abuse bad-magic
check "an unknown command type gets an error" abuse unknown-command
check "unknown command flags get an error and write nothing" abuse unknown-flags
check "a read beyond the end gets EINVAL" abuse read-beyond-end
check "offset+length overflow gets an error and writes nothing" abuse offset-overflow
check "a read over 32 MiB gets EINVAL" abuse read-too-long
check "a write over 32 MiB gets an error or a closed connection" abuse write-too-long
check "a write beyond the end gets ENOSPC or EINVAL" abuse write-beyond-end
check "writes to a read-only volume get EPERM" abuse write-readonly locked

head_intact() {
  rm -f "$T/head.out"
  nbdcopy --connections 1 "$(uri abuse)" "$T/head.out" &&
    cmp "$T/head.bin" <(head -c 1M "$T/head.out")
}
check "the abused volume's data is unchanged" head_intact

fio_ok() {
  local deadline=$(($(date +%s) + 240))
  while alive $FIO_PID; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "fio still running after 240 s"; return 1; }
    sleep 0.5
  done
  wait $FIO_PID
  local rc=$?
  untrack $FIO_PID
  cat "$T/fio.out"
  [ $rc -eq 0 ] || { show "$T/fio.json" 30; echo "fio exited with status $rc"; return 1; }
  python3 - "$T/fio.json" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
doc = json.loads(text[text.index("{"):])
job = doc["jobs"][0]
print(f'error={job["error"]} write={job["write"]["io_bytes"]} read={job["read"]["io_bytes"]}')
sys.exit(0 if job["error"] == 0 and job["write"]["io_bytes"] > 0 else 1)
EOF
}
check "a parallel fio --verify client kept working and verified its data" fio_ok

check "qbd-master is still running" master_running
check "qbd-master still serves nbdinfo --list" nbdinfo --list "nbd://127.0.0.1:$PORT"
qbd_stop
