#!/usr/bin/env bash
# qbdctl: create / list / info / resize / delete / set, the metadata files it writes on every
# backend, and bad arguments (non-zero exit, a clear message, nothing changed on disk). qbd-master
# refuses to start on a malformed qbd.conf or .meta and names the file and the line.
. "$(dirname "$0")/lib.sh"

qbd_conf 3

snapshot() { # every file and directory under the backends, with sizes and contents
  (
    cd "$T" || exit 1
    find node-* -printf '%p %y %s %m\n' | sort
    find node-* -type f -exec sha256sum {} + | sort
  )
}

same_on_all_backends() { # RELPATH: the file exists on every backend with identical contents
  local l
  for l in a b c; do
    [ -s "$T/node-$l/$1" ] || { echo "missing or empty: node-$l/$1"; return 1; }
  done
  cmp "$T/node-a/$1" "$T/node-b/$1" && cmp "$T/node-a/$1" "$T/node-c/$1"
}

ctl_ok() { # ARGS...: qbdctl succeeds (its output is shown on failure)
  qbdctl "$@" || { echo "qbdctl $* exited with status $?"; return 1; }
}

# bad NAME KEYWORD_REGEX ARGS...: qbdctl ARGS exits non-zero, says something on stderr that matches
# KEYWORD_REGEX (case-insensitive), and leaves every backend exactly as it was.
bad() {
  local name=$1 re=$2 rc
  shift 2
  snapshot >"$T/before.snap"
  qbdctl "$@" >"$T/bad.out" 2>"$T/bad.err"
  rc=$?
  snapshot >"$T/after.snap"
  if [ $rc -eq 0 ]; then
    fail "$name" "'qbdctl $*' exited 0"
    show "$T/bad.out"
  elif [ ! -s "$T/bad.err" ]; then
    fail "$name" "'qbdctl $*' exited $rc with nothing on stderr"
  elif ! grep -qiE -- "$re" "$T/bad.err"; then
    fail "$name" "'qbdctl $*': stderr does not mention /$re/: $(head -c 300 "$T/bad.err")"
  elif ! cmp -s "$T/before.snap" "$T/after.snap"; then
    fail "$name" "'qbdctl $*' exited $rc but changed the backends"
    diff "$T/before.snap" "$T/after.snap" | sed 's/^/    | /' | head -20
  else
    pass "$name"
  fi
}

# --- create, list, info ---
check "qbdctl create alpha 64M" ctl_ok create alpha --size 64M --replicas 3
check "qbdctl create beta 1G with explicit block and chunk size" \
  ctl_ok create beta --size 1G --replicas 3 --block-size 8192 --chunk-size 8M
check "qbdctl create gamma with default replicas" ctl_ok create gamma --size 12M
check "qbdctl create two with 2 replicas of 3 parts" ctl_ok create two --size 8M --replicas 2

check ".volumesmeta exists on every backend, identical" same_on_all_backends .volumesmeta
for v in 1 2 3; do
  check "volume $v's .meta exists on every backend, identical" same_on_all_backends "$v/.meta"
done
volumesmeta_names() { # NAME...: .volumesmeta mentions each NAME
  local n
  cat "$T/node-a/.volumesmeta"
  for n in "$@"; do
    grep -qw -- "$n" "$T/node-a/.volumesmeta" || { echo "no $n"; return 1; }
  done
}
check ".volumesmeta names every volume" volumesmeta_names alpha beta gamma two

list_has() { # NAME...: qbdctl list shows each NAME
  local n
  qbdctl list >"$T/list.out" || return 1
  cat "$T/list.out"
  for n in "$@"; do grep -qw -- "$n" "$T/list.out" || { echo "list lacks $n"; return 1; }; done
}
check "qbdctl list shows every volume" list_has alpha beta gamma two

info_says() { # NAME REGEX: qbdctl info NAME succeeds, names the volume and matches REGEX
  qbdctl info "$1" >"$T/info.out" || return 1
  cat "$T/info.out"
  grep -qw -- "$1" "$T/info.out" && grep -qiE -- "$2" "$T/info.out"
}
check "qbdctl info alpha shows its size" info_says alpha '67108864|64 ?M'
check "qbdctl info beta shows its size" info_says beta '1073741824|1 ?G|1024 ?M'

# --- bad arguments: nothing changes ---
bad "create without --size is refused" 'size' create delta --replicas 3
bad "create with size 12Q is refused" '12Q|size' create delta --size 12Q
bad "create with size abc is refused" 'abc|size' create delta --size abc
bad "create with size 0 is refused" 'size|zero' create delta --size 0
bad "create with more replicas than backends is refused" 'replica' \
  create delta --size 8M --replicas 4
bad "create with 0 replicas is refused" 'replica' create delta --size 8M --replicas 0
bad "create with block size 1000 is refused" 'block' create delta --size 8M --block-size 1000
bad "create with a duplicate name is refused" 'alpha' create alpha --size 8M
bad "info of an unknown volume is refused" 'nosuch' info nosuch
bad "resize of an unknown volume is refused" 'nosuch' resize nosuch --size 1G
bad "delete of an unknown volume is refused" 'nosuch' delete nosuch
bad "set of an unknown volume is refused" 'nosuch' set nosuch read-only on
bad "set read-only with a value other than on/off is refused" 'maybe' set alpha read-only maybe
bad "set of an unknown property is refused" 'colour' set alpha colour on
bad "resize to a smaller size is refused" 'shrink|smaller|grow|size' resize alpha --size 32M
bad "resize with size 12Q is refused" '12Q|size' resize alpha --size 12Q
bad "an unknown subcommand is refused" 'frobnicate' frobnicate alpha

# --- resize, read-only, delete, as the server sees them ---
check "qbdctl resize alpha to 96M" ctl_ok resize alpha --size 96M
check "qbdctl info alpha shows the new size" info_says alpha '100663296|96 ?M'
check "volume 1's .meta is still identical on every backend after resize" \
  same_on_all_backends 1/.meta
check "qbdctl set gamma read-only on" ctl_ok set gamma read-only on
check "volume 3's .meta is identical on every backend after set" same_on_all_backends 3/.meta

qbd_start
size_is() { # VOLUME BYTES
  local got
  got=$(nbdinfo --size "$(uri "$1")") || return 1
  echo "nbdinfo --size $1: $got"
  [ "$got" = "$2" ]
}
check "the resized volume is served with its new size" size_is alpha 100663296
check "the read-only volume is served read-only" nbdinfo --is read-only "$(uri gamma)"
check "a writable volume is not served read-only" \
  bash -c '! nbdinfo --is read-only "$1"' _ "$(uri alpha)"
check "a volume with 2 replicas of 3 parts takes writes and reads them back" \
  nbdsh -u "$(uri two)" -c 'h.pwrite(b"\x22" * 12288, 4 * 1024 * 1024 - 4096); h.flush()
assert h.pread(16384, 4 * 1024 * 1024 - 8192) == bytes(4096) + b"\x22" * 12288'
nbdsh -u "$(uri alpha)" -c 'h.pwrite(b"\x5a" * 65536, 90 * 1024 * 1024); h.flush()' ||
  fail "write into the grown part of alpha" "nbdsh pwrite at 90 MiB failed"
qbd_stop

check "qbdctl set gamma read-only off" ctl_ok set gamma read-only off
check "qbdctl set gamma append-only on" ctl_ok set gamma append-only on
check "qbdctl set gamma append-only off" ctl_ok set gamma append-only off
check "qbdctl set two append-only on" ctl_ok set two append-only on
check "qbdctl delete beta" ctl_ok delete beta
not_listed() { # NAME: gone from qbdctl list, info and .volumesmeta
  qbdctl list >"$T/list.out" || return 1
  if grep -qw -- "$1" "$T/list.out"; then cat "$T/list.out"; echo "still listed"; return 1; fi
  if qbdctl info "$1"; then echo "info still succeeds"; return 1; fi
  if grep -qw -- "$1" "$T"/node-*/.volumesmeta; then echo "still in a .volumesmeta"; return 1; fi
  same_on_all_backends .volumesmeta
}
check "a deleted volume is gone from list, info and .volumesmeta" not_listed beta
check "the other volumes are still listed after a delete" list_has alpha gamma two
check "a deleted name can be created again" ctl_ok create beta --size 16M --replicas 3

qbd_start
check "the read-only flag is off again" bash -c '! nbdinfo --is read-only "$1"' _ "$(uri gamma)"
check "a volume made writable again takes writes" \
  nbdsh -u "$(uri gamma)" -c 'h.pwrite(b"\x11" * 4096, 0)
assert h.pread(4096, 0) == b"\x11" * 4096'
check "the re-created volume has its new size" size_is beta 16777216
check "the re-created volume reads as zeros" \
  nbdsh -u "$(uri beta)" -c 'assert h.pread(1 << 20, 0) == bytes(1 << 20)'
check "the grown volume kept the data written into its new part" \
  nbdsh -u "$(uri alpha)" -c 'assert h.pread(65536, 90 * 1024 * 1024) == b"\x5a" * 65536'
append_only() { # volume two: new blocks take writes, written blocks refuse them with EPERM
  nbdsh -u "$(uri two)" -c '
import errno
M = 1024 * 1024
h.pwrite(b"\x44" * 4096, 6 * M)
assert h.pread(4096, 6 * M) == b"\x44" * 4096, "a write to an unwritten block was lost"
try:
    h.pwrite(b"\x33" * 4096, 4 * M - 4096)
    raise SystemExit("an overwrite on an append-only volume succeeded")
except nbd.Error as e:
    print("overwrite refused:", e)
    assert e.errnum == errno.EPERM, f"expected EPERM, got {e.errno}"
assert h.pread(16384, 4 * M - 8192) == bytes(4096) + b"\x22" * 12288, "data changed"'
}
check "append-only: new blocks take writes, overwrites get EPERM and change nothing" append_only
qbd_stop
check "qbdctl set two append-only off" ctl_ok set two append-only off

# --- qbd-master refuses a malformed qbd.conf, naming file and line ---
refuses() { # NAME EXPECTED_TEXT CONFIG: qbd-master exits 4 (a bad configuration) at once and names EXPECTED_TEXT
  local name=$1 want=$2 conf=$3 rc
  timeout 10 "$QBD_BIN/qbd-master" --config "$conf" >"$T/refuse.out" 2>&1 </dev/null
  rc=$?
  if [ $rc -eq 124 ]; then
    fail "$name" "qbd-master did not exit within 10 s (killed)"
  elif [ $rc -ne 4 ]; then
    fail "$name" "qbd-master exited with status $rc, expected 4"
    show "$T/refuse.out"
  elif ! grep -qF -- "$want" "$T/refuse.out"; then
    fail "$name" "qbd-master's message does not name '$want': $(head -c 300 "$T/refuse.out")"
  else
    pass "$name"
  fi
}
cat >"$T/bad1.conf" <<EOF
# qbd test config with a malformed line 7
listen = 127.0.0.1:$PORT
parts = node-a node-b node-c
[backend node-a]
path = node-a
[backend node-b]
path node-b
[backend node-c]
path = node-c
EOF
refuses "qbd-master refuses a qbd.conf line without '=' and names bad1.conf:7" bad1.conf:7 \
  "$T/bad1.conf"
cat >"$T/bad2.conf" <<EOF
listen = 127.0.0.1:$PORT
parts = node-a node-b node-c
[backend node-a]
path = node-a
[backend node-b
path = node-b
[backend node-c]
path = node-c
EOF
refuses "qbd-master refuses an unterminated section header and names bad2.conf:5" bad2.conf:5 \
  "$T/bad2.conf"
cat >"$T/bad3.conf" <<EOF
listen = 127.0.0.1:$PORT
parts = node-a node-b node-x
[backend node-a]
path = node-a
[backend node-b]
path = node-b
EOF
refuses "qbd-master refuses parts naming an undefined backend and names bad3.conf:2" bad3.conf:2 \
  "$T/bad3.conf"

# --- two parts on one file system: refused unless allow_shared_failure_domain = true ---
grep -v '^allow_shared_failure_domain' "$T/qbd.conf" >"$T/shared.conf"
refuses "qbd-master refuses parts a, b on one file system without allow_shared_failure_domain" \
  "shared.conf:3: parts a (" "$T/shared.conf"
if grep -q "allow_shared_failure_domain = true" "$T/refuse.out" &&
  grep -q "parts a (.*), b (.*), c (.*) share the file system on device" "$T/refuse.out"; then
  pass "the refusal says what is shared and names the override"
else
  fail "the refusal says what is shared and names the override" "$(head -c 400 "$T/refuse.out")"
fi
if grep -q "share the file system on device .*allowed by allow_shared_failure_domain" "$T/master.log"; then
  pass "with allow_shared_failure_domain = true qbd-master starts and warns about the shared pair"
else
  fail "with allow_shared_failure_domain = true qbd-master starts and warns about the shared pair" \
    "no such warning in master.log"
fi

# --- qbd-master refuses a malformed .meta, naming file and line ---
meta_lines=$(wc -l <"$T/node-a/1/.meta")
if [ "$meta_lines" -lt 3 ]; then
  fail "malformed .meta setup" \
    "1/.meta has only $meta_lines lines: $(head -c 200 "$T/node-a/1/.meta")"
else
  snapshot >"$T/meta-before.snap"
  for l in a b c; do
    cp "$T/node-$l/1/.meta" "$T/meta-$l.good"
    sed -i '3s/.*/@@@ not a key value line @@@/' "$T/node-$l/1/.meta"
  done
  timeout 10 "$QBD_BIN/qbd-master" --config "$T/qbd.conf" >"$T/refuse.out" 2>&1 </dev/null
  rc=$?
  if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then
    fail "qbd-master refuses a malformed .meta" "exit status $rc (124: still running after 10 s)"
  elif ! grep -qE '/1/\.meta:3' "$T/refuse.out"; then
    fail "qbd-master refuses a malformed .meta" \
      "exit $rc; message does not name …/1/.meta:3: $(head -c 300 "$T/refuse.out")"
  else
    pass "qbd-master refuses a malformed .meta and names 1/.meta:3"
  fi
  for l in a b c; do cp "$T/meta-$l.good" "$T/node-$l/1/.meta"; done
  # The refusal must not have touched anything (compare with the .meta files restored).
  snapshot >"$T/meta-after.snap"
  check "a refused start changes nothing on the backends" \
    cmp "$T/meta-before.snap" "$T/meta-after.snap"
  qbd_start
  check "with .meta repaired qbd-master serves the data again" \
    nbdsh -u "$(uri alpha)" -c 'assert h.pread(65536, 90 * 1024 * 1024) == b"\x5a" * 65536'
  check "append-only off: overwrites work again" \
    nbdsh -u "$(uri two)" -c 'h.pwrite(b"\x33" * 4096, 4 << 20)
assert h.pread(8192, (4 << 20) - 4096) == b"\x22" * 4096 + b"\x33" * 4096'
  qbd_stop
fi
