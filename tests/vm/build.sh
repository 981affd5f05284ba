#!/usr/bin/env bash
# Builds what tests/vm/run.sh boots: Debian 12's own kernel and an initramfs, from Debian packages
# only (apt-get download + dpkg-deb -x; no debootstrap, no other download).
#   tests/vm/build.sh [QBD_BIN_DIR [OUT_CPIO]]
# The cache directory is $QBD_VM_CACHE (default build/vm under the source tree). It holds
#   debs/          linux-image-6.1.*-amd64 (the linux-image-amd64 candidate) and busybox-static
#   vmlinuz        the kernel
#   base.cpio.gz   busybox, the kernel modules the tests need, lvm2, dmsetup, thin-provisioning-tools
#                  (pdata_tools), e2fsprogs, nbd-client, each host binary with every library ldd
#                  lists, perl (Debian's perl-base: the interpreter and its core modules, plus the
#                  few modules of perl-modules the Proxmox plugin and its harness load), and /init
#                  (tests/vm/init). Rebuilt only when base.key changes: the two .debs' names, this
#                  script, tests/vm/init and the host binaries' and Perl modules' checksums.
# With QBD_BIN_DIR, it also writes OUT_CPIO (default $QBD_VM_CACHE/qbd.cpio): qbd-master and
# qbdctl from that directory (without debug information) with their libraries, and the Proxmox
# plugin with its harness and stubs under /qbd (/qbd/proxmox/QBDPlugin.pm,
# /qbd/tests/proxmox/plugin_test.pl: the source tree's layout, which the harness expects), an
# uncompressed cpio appended to the base at each run (cheap; they change with the source, perl
# does not). With QBD_OLD_BIN also set (a directory, e.g. tests/vm/build-old.sh's), its qbd-master
# and qbdctl go into OUT_CPIO too, as /usr/sbin/qbd-master-old and /usr/sbin/qbdctl-old: the
# upgrade test runs both versions in one guest.
# With QBD_VM_SYSTEMD=1, it also builds (cached like the base) $QBD_VM_CACHE/systemd.cpio.gz, which
# tests/vm/run.sh appends for guest scripts marked "# qbd-vm: systemd": systemd (PID 1), journald,
# systemctl and journalctl with their libraries, Debian's targets and slices, /sbin/modprobe with
# the nbd module, and
# qbd-vm.target/qbd-vm-test.service, through which tests/vm/init's run of /test/run.sh happens
# under systemd. The normal boot does not carry it.
# Prints nothing on success but the paths it rebuilt; exit status 1 with a message on failure.
set -euo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

src=$(cd "$(dirname "$0")/../.." && pwd)
cache=${QBD_VM_CACHE:-$src/build/vm}
mkdir -p "$cache/debs"
cache=$(cd "$cache" && pwd)

die() {
  echo "vm/build.sh: $*" >&2
  exit 1
}

# Kernel modules, by name; their dependencies (from each .ko's modinfo "depends=") are added and
# everything is loaded in dependency order. crc32c_generic is not a link-time dependency of ext4
# (it finds "crc32c" through the crypto API), dm-snapshot is what lvcreate -s of a thin LV checks.
MODULES=(crc32c_generic ext4 nbd e1000 dm-mod dm-thin-pool dm-snapshot)
# Host binaries copied into the image, with the libraries ldd lists.
HOST_BINS=(/usr/sbin/lvm /usr/sbin/dmsetup /usr/sbin/pdata_tools /usr/sbin/e2fsck /usr/sbin/mke2fs
  /usr/sbin/nbd-client)
LVM_LINKS=(pvcreate pvremove pvresize pvs pvscan vgcreate vgchange vgremove vgs vgscan lvcreate
  lvchange lvextend lvremove lvs)
THIN_LINKS=(thin_check thin_dump thin_repair thin_restore)
# Perl for tests/vm/guest/proxmox_plugin.sh: /usr/bin/perl is Debian's perl-base, whose core
# modules (strict, warnings, IO, Socket, Cwd, POSIX, ...) are all in PERL_BASE; from perl-modules
# only what the plugin (HTTP::Tiny, JSON::PP) and its harness (FindBin) load. PERL_BASE's unicore/
# (the Unicode tables, 3.7 MB: \p{...} and charnames) is left out: neither loads it (strace).
PERL=/usr/bin/perl
PERL_BASE=/usr/lib/x86_64-linux-gnu/perl-base
PERL_PRIVLIB=/usr/share/perl/5.36
PERL_MODULES=(HTTP/Tiny.pm JSON/PP.pm JSON/PP/Boolean.pm FindBin.pm)

for b in "${HOST_BINS[@]}" "$PERL"; do
  [ -x "$b" ] || die "$b is missing (run scripts/install-deps.sh)"
done
[ -d "$PERL_BASE" ] || die "$PERL_BASE is missing (perl-base)"
for m in "${PERL_MODULES[@]}"; do
  [ -f "$PERL_PRIVLIB/$m" ] || die "$PERL_PRIVLIB/$m is missing (perl-modules-5.36)"
done
for t in apt-get apt-cache dpkg-deb cpio gzip ldd sha256sum strip; do
  command -v "$t" >/dev/null || die "$t is missing (run scripts/install-deps.sh)"
done

# download PACKAGE: the .deb of PACKAGE's candidate version in debs/ (kept: downloaded once).
download() {
  local pkg=$1 ver file
  ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2 }')
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version of $pkg (apt-get update?)"
  # apt's file names escape the epoch's ':' as %3a.
  file="$cache/debs/${pkg}_${ver//:/%3a}_amd64.deb"
  if [ ! -s "$file" ]; then
    (cd "$cache/debs" && apt-get download -q "$pkg=$ver" >/dev/null 2>"$cache/debs/apt.err") ||
      die "apt-get download $pkg=$ver failed: $(cat "$cache/debs/apt.err")"
  fi
  [ -s "$file" ] || die "apt-get download $pkg=$ver did not write $file"
  echo "$file"
}

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6\.1.*-amd64/ { print $2; exit }')
[ -n "$kpkg" ] || die "linux-image-amd64 does not depend on a linux-image-6.1.*-amd64 package"
kdeb=$(download "$kpkg")
bdeb=$(download busybox-static)

# copy_bin ROOT FILE [NAME]: FILE into ROOT/usr/sbin (or ROOT/usr/bin/NAME... see below) plus the
# libraries ldd lists for it, at their paths under usr/ (the image has merged-/usr symlinks).
usr_path() { # /sbin/x, /lib/x, /usr/lib/x -> usr/sbin/x, usr/lib/x, usr/lib/x
  case $1 in
    /usr/*) echo "${1#/}" ;;
    *) echo "usr$1" ;;
  esac
}
copy_with_libs() { # ROOT FILE DEST (relative to ROOT)
  local root=$1 file=$2 dest=$3 lib
  mkdir -p "$root/$(dirname "$dest")"
  cp -L "$file" "$root/$dest"
  for lib in $(ldd "$file" | grep -oE '/[^ ]+' || true); do
    [ -e "$lib" ] || continue
    local d
    d=$(usr_path "$lib")
    [ -e "$root/$d" ] && continue
    mkdir -p "$root/$(dirname "$d")"
    cp -L "$lib" "$root/$d"
  done
}

# --- the base image ------------------------------------------------------------------------------
key=$(
  {
    basename "$kdeb"
    basename "$bdeb"
    sha256sum "$0" "$src/tests/vm/init" | awk '{ print $1 }'
    sha256sum "${HOST_BINS[@]}" /etc/mke2fs.conf "$PERL" | awk '{ print $1 }'
    (cd "$PERL_PRIVLIB" && sha256sum "${PERL_MODULES[@]}")
    find "$PERL_BASE" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | awk '{ print $1 }'
  } | sha256sum | awk '{ print $1 }'
)
if [ ! -s "$cache/base.cpio.gz" ] || [ ! -s "$cache/vmlinuz" ] ||
  [ "$(cat "$cache/base.key" 2>/dev/null)" != "$key" ]; then
  work="$cache/base.tmp"
  rm -rf "$work"
  mkdir -p "$work/kernel" "$work/bb" "$work/root"
  dpkg-deb -x "$kdeb" "$work/kernel"
  dpkg-deb -x "$bdeb" "$work/bb"
  kver=$(ls "$work/kernel/lib/modules")
  kmods="$work/kernel/lib/modules/$kver/kernel"
  root="$work/root"

  mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,dev,proc,sys,tmp,run/lvm,run/lock/lvm,etc/lvm,mnt,var,modules,test}
  ln -s usr/bin "$root/bin"
  ln -s usr/sbin "$root/sbin"
  ln -s usr/lib "$root/lib"
  ln -s usr/lib64 "$root/lib64"

  cp "$work/bb/bin/busybox" "$root/usr/bin/busybox"
  for applet in $("$work/bb/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/usr/bin/$applet"
  done

  # Modules: every wanted one after its dependencies.
  declare -A modpath=() loaded=()
  while IFS= read -r f; do
    n=$(basename "$f" .ko)
    modpath[${n//-/_}]=$f
  done < <(find "$kmods" -name '*.ko')
  order=()
  add_module() { # NAME
    local n=${1//-/_} f deps d
    [ -n "${loaded[$n]:-}" ] && return 0
    f=${modpath[$n]:-}
    [ -n "$f" ] || die "kernel module $1 not found in $kpkg"
    deps=$(tr '\0' '\n' <"$f" | grep -a -m 1 '^depends=' | cut -d= -f2 || true)
    for d in ${deps//,/ }; do add_module "$d"; done
    loaded[$n]=1
    cp "$f" "$root/modules/"
    order+=("$(basename "$f")")
  }
  for m in "${MODULES[@]}"; do add_module "$m"; done
  printf '%s\n' "${order[@]}" >"$root/modules/order"

  for b in "${HOST_BINS[@]}"; do copy_with_libs "$root" "$b" "$(usr_path "$b")"; done
  for l in "${LVM_LINKS[@]}"; do ln -sf lvm "$root/usr/sbin/$l"; done
  for l in "${THIN_LINKS[@]}"; do ln -sf pdata_tools "$root/usr/sbin/$l"; done
  for l in mkfs.ext4 mkfs.ext3 mkfs.ext2; do ln -sf mke2fs "$root/usr/sbin/$l"; done
  for l in fsck.ext4 e2fsck; do [ "$l" = e2fsck ] || ln -sf e2fsck "$root/usr/sbin/$l"; done
  # busybox's applets of the same names must not win over the real tools in PATH order.
  for l in mkfs.ext2 mke2fs e2fsck fsck.ext4 mkfs.ext4 mkfs.ext3; do
    [ -L "$root/usr/bin/$l" ] && rm -f "$root/usr/bin/$l"
  done
  cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
  copy_with_libs "$root" "$PERL" "$(usr_path "$PERL")"
  mkdir -p "$root/$(usr_path "$(dirname "$PERL_BASE")")"
  cp -a "$PERL_BASE" "$root/$(usr_path "$PERL_BASE")"
  rm -rf "$root/$(usr_path "$PERL_BASE")/unicore"
  for m in "${PERL_MODULES[@]}"; do
    mkdir -p "$root/$(usr_path "$PERL_PRIVLIB")/$(dirname "$m")"
    cp "$PERL_PRIVLIB/$m" "$root/$(usr_path "$PERL_PRIVLIB")/$m"
  done
  cat >"$root/etc/lvm/lvm.conf" <<'EOF'
devices {
  obtain_device_list_from_udev = 0
  external_device_info_source = "none"
  use_devicesfile = 0
}
global {
  thin_check_executable = "/usr/sbin/thin_check"
  locking_dir = "/run/lock/lvm"
}
activation {
  udev_sync = 0
  udev_rules = 0
  monitoring = 0
}
EOF
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
  cp "$src/tests/vm/init" "$root/init"
  chmod 755 "$root/init"

  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
    gzip -1 >"$cache/base.cpio.gz.tmp"
  cp "$work/kernel/boot/vmlinuz-$kver" "$cache/vmlinuz.tmp"
  mv "$cache/base.cpio.gz.tmp" "$cache/base.cpio.gz"
  mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
  echo "$kver" >"$cache/kernel.version"
  echo "$key" >"$cache/base.key"
  rm -rf "$work"
  echo "built $cache/base.cpio.gz and $cache/vmlinuz (kernel $kver)"
fi

# --- systemd as PID 1 (QBD_VM_SYSTEMD=1) -----------------------------------------------------------
SYSTEMD_BINS=(/usr/lib/systemd/systemd /usr/lib/systemd/systemd-journald /usr/bin/systemctl
  /usr/bin/journalctl)
SYSTEMD_UNITS=(systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket)
if [ "${QBD_VM_SYSTEMD:-}" = 1 ]; then
  for b in "${SYSTEMD_BINS[@]}"; do
    [ -x "$b" ] || die "$b is missing (Debian's systemd package)"
  done
  skey=$(
    {
      basename "$kdeb"
      sha256sum "$0" | awk '{ print $1 }'
      sha256sum "${SYSTEMD_BINS[@]}" /usr/lib/os-release | awk '{ print $1 }'
      (cd /usr/lib/systemd/system && sha256sum ./*.target ./*.slice "${SYSTEMD_UNITS[@]}")
    } | sha256sum | awk '{ print $1 }'
  )
  if [ ! -s "$cache/systemd.cpio.gz" ] || [ "$(cat "$cache/systemd.key" 2>/dev/null)" != "$skey" ]; then
    sroot="$cache/systemd.tmp"
    rm -rf "$sroot"
    # Only paths under usr/, etc/ and var/: an entry for lib or bin would replace the base's
    # merged-/usr symlinks when the kernel unpacks this segment over them.
    mkdir -p "$sroot/usr/lib/systemd/system" "$sroot/etc/systemd/system" "$sroot/usr/sbin" \
      "$sroot/var/tmp"
    chmod 1777 "$sroot/var/tmp"
    for b in "${SYSTEMD_BINS[@]}"; do copy_with_libs "$sroot" "$b" "$(usr_path "$b")"; done
    # Targets and slices without their .wants/ (Debian's boot services are not wanted here): the
    # default dependencies of services (sysinit.target, basic.target, shutdown.target, ...) and
    # qbd-master.service's network-online.target and remote-fs.target exist as on a real host.
    cp /usr/lib/systemd/system/*.target /usr/lib/systemd/system/*.slice "$sroot/usr/lib/systemd/system/"
    for u in "${SYSTEMD_UNITS[@]}"; do cp "/usr/lib/systemd/system/$u" "$sroot/usr/lib/systemd/system/"; done
    mkdir -p "$sroot/usr/lib/systemd/system/sockets.target.wants" \
      "$sroot/usr/lib/systemd/system/sysinit.target.wants"
    ln -s ../systemd-journald.socket ../systemd-journald-dev-log.socket \
      "$sroot/usr/lib/systemd/system/sockets.target.wants/"
    ln -s ../systemd-journald.service "$sroot/usr/lib/systemd/system/sysinit.target.wants/"
    # /sbin/modprobe (busybox's here, kmod's on Debian) and the nbd module where it looks, for
    # qbd-master.service's ExecStartPre (the guest script unloads nbd first).
    kver=${kpkg#linux-image-}
    ln -s ../bin/busybox "$sroot/usr/sbin/modprobe"
    mkdir -p "$sroot/usr/lib/modules/$kver/kernel/drivers/block"
    dpkg-deb --fsys-tarfile "$kdeb" | tar -xO "./lib/modules/$kver/kernel/drivers/block/nbd.ko" \
      >"$sroot/usr/lib/modules/$kver/kernel/drivers/block/nbd.ko"
    echo "kernel/drivers/block/nbd.ko:" >"$sroot/usr/lib/modules/$kver/modules.dep"
    cp /usr/lib/os-release "$sroot/usr/lib/os-release"
    ln -s ../usr/lib/os-release "$sroot/etc/os-release"
    # tests/vm/init execs systemd with --unit=qbd-vm.target.
    printf '%s\n' '[Unit]' 'Description=qbd test VM' 'Requires=basic.target' 'After=basic.target' \
      'Wants=qbd-vm-test.service' 'AllowIsolate=yes' >"$sroot/etc/systemd/system/qbd-vm.target"
    # The guest script's output goes to the journal and the console; tests/vm/init's run-test
    # tees it to ttyS1 as in the normal boot, ends with the sentinel and powers off.
    printf '%s\n' '[Unit]' 'Description=qbd test VM: /test/run.sh' 'After=basic.target' '' \
      '[Service]' 'Type=oneshot' 'ExecStart=/init run-test' 'StandardInput=null' \
      'StandardOutput=journal+console' 'StandardError=inherit' 'TimeoutStartSec=infinity' \
      >"$sroot/etc/systemd/system/qbd-vm-test.service"
    (cd "$sroot" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
      gzip -1 >"$cache/systemd.cpio.gz.tmp"
    mv "$cache/systemd.cpio.gz.tmp" "$cache/systemd.cpio.gz"
    echo "$skey" >"$cache/systemd.key"
    rm -rf "$sroot"
    echo "built $cache/systemd.cpio.gz"
  fi
fi

# --- qbd's binaries --------------------------------------------------------------------------------
if [ $# -ge 1 ]; then
  bin=$(cd "$1" && pwd) || die "$1 is not a directory"
  out=${2:-$cache/qbd.cpio}
  qroot=$(mktemp -d "$cache/qbd.XXXXXX")
  trap 'rm -rf "$qroot"' EXIT
  for b in qbd-master qbdctl; do
    [ -x "$bin/$b" ] || die "$bin/$b does not exist (build it first)"
    copy_with_libs "$qroot" "$bin/$b" "usr/sbin/$b"
    # Debug information is most of a debug build's size; the guest unpacks every byte.
    strip --strip-debug "$qroot/usr/sbin/$b"
  done
  if [ -n "${QBD_OLD_BIN:-}" ]; then
    old=$(cd "$QBD_OLD_BIN" && pwd) || die "QBD_OLD_BIN=$QBD_OLD_BIN is not a directory"
    for b in qbd-master qbdctl; do
      [ -x "$old/$b" ] || die "$old/$b does not exist (tests/vm/build-old.sh builds it)"
      # copy_with_libs adds only libraries the current binaries did not bring (none when both
      # were built here from the same packages).
      copy_with_libs "$qroot" "$old/$b" "usr/sbin/$b-old"
      strip --strip-debug "$qroot/usr/sbin/$b-old"
    done
  fi
  mkdir -p "$qroot/qbd/proxmox" "$qroot/qbd/tests/proxmox"
  cp "$src/proxmox/QBDPlugin.pm" "$qroot/qbd/proxmox/"
  cp -r "$src/tests/proxmox/plugin_test.pl" "$src/tests/proxmox/stub" "$qroot/qbd/tests/proxmox/"
  (cd "$qroot" && find . -mindepth 1 -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) \
    >"$out.tmp"
  mv "$out.tmp" "$out"
fi
