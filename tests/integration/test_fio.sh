#!/usr/bin/env bash
# fio's nbd engine: two jobs of 32 random 4 KiB writes in flight each, on their own halves of the
# volume, verified with crc32c; then mixed reads and writes; then the written data verifies again
# after a restart (fio --verify_only).
. "$(dirname "$0")/lib.sh"

qbd_conf 3
qbdctl create fio --size 128M >/dev/null || die setup "qbdctl create fio failed"
qbdctl create mixed --size 64M >/dev/null || die setup "qbdctl create mixed failed"
qbd_start

# run_fio OUT_JSON FIO_ARGS...: fio with JSON output; checks exit 0, no job error, and that every
# job moved bytes. fio's nbd engine prints "fio: connected to NBD server" before the JSON.
run_fio() {
  local json=$1
  shift
  fio --output-format=json --output="$json.raw" "$@" || { show "$json.raw" 40; return 1; }
  python3 - "$json.raw" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
doc = json.loads(text[text.index("{"):])
ok = True
for job in doc["jobs"]:
    moved = job["write"]["io_bytes"] + job["read"]["io_bytes"]
    print(f'{job["jobname"]}: error={job["error"]} write={job["write"]["io_bytes"]} '
          f'read={job["read"]["io_bytes"]}')
    if job["error"] != 0 or moved == 0:
        ok = False
sys.exit(0 if ok else 1)
EOF
}

# The engine's --uri is only known after --ioengine=nbd.
randwrite=(--name=randwrite --ioengine=nbd --uri="$(uri fio)" --rw=randwrite --bs=4k --iodepth=32
  --numjobs=2 --size=64m --offset_increment=64m --verify=crc32c)
check "fio randwrite 2 jobs iodepth 32 verify=crc32c" run_fio "$T/randwrite.json" "${randwrite[@]}"
check "fio randrw 2 jobs iodepth 32 verify=crc32c" \
  run_fio "$T/randrw.json" --name=randrw --ioengine=nbd --uri="$(uri mixed)" --rw=randrw \
  --bs=4k --iodepth=32 --numjobs=2 --size=32m --offset_increment=32m --verify=crc32c \
  --verify_backlog=256
qbd_stop
qbd_start
check "fio --verify_only finds the random writes intact after a restart" \
  run_fio "$T/verify.json" "${randwrite[@]}" --verify_only
qbd_stop
