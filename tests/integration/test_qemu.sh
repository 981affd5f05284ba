#!/usr/bin/env bash
# qemu's NBD client: qemu-img convert/compare of a 64 MiB random image, and qemu-io reads and
# writes at unaligned offsets and lengths, including ones that straddle 4 MiB chunk boundaries.
. "$(dirname "$0")/lib.sh"

MiB=$((1024 * 1024))
CHUNK=$((4 * MiB))
qbd_conf 3
qbdctl create img --size 64M >/dev/null || die setup "qbdctl create img failed"
qbdctl create io --size 32M >/dev/null || die setup "qbdctl create io failed"
head -c 64M /dev/urandom >"$T/in.raw"
qbd_start

qio() { # VOLUME CMD...: one qemu-io session; fails on a non-zero exit or any error message
  local vol=$1 out args=()
  shift
  for c in "$@"; do args+=(-c "$c"); done
  out=$(qemu-io -f raw "${args[@]}" "$(uri "$vol")" 2>&1)
  local rc=$?
  echo "$out"
  [ $rc -eq 0 ] || return 1
  ! grep -qiE 'fail|error|mismatch|not permitted|invalid' <<<"$out"
}

check "qemu-img convert -n writes a 64 MiB image into the export" \
  qemu-img convert -n -f raw -O raw "$T/in.raw" "$(uri img)"
check "qemu-img compare finds the export identical to the image" \
  qemu-img compare -f raw -F raw "$T/in.raw" "$(uri img)"
convert_out() {
  qemu-img convert -f raw -O raw "$(uri img)" "$T/out.raw" && cmp "$T/in.raw" "$T/out.raw"
}
check "qemu-img convert out of the export gives the image back" convert_out

# A fresh volume reads as zeros; unaligned writes change exactly the bytes they name.
b=$((CHUNK - 3000)) # a write of 7000 bytes starting 3000 bytes before the first chunk boundary
big=$((11 * MiB + 123)) # 6 MiB + 1000 bytes from here: crosses the boundaries at 12 and 16 MiB
check "qemu-io unaligned write 0x5a at 1000+5000 reads back, neighbours stay zero" \
  qio io "read -P 0 0 64k" "write -P 0x5a 1000 5000" "read -P 0x5a 1000 5000" \
  "read -P 0 0 1000" "read -P 0 6000 10000"
check "qemu-io write straddling a chunk boundary reads back" \
  qio io "write -P 0xc3 $b 7000" "read -P 0xc3 $b 7000" \
  "read -P 0 $((b - 5000)) 5000" "read -P 0 $((b + 7000)) 5000"
check "qemu-io 6 MiB unaligned write across two chunk boundaries reads back" \
  qio io "write -P 0x11 $big $((6 * MiB + 1000))" "read -P 0x11 $big $((6 * MiB + 1000))" \
  "read -P 0 $((big - 4096)) 4096" "read -P 0 $((big + 6 * MiB + 1000)) 4096"
check "qemu-io small overwrites inside written data keep the surrounding bytes" \
  qio io "write -P 0x77 $((CHUNK - 1)) 2" "read -P 0xc3 $b 2999" "read -P 0x77 $((CHUNK - 1)) 2" \
  "read -P 0xc3 $((CHUNK + 1)) 3999" "write -P 0x01 4095 1" "read -P 0x5a 1000 3095" \
  "read -P 0x01 4095 1" "read -P 0x5a 4096 1904"
check "qemu-io write -z (WRITE_ZEROES) and discard read back as zeros" \
  qio io "write -P 0x33 $((20 * MiB)) 1M" "write -z $((20 * MiB + 4096)) 8192" \
  "read -P 0x33 $((20 * MiB)) 4096" "read -P 0 $((20 * MiB + 4096)) 8192" \
  "read -P 0x33 $((20 * MiB + 12288)) $((MiB - 12288))" \
  "discard $((20 * MiB + 512 * 1024)) 512k" "read -P 0 $((20 * MiB + 512 * 1024)) 512k" \
  "read -P 0x33 $((20 * MiB + 12288)) $((512 * 1024 - 12288))"
check "qemu-io writes and reads the last 100 bytes of the volume" \
  qio io "write -P 0xee $((32 * MiB - 100)) 100" "read -P 0xee $((32 * MiB - 100)) 100"

qbd_stop
qbd_start
check "qemu-img compare is still identical after a restart" \
  qemu-img compare -f raw -F raw "$T/in.raw" "$(uri img)"
check "qemu-io data is all still there after a restart" \
  qio io "read -P 0 0 1000" "read -P 0x5a 1000 3095" "read -P 0x01 4095 1" \
  "read -P 0x5a 4096 1904" \
  "read -P 0 6000 10000" "read -P 0xc3 $b 2999" "read -P 0x77 $((CHUNK - 1)) 2" \
  "read -P 0xc3 $((CHUNK + 1)) 3999" "read -P 0x11 $big $((6 * MiB + 1000))" \
  "read -P 0x33 $((20 * MiB)) 4096" "read -P 0 $((20 * MiB + 4096)) 8192" \
  "read -P 0 $((20 * MiB + 512 * 1024)) 512k" "read -P 0xee $((32 * MiB - 100)) 100"
qbd_stop
