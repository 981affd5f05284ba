# shellcheck shell=sh
# Helpers for guest scripts (busybox sh), sourced as ". /test/lib.sh". A guest script reports one
# line per check: "PASS: <name>" or "FAIL: <name>: <reason>"; its exit status is 1 when any
# check failed. tests/vm/run.sh brings these lines back to the host.
FAILS=0
export PATH=/usr/sbin:/usr/bin

pass() { echo "PASS: $1"; }
fail() {
  echo "FAIL: $1: ${2:-failed}"
  FAILS=$((FAILS + 1))
}
die() {
  fail "$1" "$2"
  exit 1
}
show() { [ -f "$1" ] && tail -n "${2:-20}" "$1" | sed 's/^/    | /'; return 0; }

# check NAME CMD...: pass when CMD exits 0, else fail and show its output's end.
check() {
  _n=$1
  shift
  if "$@" >/tmp/.check.out 2>&1; then
    pass "$_n"
  else
    fail "$_n" "'$*' exited with status $?"
    show /tmp/.check.out 25
    return 1
  fi
}

now_ms() { # milliseconds since boot
  awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime
}

# qbd_guest_conf DIR NPARTS API_PORT [LINE...]: DIR/qbd.conf with NPARTS local parts on DIR (a
# tmpfs), the NBD listener on 127.0.0.1:10809, the API on 127.0.0.1:API_PORT and the global LINEs.
qbd_guest_conf() {
  _d=$1
  _n=$2
  _port=$3
  shift 3
  _parts=""
  _i=0
  for _l in a b c d e f; do
    [ $_i -lt "$_n" ] || break
    mkdir -p "$_d/node-$_l"
    _parts="$_parts node-$_l"
    _i=$((_i + 1))
  done
  {
    echo "listen = 127.0.0.1:10809"
    echo "api_listen = 127.0.0.1:$_port"
    echo "parts =$_parts"
    echo "allow_shared_failure_domain = true"
    for _l in "$@"; do echo "$_l"; done
    for _l in $_parts; do
      echo "[backend $_l]"
      echo "path = $_l"
    done
  } >"$_d/qbd.conf"
}

# qbd_guest_start DIR: qbd-master on DIR/qbd.conf in the background (log DIR/master.log), waits
# until its REST API answers; sets MASTER_PID.
qbd_guest_start() {
  _d=$1
  shift
  qbd-master --config "$_d/qbd.conf" "$@" </dev/null >>"$_d/master.log" 2>&1 &
  MASTER_PID=$!
  _t=0
  while [ $_t -lt 300 ]; do
    kill -0 "$MASTER_PID" 2>/dev/null || { show "$_d/master.log"; return 1; }
    _api=$(sed -n 's/^api_listen *= *//p' "$_d/qbd.conf")
    wget -q -O /dev/null "http://$_api/v1/daemon" 2>/dev/null && return 0
    sleep 0.1
    _t=$((_t + 1))
  done
  show "$_d/master.log"
  return 1
}

# fs_writer DIR PREFIX: writes one 32 KiB file per step into DIR, fsync'd, until /tmp/stop exists.
# A file's checksum goes to /tmp/wsums.PREFIX once it is written, a failed write to /tmp/werr, and
# each step as "STEP MS END_MS" (its duration, its end in ms since boot) to /tmp/steps.PREFIX.
fs_writer() {
  _j=0
  : >"/tmp/steps.$2"
  while [ ! -e /tmp/stop ]; do
    _t0=$(now_ms)
    if ! dd if=/dev/urandom of="$1/$2$_j" bs=32k count=1 conv=fsync 2>"/tmp/dd.err.$2"; then
      echo "$2$_j: write error: $(cat "/tmp/dd.err.$2")" >>/tmp/werr
    else
      (cd "$1" && sha256sum "$2$_j") >>"/tmp/wsums.$2"
    fi
    _t1=$(now_ms)
    echo "$_j $((_t1 - _t0)) $_t1" >>"/tmp/steps.$2"
    _j=$((_j + 1))
  done
}

# check_dmesg_clean: fails when the kernel logged an I/O error or an ext4 error.
check_dmesg_clean() {
  if dmesg | grep -iE 'I/O error|EXT4-fs (error|warning)|Buffer I/O|remounting'; then
    fail dmesg "errors in the kernel log (above)"
  else
    pass dmesg-clean
  fi
}

# check_fs_files DEV MNT SUMS: unmounts MNT, e2fsck -fn DEV, mounts it read-only, checks every
# checksum of the file SUMS (sha256sum lines, names relative to MNT), unmounts it.
check_fs_files() {
  check umount umount "$2"
  check e2fsck e2fsck -fn "$1"
  check remount mount -o ro "$1" "$2"
  _n=$(wc -l <"$3")
  check "checksums ($_n files)" sh -c \
    "cd '$2' && sha256sum -c '$3' >/tmp/sumcheck || { grep -v OK /tmp/sumcheck | head; exit 1; }"
  umount "$2"
}
