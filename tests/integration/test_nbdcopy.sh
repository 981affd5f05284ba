#!/usr/bin/env bash
# nbdcopy moves 256 MiB of random data into an export and back out unchanged, over one connection
# and over four (multi-conn), and the data is still there after a restart.
. "$(dirname "$0")/lib.sh"

SIZE=256M
qbd_conf 3
qbdctl create copy1 --size $SIZE >/dev/null || die setup "qbdctl create copy1 failed"
qbdctl create copy4 --size $SIZE >/dev/null || die setup "qbdctl create copy4 failed"
head -c $SIZE /dev/urandom >"$T/in1.bin"
head -c $SIZE /dev/urandom >"$T/in4.bin"
qbd_start

copy_in_out() { # VOLUME INFILE OUTFILE [NBDCOPY_OPTIONS...]: copy in, copy out, compare
  local vol=$1 in=$2 out=$3
  shift 3
  nbdcopy "$@" "$in" "$(uri "$vol")" || { echo "nbdcopy $* $in -> $(uri "$vol") failed"; return 1; }
  rm -f "$out"
  nbdcopy "$@" "$(uri "$vol")" "$out" || {
    echo "nbdcopy $* $(uri "$vol") -> $out failed"
    return 1
  }
  cmp "$in" "$out"
}

check "nbdcopy 256 MiB in and out over one connection" \
  copy_in_out copy1 "$T/in1.bin" "$T/out1.bin" --connections 1
check "nbdcopy 256 MiB in and out over 4 connections with --flush" \
  copy_in_out copy4 "$T/in4.bin" "$T/out4.bin" --connections 4 --flush

copy_out_cmp() { # VOLUME EXPECTED
  rm -f "$T/again.bin"
  nbdcopy --connections 4 "$(uri "$1")" "$T/again.bin" && cmp "$2" "$T/again.bin"
}
check "exports keep their 256 MiB after a later copy to another export" \
  copy_out_cmp copy1 "$T/in1.bin"

qbd_stop
qbd_start
check "flushed 256 MiB reads back identical after a restart" copy_out_cmp copy4 "$T/in4.bin"
check "unflushed copy (flushed by SIGTERM) reads back identical after a restart" \
  copy_out_cmp copy1 "$T/in1.bin"
qbd_stop
