#!/usr/bin/env bash
# mount-backends.sh: the troubleshooting path to a volume's files. Reads qbd.conf; mounts every
# NFS backend that has a `mount = DIR` line with the kernel NFS client (NFSv3, the ports of its
# URL), so that ls, cat and cmp work on the chunk files; then checks every backend through the
# same code qbd-master uses (`qbdctl backends`: reachable, writable, free space, volumes).
#
#   scripts/mount-backends.sh [--check] [--config FILE]     (default config: var/qbd.conf)
#     --check   mount nothing, only report
#
# Exit status: 0 every backend reachable and writable (and mounted, where asked); 1 some backend
# is unreachable or not writable; 2 usage or configuration error; 3 a mount failed.
set -uo pipefail

config=var/qbd.conf
check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --config) config=${2:-}; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "mount-backends.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -r "$config" ] || { echo "mount-backends.sh: cannot read $config" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
qbdctl=${QBDCTL:-}
if [ -z "$qbdctl" ]; then
  # The most recently built qbdctl of this checkout, else one on the PATH.
  qbdctl=$(ls -t "$root"/build/*/bin/qbdctl 2>/dev/null | head -n 1)
  [ -n "$qbdctl" ] || qbdctl=$(command -v qbdctl || true)
fi
[ -x "$qbdctl" ] || { echo "mount-backends.sh: qbdctl not found: run make" >&2; exit 2; }

# "name|url|mountdir" for every [backend] with a url.
backends=$(awk '
  /^[ \t]*\[/ { if (name != "" && url != "") print name "|" url "|" mnt; name = ""; url = ""; mnt = "";
                if ($1 == "[backend") { name = $2; sub(/\]$/, "", name) } next }
  name != "" && $1 == "url" { url = $3 }
  name != "" && $1 == "mount" { mnt = $3 }
  END { if (name != "" && url != "") print name "|" url "|" mnt }' "$config")

status=0
kernel_nfs=0
if command -v mount.nfs >/dev/null 2>&1 && grep -qw nfs /proc/filesystems 2>/dev/null; then kernel_nfs=1; fi
while IFS='|' read -r name url mnt; do
  [ -n "$name" ] || continue
  if [ -z "$mnt" ]; then
    echo "$name: $url (no 'mount =' line: checked through libnfs only)"
    continue
  fi
  if mountpoint -q "$mnt" 2>/dev/null; then
    echo "$name: $url is mounted at $mnt"
    continue
  fi
  if [ $check = 1 ]; then
    echo "$name: $url is not mounted at $mnt"
    continue
  fi
  if [ $kernel_nfs = 0 ]; then
    echo "$name: this machine has no kernel NFS client: $url checked through libnfs only"
    continue
  fi
  rest=${url#nfs://}
  host=${rest%%/*}
  path=/${rest#*/}
  query=""
  case "$path" in *\?*) query=${path#*\?}; path=${path%%\?*} ;; esac
  opts="vers=3,proto=tcp,nolock"
  IFS='&' read -ra args <<<"$query"
  for a in "${args[@]}"; do
    case "$a" in nfsport=*) opts+=",port=${a#nfsport=}" ;; mountport=*) opts+=",mountport=${a#mountport=}" ;; esac
  done
  mkdir -p "$mnt"
  if mount -t nfs -o "$opts" "$host:$path" "$mnt"; then
    echo "$name: mounted $host:$path at $mnt ($opts)"
  else
    echo "$name: mount of $host:$path at $mnt failed" >&2
    status=3
  fi
done <<<"$backends"

"$qbdctl" --config "$config" backends
rc=$?
[ $rc = 0 ] || { [ $status = 0 ] && status=1; }
[ $rc -ge 2 ] && status=2
exit $status
