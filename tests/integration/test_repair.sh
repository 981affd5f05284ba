#!/usr/bin/env bash
# Read-repair: a deleted chunk file on one part and a flipped byte on another part's copy of another
# chunk. Reads through NBD return the written data, the damaged copies are rewritten (all three
# parts' chunk files identical again), and master.log names volume, part and chunk. Once with the
# damage done while qbd-master is stopped, once while it runs.
. "$(dirname "$0")/lib.sh"

MiB=$((1024 * 1024))
qbd_conf 3
qbdctl create cold --size 32M --replicas 3 >/dev/null || die setup "qbdctl create cold failed"
qbdctl create hot --size 32M --replicas 3 >/dev/null || die setup "qbdctl create hot failed"
head -c 32M /dev/urandom >"$T/cold.bin"
head -c 32M /dev/urandom >"$T/hot.bin"


reads_right() { # VOLUME EXPECTED: three full reads through NBD (so every part gets asked)
  local i
  for i in 1 2 3; do
    rm -f "$T/out.bin"
    nbdcopy "$(uri "$1")" "$T/out.bin" || return 1
    cmp "$2" "$T/out.bin" || { echo "read $i differs"; return 1; }
  done
}

parts_identical() { # VOLNR CHUNK_INDEX: the chunk file exists on parts a, b, c, byte-identical
  local a b c
  a=$(chunk_path node-a "$1" a "$2")
  b=$(chunk_path node-b "$1" b "$2")
  c=$(chunk_path node-c "$1" c "$2")
  ls -l "$a" "$b" "$c" || return 1
  cmp "$a" "$b" && cmp "$a" "$c"
}

# log_names_repair SINCE_LINE VOLNAME VOLNR PART CHUNK_INDEX: a master.log line after SINCE_LINE
# mentions a repair and names the volume (name or number), the part and the chunk (index or file
# number).
log_names_repair() {
  tail -n +"$1" "$T/master.log" >"$T/log.tail"
  python3 - "$T/log.tail" "${@:2}" <<'EOF'
import re, sys
path, name, volnr, part, idx = sys.argv[1:5] + [int(sys.argv[5])]
lines = [l.rstrip("\n") for l in open(path) if re.search(r"repair", l, re.I)]
vol = re.compile(rf"\b{re.escape(name)}\b|\bvol(ume)?[ =:#]*{volnr}\b|(^|[ /=]){volnr}/{part}/",
                 re.I)
prt = re.compile(rf"\bpart[ =:]*{part}\b|(^|[ /=]){volnr}/{part}/|\b{part}/{idx + 1}\b", re.I)
chk = re.compile(rf"\bchunk[ =:#]*({idx}|{idx + 1})\b|\b{part}/{idx + 1}\b", re.I)
hits = [l for l in lines if vol.search(l) and prt.search(l) and chk.search(l)]
print(f"{len(lines)} repair lines, {len(hits)} naming volume {name}/{volnr}, part {part}, "
      f"chunk index {idx} (file {idx + 1}):")
for l in (hits or lines)[:8]:
    print("  " + l)
sys.exit(0 if hits else 1)
EOF
}

# compared_all SINCE_LINE VOLUME: the first reads after a start are judged and queue each chunk's
# comparison, which rewrites the damaged copies in the background (layout-spec.md §4.6): wait (60 s
# at the most) for master.log to say every written chunk of VOLUME is compared.
compared_all() {
  wait_until 60 bash -c 'tail -n +"$1" "$2" | grep -q "volume $3: every written chunk compared since the start"' \
    _ "$1" "$T/master.log" "$2"
}

qbd_start
check "write 32 MiB to each volume and flush" \
  bash -c 'nbdcopy --flush "$1" "$2" && nbdcopy --flush "$3" "$4"' _ \
  "$T/cold.bin" "$(uri cold)" "$T/hot.bin" "$(uri hot)"
qbd_stop

# --- damage while stopped: volume 1 ("cold") ---
DEL=2  # chunk index whose file on part a is deleted (file a/3)
FLIP=5 # chunk index whose copy on part b gets a flipped byte (block 10, byte 100)
rm -f "$(chunk_path node-a 1 a $DEL)"
flip_byte "$(chunk_path node-b 1 b $FLIP)" $((10 * (4096 + 16) + 100))
since=$(($(wc -l <"$T/master.log") + 1))
qbd_start
check "cold damage: reads through NBD return the written data" reads_right cold "$T/cold.bin"
check "cold damage: the first accesses have every chunk of cold compared" compared_all "$since" cold
check "cold damage: flush" nbdsh -u "$(uri cold)" -c 'h.flush()'
qbd_stop
check "cold damage: the deleted chunk file is back, identical on parts a, b, c" \
  parts_identical 1 $DEL
check "cold damage: the flipped byte is restored, identical on parts a, b, c" \
  parts_identical 1 $FLIP
check "cold damage: master.log names the repair of the deleted file (volume, part a, chunk)" \
  log_names_repair "$since" cold 1 a $DEL
check "cold damage: master.log names the repair of the flipped byte (volume, part b, chunk)" \
  log_names_repair "$since" cold 1 b $FLIP

# --- damage while running: volume 2 ("hot") ---
DEL=4
FLIP=6
since=$(($(wc -l <"$T/master.log") + 1))
qbd_start
rm -f "$(chunk_path node-a 2 a $DEL)"
flip_byte "$(chunk_path node-b 2 b $FLIP)" $((10 * (4096 + 16) + 100))
check "hot damage: reads through NBD return the written data" reads_right hot "$T/hot.bin"
check "hot damage: the first accesses have every chunk of hot compared" compared_all "$since" hot
check "hot damage: flush" nbdsh -u "$(uri hot)" -c 'h.flush()'
qbd_stop
check "hot damage: the deleted chunk file is back, identical on parts a, b, c" \
  parts_identical 2 $DEL
check "hot damage: the flipped byte is restored, identical on parts a, b, c" \
  parts_identical 2 $FLIP
check "hot damage: master.log names the repair of the deleted file (volume, part a, chunk)" \
  log_names_repair "$since" hot 2 a $DEL
check "hot damage: master.log names the repair of the flipped byte (volume, part b, chunk)" \
  log_names_repair "$since" hot 2 b $FLIP

# And after all that, both volumes still read right after a restart.
qbd_start
both_right() { reads_right cold "$T/cold.bin" && reads_right hot "$T/hot.bin"; }
check "after the repairs both volumes read back right" both_right
qbd_stop

# --- lost metadata copies on one backend (layout-spec §1.1: read the others, report the loss) ---
log_since_mentions() { # SINCE_LINE REGEX: a master.log line after SINCE_LINE matches REGEX
  tail -n +"$1" "$T/master.log" | grep -E -- "$2" ||
    { echo "no master.log line matches /$2/:"; tail -n +"$1" "$T/master.log" | tail -n 15; return 1; }
}
rm -f "$T/node-c/.volumesmeta" "$T/node-c/1/.meta"
since=$(($(wc -l <"$T/master.log") + 1))
qbd_start
check "with node-c's .volumesmeta and 1/.meta gone, both volumes still read back right" both_right
qbd_stop
check "master.log reports node-c's missing .volumesmeta" log_since_mentions "$since" 'volumesmeta'
check "master.log reports node-c's missing copy of volume 1's .meta" \
  log_since_mentions "$since" '(^|[^a-z])1/\.meta|\.meta.*(volume (cold|1)|node-c)|(cold|node-c).*\.meta'
