# shellcheck shell=bash
# Fixture verbs for tests that need NFS backends: one nfs-ganesha server (FSAL VFS, NFSv3 over TCP
# on 127.0.0.1) per simulated storage node, reached by qbd-master through userspace libnfs (no
# kernel mount). Source it after lib.sh:
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/ganesha.sh"
#   ganesha_start n1; ganesha_start n2; ganesha_start n3
#   qbd_conf_nfs n1 n2 n3          # or: qbd_conf_nfs local:node-a n2 n3
#
# Server NAME exports $T/nfs-NAME/export as nfs://127.0.0.1/NAME?nfsport=P&mountport=M (its own
# ports, kept across restarts), logs to $T/nfs-NAME/ganesha.log and keeps its recovery state in
# $T/nfs-NAME/recovery. Every server (and the rpcbind this file may start) is tracked by PID: the
# EXIT trap SIGKILLs the servers first (SIGTERM takes ganesha 2-4 s, and a SIGSTOPped one would not
# see it), then lib.sh's cleanup does the rest.
# Facts this relies on (measured on Debian 12, nfs-ganesha 4.3): no systemd or dbus is needed (the
# dbus errors in the log are harmless); NFSv3 needs rpcbind, or ganesha exits at once ("Cannot
# register NFS V3 on TCP"); a URL naming the Pseudo path needs Mount_Path_Pseudo = true, else the
# MOUNT call fails with MNT3ERR_ACCES.

for _g_tool in ganesha.nfsd rpcbind rpcinfo; do # a missing tool fails the test, never skips it
  command -v "$_g_tool" >/dev/null ||
    die setup "$_g_tool is missing (scripts/install-deps.sh installs nfs-ganesha, rpcbind)"
done
[ -n "$(find /usr/lib /usr/lib64 -name libfsalvfs.so -print -quit 2>/dev/null)" ] ||
  die setup "ganesha's FSAL VFS (libfsalvfs.so) is missing: apt-get install nfs-ganesha-vfs"

declare -A _G_PID=() _G_NFSPORT=() _G_MNTPORT=() _G_EXPID=()
_G_NEXT_EXPID=101
_G_RPCBIND_PID=""

ganesha_dir() { echo "$T/nfs-$1"; }           # NAME -> the server's directory
ganesha_export() { echo "$T/nfs-$1/export"; } # NAME -> the directory it exports
ganesha_pid() { echo "${_G_PID[$1]:-}"; }     # NAME -> the server's PID ("" if never started)

ganesha_url() { # NAME -> nfs://127.0.0.1/NAME?nfsport=P&mountport=M (after ganesha_start NAME)
  [ -n "${_G_NFSPORT[$1]:-}" ] || return 1
  echo "nfs://127.0.0.1/$1?nfsport=${_G_NFSPORT[$1]}&mountport=${_G_MNTPORT[$1]}"
}

_ganesha_exit() { # the EXIT trap: SIGKILL every server, then lib.sh's cleanup (same exit status)
  local rc=$? n
  for n in "${!_G_PID[@]}"; do
    if alive "${_G_PID[$n]}"; then
      kill -KILL "${_G_PID[$n]}" 2>/dev/null
      wait "${_G_PID[$n]}" 2>/dev/null
    fi
  done
  (exit $rc)
  _cleanup
}
trap _ganesha_exit EXIT

_ganesha_rpcbind() { # makes sure rpcbind answers on 127.0.0.1; starts (and tracks) one if not
  local deadline
  rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && return 0
  if [ -z "$_G_RPCBIND_PID" ] || ! alive "$_G_RPCBIND_PID"; then
    rpcbind -f </dev/null >>"$T/rpcbind.log" 2>&1 &
    _G_RPCBIND_PID=$!
    track "$_G_RPCBIND_PID"
  fi
  deadline=$(($(date +%s%N) + 5000000000))
  until rpcinfo -p 127.0.0.1 >/dev/null 2>&1; do
    if ! alive "$_G_RPCBIND_PID" || [ "$(date +%s%N)" -gt "$deadline" ]; then
      show "$T/rpcbind.log"
      die ganesha_start "rpcbind (pid $_G_RPCBIND_PID) does not answer 'rpcinfo -p 127.0.0.1'"
    fi
    sleep 0.05
  done
}

_ganesha_conf() { # NAME: writes $T/nfs-NAME/ganesha.conf
  local n=$1 d
  d=$(ganesha_dir "$n")
  cat >"$d/ganesha.conf" <<EOF
# nfs-ganesha for simulated storage node $n ($(basename "$0"))
NFS_CORE_PARAM {
  NFS_Port = ${_G_NFSPORT[$n]};
  MNT_Port = ${_G_MNTPORT[$n]};
  Bind_addr = 127.0.0.1;
  Protocols = 3;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
  Mount_Path_Pseudo = true;
}
NFSv4 {
  Graceless = true;
  RecoveryRoot = $d/recovery;
}
NFS_KRB5 {
  Active_krb5 = false;
}
EXPORT {
  Export_Id = ${_G_EXPID[$n]};
  Path = $d/export;
  Pseudo = /$n;
  Access_Type = RW;
  Squash = No_Root_Squash;
  Protocols = 3;
  Transports = TCP;
  Attr_Expiration_Time = 0;
  FSAL {
    Name = VFS;
  }
}
EOF
}

_ganesha_ready() { # NAME: NFS and MOUNT v3 both answer on the server's ports
  rpcinfo -n "${_G_MNTPORT[$1]}" -t 127.0.0.1 100005 3 >/dev/null 2>&1 &&
    rpcinfo -n "${_G_NFSPORT[$1]}" -t 127.0.0.1 100003 3 >/dev/null 2>&1
}

_ganesha_launch() { # NAME: runs ganesha.nfsd on the written config, waits until it answers (10 s)
  local n=$1 d pid deadline
  d=$(ganesha_dir "$n")
  _ganesha_rpcbind
  mkdir -p /var/run/ganesha
  echo "=== $(date +%T.%N) ganesha_start $n" >>"$d/ganesha.out"
  ganesha.nfsd -F -L "$d/ganesha.log" -f "$d/ganesha.conf" -p "$d/ganesha.pid" \
    </dev/null >>"$d/ganesha.out" 2>&1 &
  pid=$!
  _G_PID[$n]=$pid
  track "$pid"
  deadline=$(($(date +%s%N) + 10000000000))
  until _ganesha_ready "$n"; do
    if ! alive "$pid"; then
      wait_pid "$pid" 1
      show "$d/ganesha.log"
      show "$d/ganesha.out" 5
      die ganesha_start "ganesha.nfsd for $n exited with status $WAIT_RC during start-up (log above)"
    fi
    if [ "$(date +%s%N)" -gt "$deadline" ]; then
      show "$d/ganesha.log"
      die ganesha_start "ganesha.nfsd for $n (pid $pid) does not answer 'rpcinfo -n \
${_G_MNTPORT[$n]} -t 127.0.0.1 100005 3' within 10 s (log above)"
    fi
    sleep 0.05
  done
}

ganesha_start() { # NAME: a new server for node NAME; sets NFS_URL_<NAME> (non-alnum -> _)
  local n=$1 d var
  [[ $n =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die ganesha_start "bad server name '$n'"
  [ -z "${_G_PID[$n]:-}" ] || die ganesha_start "ganesha $n was already started (use ganesha_restart)"
  d=$(ganesha_dir "$n")
  mkdir -p "$d/export" "$d/recovery"
  _G_NFSPORT[$n]=$(free_port)
  _G_MNTPORT[$n]=$(free_port)
  while [ "${_G_MNTPORT[$n]}" = "${_G_NFSPORT[$n]}" ]; do _G_MNTPORT[$n]=$(free_port); done
  _G_EXPID[$n]=$_G_NEXT_EXPID
  _G_NEXT_EXPID=$((_G_NEXT_EXPID + 1))
  _ganesha_conf "$n"
  _ganesha_launch "$n"
  var=NFS_URL_${n//[^A-Za-z0-9_]/_}
  printf -v "$var" '%s' "$(ganesha_url "$n")"
}

_ganesha_known() { # NAME VERB
  [ -n "${_G_PID[$1]:-}" ] || die "$2" "no ganesha server named '$1' was started"
}

ganesha_kill() { # NAME: SIGKILL the server and reap it
  _ganesha_known "$1" ganesha_kill
  local pid=${_G_PID[$1]}
  alive "$pid" || return 0
  echo "=== $(date +%T.%N) ganesha_kill" >>"$(ganesha_dir "$1")/ganesha.out"
  kill -KILL "$pid"
  wait "$pid" 2>/dev/null # reaped here, so bash does not report "Killed" on the test's output
  wait_pid "$pid" 10 || die ganesha_kill "ganesha $1 (pid $pid) is still there 10 s after SIGKILL"
}

ganesha_stop() { # NAME [SECONDS]: SIGTERM, wait for it to exit (20 s; then SIGKILL and fail)
  _ganesha_known "$1" ganesha_stop
  local pid=${_G_PID[$1]} secs=${2:-20}
  alive "$pid" || return 0
  echo "=== $(date +%T.%N) ganesha_stop" >>"$(ganesha_dir "$1")/ganesha.out"
  kill -CONT "$pid" 2>/dev/null # a paused server would never see the SIGTERM
  kill -TERM "$pid"
  if ! wait_pid "$pid" "$secs"; then
    kill -KILL "$pid"
    wait_pid "$pid" 5
    fail ganesha_stop "ganesha $1 did not exit within $secs s of SIGTERM (killed)"
    return 1
  fi
}

ganesha_pause() { # NAME: SIGSTOP (the server keeps its sockets but answers nothing)
  _ganesha_known "$1" ganesha_pause
  echo "=== $(date +%T.%N) ganesha_pause" >>"$(ganesha_dir "$1")/ganesha.out"
  kill -STOP "${_G_PID[$1]}"
}

ganesha_resume() { # NAME: SIGCONT
  _ganesha_known "$1" ganesha_resume
  echo "=== $(date +%T.%N) ganesha_resume" >>"$(ganesha_dir "$1")/ganesha.out"
  kill -CONT "${_G_PID[$1]}"
}

ganesha_restart() { # NAME: start a killed or stopped server again (same ports, export, Export_Id)
  _ganesha_known "$1" ganesha_restart
  alive "${_G_PID[$1]}" && die ganesha_restart "ganesha $1 (pid ${_G_PID[$1]}) is still running"
  wait_pid "${_G_PID[$1]}" 1
  _ganesha_launch "$1"
}

ganesha_running() { # NAME: the server process exists (paused counts)
  [ -n "${_G_PID[$1]:-}" ] && alive "${_G_PID[$1]}"
}

# qbd_conf_nfs NAME... [-- EXTRA_GLOBAL_LINE...]: writes $T/qbd.conf like qbd_conf, sets PORT.
# Part a lives on the first NAME, part b on the second, ... A NAME is a ganesha server started
# with ganesha_start (backend NAME, url = its nfs:// URL), or local:DIR for a local directory
# backend DIR = $T/DIR (backend name DIR; "local:node-a" matches lib.sh's node_dir a).
# nfs_timeout_ms = 2000 (fast failure detection) unless an extra line sets it. Each ganesha server
# is its own failure domain (host:port/export), so no allow_shared_failure_domain is needed unless
# two local: directories share a file system.
qbd_conf_nfs() {
  local names=() extra=() n parts="" l
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    names+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  extra=("$@")
  [ ${#names[@]} -gt 0 ] || die qbd_conf_nfs "no backend named"
  for n in "${names[@]}"; do
    case $n in
      local:*)
        [ -n "${n#local:}" ] || die qbd_conf_nfs "empty local directory name in '$n'"
        mkdir -p "$T/${n#local:}"
        parts+="${parts:+ }${n#local:}"
        ;;
      *)
        ganesha_url "$n" >/dev/null || die qbd_conf_nfs "no ganesha server named '$n' was started"
        parts+="${parts:+ }$n"
        ;;
    esac
  done
  PORT=$(free_port)
  {
    echo "# qbd integration test config ($(basename "$0")), backends on nfs-ganesha"
    echo "listen = 127.0.0.1:$PORT"
    echo "parts = $parts"
    _conf_sets nfs_timeout_ms "${extra[@]}" || echo "nfs_timeout_ms = 2000"
    _conf_sets api_listen "${extra[@]}" || echo "api_listen = 127.0.0.1:$(free_port)"
    for l in "${extra[@]}"; do echo "$l"; done
    for n in "${names[@]}"; do
      case $n in
        local:*)
          echo "[backend ${n#local:}]"
          echo "path = ${n#local:}"
          ;;
        *)
          echo "[backend $n]"
          echo "url = $(ganesha_url "$n")"
          ;;
      esac
    done
  } >"$T/qbd.conf"
}

backend_root() { # NAME -> the directory that holds backend NAME's files (export or local dir)
  case $1 in
    local:*) echo "$T/${1#local:}" ;;
    *) if [ -n "${_G_PID[$1]:-}" ]; then ganesha_export "$1"; else echo "$T/$1"; fi ;;
  esac
}
