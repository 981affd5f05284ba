#!/usr/bin/env bash
# Installs every Debian package qbd needs to build, test and benchmark. Idempotent: when all are
# present it only checks (dpkg-query) and exits 0 at once. Needs root (or sudo) to install.
#   scripts/install-deps.sh          install what is missing
#   scripts/install-deps.sh --check  exit 1 and list what is missing, install nothing
set -euo pipefail

build_pkgs=(g++ make pkg-config libnfs-dev libxxhash-dev libboost-program-options-dev libfmt-dev
  doctest-dev libcpp-httplib-dev nlohmann-json3-dev prometheus-cpp-dev libsystemd-dev libnl-genl-3-dev)
# The test VM (tests/vm/build.sh, run.sh): qemu in software emulation, cpio for its initramfs, and
# the host binaries copied into it (nbd-client, lvm2, dmsetup, thin-provisioning-tools, e2fsprogs);
# the kernel and busybox come from `apt-get download`, not installed here.
test_pkgs=(python3 libnbd-bin python3-libnbd qemu-utils fio nbdkit nbd-server fuse3 e2fsprogs
  xxhash util-linux procps iproute2 nfs-ganesha nfs-ganesha-vfs rpcbind
  qemu-block-extra python3-prometheus-client curl systemd groff-base man-db
  qemu-system-x86 cpio gzip nbd-client lvm2 dmsetup thin-provisioning-tools)
# qemu-block-extra: qemu's nfs:// driver, the peer of make bench-nfs; python3-prometheus-client:
# the text-format parser the metrics tests read /metrics with; systemd: systemd-analyze verify;
# groff-base, man-db: the man pages rendered by test_install.
extra_pkgs=()
if [ "${QBD_DEPS_SANITIZERS:-0}" = 1 ]; then extra_pkgs+=(clang libclang-rt-14-dev); fi

wanted=("${build_pkgs[@]}" "${test_pkgs[@]}" "${extra_pkgs[@]}")
missing=()
for p in "${wanted[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  case "$st" in ii*) ;; *) missing+=("$p") ;; esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "${1:-}" = "--check" ]; then
  echo "missing packages: ${missing[*]}" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# ganesha's package may start services on install; qbd's tests run their own servers.
exit 0
