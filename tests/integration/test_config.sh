#!/usr/bin/env bash
# Configuration before action (issue 14): for every malformed qbd.conf (listen forms and ports,
# per-volume listeners, values out of range, directories this machine lacks) and every bad value
# in .meta or .volumesmeta, each of qbd-master, qbdctl, qbd-verify and qbd-repair exits with its
# documented status (4 for a bad qbd.conf, README.md), names the file and the line, and leaves
# every backend's tree exactly as it was: same names, same bytes.
. "$(dirname "$0")/lib.sh"

qbd_conf 3
qbdctl create v --size 16M >/dev/null || die setup "qbdctl create failed"
qbd_start
nbdsh -u "$(uri v)" -c 'h.pwrite(b"\x5a" * 65536, 4 << 20); h.flush()' ||
  die setup "a write through qbd-master failed"
qbd_stop || die setup "qbd-master did not stop cleanly"

# The names and the bytes of every file and directory under the three backends.
tree_sum() {
  (
    cd "$T" || exit 1
    find node-a node-b node-c -print0 | sort -z | xargs -0 stat -c '%n %F %s' | sha256sum
    find node-a node-b node-c -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum
  ) | tr '\n' ' '
}
BEFORE=$(tree_sum)

# conf FILE [GLOBAL_LINE...]: a qbd.conf at $T/FILE: lines 1-3 comment, listen, parts; the
# GLOBAL_LINEs from line 4 on; then the three backends (BACKEND_B overrides node-b's path) and
# VOLUME_SECTION (text appended at the end). Prints nothing.
BACKEND_B=node-b
VOLUME_SECTION=""
conf() {
  local f=$1 l
  shift
  {
    echo "# test_config: $f"
    echo "listen = ${LISTEN:-127.0.0.1:$PORT}"
    echo "parts = node-a node-b node-c"
    for l in "$@"; do echo "$l"; done
    echo "allow_shared_failure_domain = true"
    echo "[backend node-a]"
    echo "path = node-a"
    echo "[backend node-b]"
    echo "path = $BACKEND_B"
    echo "[backend node-c]"
    echo "path = node-c"
    [ -n "$VOLUME_SECTION" ] && printf '%s\n' "$VOLUME_SECTION"
  } >"$T/$f"
}

# run_tool NAME WANT_RC WHERE CMD...: CMD exits WANT_RC within 60 s, its output names WHERE
# (a fixed string, "bad.conf:2:"), and the backends' tree is unchanged.
run_tool() {
  local name=$1 want=$2 where=$3 rc after
  shift 3
  timeout 60 "$@" </dev/null >"$T/tool.out" 2>&1
  rc=$?
  after=$(tree_sum)
  if [ "$rc" != "$want" ]; then
    fail "$name" "exit $rc, want $want: $(head -c 400 "$T/tool.out")"
  elif ! grep -qF -- "$where" "$T/tool.out"; then
    fail "$name" "exit $rc but the message does not name '$where': $(head -c 400 "$T/tool.out")"
  elif [ "$after" != "$BEFORE" ]; then
    fail "$name" "exit $rc, but the backends changed"
  else
    pass "$name"
  fi
}

# refused CASE FILE LINE [WHAT]: every tool refuses $T/FILE with exit 4 naming FILE:LINE (FILE: when
# LINE is "-"), the tree unchanged. WHAT=no-create skips `qbdctl create` (it creates missing
# part directories by design).
refused() {
  local c=$1 f=$2 line=$3 what=${4:-} where
  where="$f:$line:"
  [ "$line" = "-" ] && where="$f"
  run_tool "$c: qbd-master exits 4 naming $where" 4 "$where" "$QBD_BIN/qbd-master" --config "$T/$f"
  run_tool "$c: qbdctl list exits 4 naming $where" 4 "$where" "$QBD_BIN/qbdctl" --config "$T/$f" list
  if [ "$what" != no-create ]; then
    run_tool "$c: qbdctl create exits 4 naming $where" 4 "$where" \
      "$QBD_BIN/qbdctl" --config "$T/$f" create w --size 4M
  fi
  run_tool "$c: qbd-verify exits 4 naming $where" 4 "$where" "$QBD_BIN/qbd-verify" --config "$T/$f"
  run_tool "$c: qbd-verify --json exits 4 naming $where" 4 "$where" \
    "$QBD_BIN/qbd-verify" --config "$T/$f" --json
  run_tool "$c: qbd-repair exits 4 naming $where" 4 "$where" "$QBD_BIN/qbd-repair" --config "$T/$f"
}

# --- listen: syntax and meaning, checked before any backend is opened ---
for spec in "127.0.0.1:$PORT extra" "127.0.0.1:99999" "127.0.0.1:0" "999.1.1.1:$PORT" "127.0.0.1" \
  "::1:$PORT" "bad_host:$PORT" "[::1]$PORT" "unix:$T/nodir/qbd.sock" "unix:"; do
  LISTEN=$spec conf bad.conf
  refused "listen = $spec" bad.conf 2
done

# --- per-volume listeners (the [volume v] listen is the file's last line, 12) ---
for spec in "127.0.0.1:99999" "127.0.0.1:0" "999.1.1.1:$PORT" "127.0.0.1:$PORT" "127.0.0.1:1x" \
  "unix:$T/nodir/v.sock"; do
  VOLUME_SECTION=$(printf '[volume v]\nlisten = %s' "$spec") conf bad.conf
  refused "[volume v] listen = $spec" bad.conf 12
done
VOLUME_SECTION=$(printf '[volume bad!name]\nlisten = 127.0.0.1:1') conf bad.conf
refused "[volume bad!name]" bad.conf 12

# --- every key's range and bounds (the key on line 4) ---
for kv in "threads_per_connection = 0" "threads_per_connection = 257" "nbd_memory = 1M" \
  "client_timeout_ms = 5" "max_connections = 70000" "write_quorum = 27" "volume_poll_ms = 10" \
  "lease_ms = 100" "lease_renew_ms = 50" "nfs_timeout_ms = 99" "resync_mb_per_s = 100001" \
  "cache_size = 2T" "cache_dir_size = 10K" "cache_mode = sometimes" "log_level = loud" \
  "allow_shared_failure_domain = maybe" "lisen = 127.0.0.1:1" "default_export = -x" \
  "admin_socket = nodir/qbd.sock" "cache_dir = nodir/ssd" "cache_dir = node-a/ssd" \
  "default_export = $(printf 'x%.0s' $(seq 5000))"; do
  conf bad.conf "$kv"
  refused "${kv:0:60}" bad.conf 4
done
conf bad.conf "lease_ms = 3000" "lease_renew_ms = 1001"
refused "lease_renew_ms above lease_ms / 3" bad.conf 5
conf bad.conf "cache_dir = ssd" "cache_dir_size = 64M" "cache_dirty_max = 128M"
refused "cache_dirty_max above cache_dir_size" bad.conf 6

# --- parts and backends ---
BACKEND_B=node-gone conf bad.conf
refused "a part's directory that does not exist" bad.conf 8 no-create
[ ! -e "$T/node-gone" ] && pass "the missing part directory was not created" ||
  fail "the missing part directory was not created" "$T/node-gone exists"
BACKEND_B="" conf bad.conf
refused "an empty backend path" bad.conf 8
conf bad.conf
sed -i 's/^parts = .*/parts = node-a node-b node-x/' "$T/bad.conf"
refused "parts naming an undefined backend" bad.conf 3

# --- a qbd.conf that is absent or not a file: exit 4 naming it ---
refused "an absent qbd.conf" absent.conf -
mkdir -p "$T/dir.conf"
refused "a qbd.conf that is a directory" dir.conf -

# --- an address no interface has: qbd-master, which binds it, refuses; the others may run on
# another host and take it ---
if [ "$(cat /proc/sys/net/ipv4/ip_nonlocal_bind 2>/dev/null)" != 1 ]; then
  LISTEN=192.0.2.1:$PORT conf bad.conf
  run_tool "listen on an address of no interface: qbd-master exits 4 naming bad.conf:2" 4 \
    "bad.conf:2:" "$QBD_BIN/qbd-master" --config "$T/bad.conf"
fi
LISTEN=localhost:$PORT conf good.conf
run_tool "listen = localhost:PORT resolves: qbd-verify exits 0" 0 "OK" \
  "$QBD_BIN/qbd-verify" --config "$T/good.conf"

# --- .meta and .volumesmeta: a value out of bounds on every copy (no good majority) ---
# meta_refused CASE FILE_REL LINE: qbd-master exits 2, qbdctl info 2, qbd-verify 4, qbd-repair 4,
# each naming FILE_REL:LINE; the tree (with the bad copies) unchanged.
meta_refused() {
  local c=$1 where="$2:$3:"
  run_tool "$c: qbd-master exits 2 naming $where" 2 "$where" "$QBD_BIN/qbd-master" --config "$T/qbd.conf"
  run_tool "$c: qbdctl info exits 2 naming $where" 2 "$where" "$QBD_BIN/qbdctl" --config "$T/qbd.conf" info v
  run_tool "$c: qbd-verify exits 4 naming $where" 4 "$where" "$QBD_BIN/qbd-verify" --config "$T/qbd.conf"
  run_tool "$c: qbd-repair exits 4 naming $where" 4 "$where" "$QBD_BIN/qbd-repair" --config "$T/qbd.conf"
}

# edit_copies FILE_REL SED_SCRIPT: applies SED_SCRIPT to FILE_REL on every backend (kept in
# $T/saved-<part>), then takes the tree's new sum as the reference.
edit_copies() {
  local l
  for l in a b c; do
    cp "$T/node-$l/$1" "$T/saved-$l"
    sed -i "$2" "$T/node-$l/$1"
  done
  BEFORE=$(tree_sum)
}
restore_copies() { # FILE_REL
  local l
  for l in a b c; do cp "$T/saved-$l" "$T/node-$l/$1"; done
  BEFORE=$(tree_sum)
}

line_of() { grep -n "^$2 =" "$T/node-a/$1" | head -n 1 | cut -d: -f1; } # FILE_REL KEY

digits=$(printf '7%.0s' $(seq 100000))
if grep -q '^created =' "$T/node-a/1/.meta"; then
  n=$(line_of 1/.meta created)
  edit_copies 1/.meta "s/^created = .*/created = $digits/"
else
  n=$(($(wc -l <"$T/node-a/1/.meta") + 1))
  edit_copies 1/.meta "\$a created = $digits"
fi
meta_refused "a created of 100,000 digits in .meta" 1/.meta "$n"
restore_copies 1/.meta
n=$(line_of 1/.meta size)
edit_copies 1/.meta "s/^size = .*/size = 2305843009213693952/"
meta_refused "a size above 1 PiB in .meta" 1/.meta "$n"
restore_copies 1/.meta
n=$(line_of 1/.meta chunk_size)
edit_copies 1/.meta "s/^chunk_size = .*/chunk_size = 2048/"
meta_refused "a chunk_size below the block size in .meta" 1/.meta "$n"
restore_copies 1/.meta
n=$(line_of 1/.meta number)
edit_copies 1/.meta "s/^number = .*/number = 7/"
meta_refused "a number other than its directory's in .meta" 1/.meta "$n"
restore_copies 1/.meta

n=$(line_of .volumesmeta v)
edit_copies .volumesmeta "s/^v = .*/v = 99999999999/"
meta_refused "a volume number past 32 bits in .volumesmeta" .volumesmeta "$n"
restore_copies .volumesmeta
n=$(line_of .volumesmeta serial)
edit_copies .volumesmeta "s/^serial = .*/serial = $digits/"
meta_refused "a serial of 100,000 digits in .volumesmeta" .volumesmeta "$n"
restore_copies .volumesmeta

# With everything restored the volume is served again and holds what was written.
qbd_start
check "with every file restored qbd-master serves the data written before" \
  nbdsh -u "$(uri v)" -c 'assert h.pread(65536, 4 << 20) == b"\x5a" * 65536'
qbd_stop
