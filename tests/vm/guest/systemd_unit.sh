#!/bin/sh
# qbd-master.service itself, in a guest booted with systemd as PID 1, the unit as `make install
# PREFIX=/usr` writes it and qbd.conf in /etc/qbd with its parts under /srv/qbd: `systemctl start`
# returns once READY=1 came (Type=notify) and the daemon runs inside the unit's sandbox (no new
# privileges, seccomp, the capability bounding set); `qbdctl status` answers OK; `qbdctl attach`
# (netlink NBD, /dev/nbdX, /dev/qbd/NAME, the state file in StateDirectory) carries ext4 that
# reads back; `attach --lvm-thin` runs LVM's tools as the daemon's children, under the same
# sandbox, and a thin LV of its pool takes ext4 (there is no udev here: LVM's tools make the
# /dev/mapper nodes themselves, with the unit's CAP_MKNOD); `systemctl restart` under writers on
# the ext4 device costs them no error; detach and `systemctl stop` end clean, and the journal
# holds no denial.
# qbd-vm: systemd
. /test/lib.sh
UNIT=/usr/lib/systemd/system/qbd-master.service
CONF=/etc/qbd/qbd.conf
ctl() { qbdctl --config $CONF "$@"; }
journal() { journalctl -q -o cat -u qbd-master | tail -n "${1:-30}" | sed 's/^/    | /'; }

[ "$(cat /proc/1/comm)" = systemd ] && pass "systemd is PID 1" || die pid1 "PID 1 is $(cat /proc/1/comm)"
grep -q '^ExecStart=/usr/sbin/qbd-master --config /etc/qbd/qbd.conf$' $UNIT &&
  pass "qbd-master.service installed with /usr/sbin and /etc" || die unit "$(grep ExecStart $UNIT)"
mkdir -p /srv/qbd /etc/qbd
mount -t tmpfs -o size=700m tmpfs /srv/qbd
{
  echo "listen = 127.0.0.1:10809"
  echo "api_listen = 127.0.0.1:10810"
  echo "parts = a b c"
  echo "allow_shared_failure_domain = true"
  echo "attach_timeout_s = 5"
  for p in a b c; do
    mkdir -p /srv/qbd/node-$p
    echo "[backend $p]"
    echo "path = /srv/qbd/node-$p"
  done
} >$CONF

# 1. Start: Type=notify returns when READY=1 arrived. The unit's ExecStartPre loads nbd (the
# daemon itself may not: ProtectKernelModules).
rmmod nbd || die rmmod "nbd could not be unloaded"
t0=$(now_ms)
if timeout 120 systemctl start qbd-master; then
  pass "systemctl start qbd-master ($(($(now_ms) - t0)) ms to READY=1)"
else
  fail start "systemctl start failed: $(systemctl is-active qbd-master)"
  systemctl status --no-pager qbd-master | sed 's/^/    | /'
  journal
  exit 1
fi
[ "$(systemctl is-active qbd-master)" = active ] && pass "qbd-master.service is active" ||
  fail active "$(systemctl is-active qbd-master)"
[ -d /sys/module/nbd ] && pass "ExecStartPre loaded the nbd module" || fail modprobe "nbd is not loaded"
pid=$(systemctl show -p MainPID --value qbd-master)
# The sandbox is in force on the daemon (a unit that systemd half-applied would still start):
# the bounding set is the unit's CapabilityBoundingSet=, bit by bit.
capbnd=0
for c in $(sed -n 's/^CapabilityBoundingSet=//p' $UNIT); do
  case $c in
    CAP_DAC_OVERRIDE) b=1 ;; CAP_DAC_READ_SEARCH) b=2 ;; CAP_FOWNER) b=3 ;;
    CAP_MKNOD) b=27 ;; CAP_NET_BIND_SERVICE) b=10 ;; CAP_NET_ADMIN) b=12 ;; CAP_SYS_RAWIO) b=17 ;;
    CAP_SYS_ADMIN) b=21 ;; CAP_SYS_RESOURCE) b=24 ;; CAP_IPC_LOCK) b=14 ;;
    *) die capbnd "$c: add its bit number to this script" ;;
  esac
  capbnd=$((capbnd | (1 << b)))
done
capbnd=$(printf '%016x' $capbnd)
grep -q '^NoNewPrivs:[[:space:]]*1' /proc/$pid/status && grep -q '^Seccomp:[[:space:]]*2' /proc/$pid/status &&
  [ "$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/$pid/status)" = "$capbnd" ] &&
  pass "qbd-master runs with NoNewPrivs, a seccomp filter and the unit's bounding set" ||
  fail sandbox "$(grep -E '^(NoNewPrivs|Seccomp|CapBnd)' /proc/$pid/status | tr '\n' ' ')(bounding set $capbnd expected)"
if ctl status >/tmp/status.out 2>&1 && grep -q OK /tmp/status.out; then
  pass "qbdctl status: $(head -n 1 /tmp/status.out)"
else
  fail status "$(cat /tmp/status.out)"
  journal
fi
check create ctl create vol --size 256M --replicas 3 || { journal; exit 1; }

# 2. Attach under the unit; ext4 written and read back.
dev=$(ctl attach vol 2>/tmp/attach.err)
if [ -b "$dev" ] && [ "$(readlink /dev/qbd/vol)" = "$dev" ]; then
  pass "qbdctl attach vol ($dev, /dev/qbd/vol)"
else
  fail attach "qbdctl attach printed '$dev': $(cat /tmp/attach.err)"
  journal
  exit 1
fi
grep -q '"volume": "vol"' /var/lib/qbd/attachments.json && pass "state file /var/lib/qbd/attachments.json" ||
  fail state-file "$(cat /var/lib/qbd/attachments.json 2>&1)"
check mkfs mkfs.ext4 -q -F "$dev" || { journal; exit 1; }
mkdir -p /mnt/fs /mnt/thin
check mount mount "$dev" /mnt/fs || exit 1
dd if=/dev/urandom of=/mnt/fs/big bs=1M count=16 2>/dev/null
i=0
while [ $i -lt 10 ]; do
  dd if=/dev/urandom of=/mnt/fs/f$i bs=64k count=$((i % 5 + 1)) 2>/dev/null
  i=$((i + 1))
done
(cd /mnt/fs && sha256sum big f*) >/tmp/sums
umount /mnt/fs
echo 3 >/proc/sys/vm/drop_caches
mount "$dev" /mnt/fs && check read-back sh -c 'cd /mnt/fs && sha256sum -c /tmp/sums >/dev/null'

# 3. The LVM thin stack: pvcreate, vgcreate, lvcreate, vgchange run as qbd-master's children.
check create-2 ctl create vol2 --size 256M --replicas 3 || exit 1
if ctl attach vol2 --lvm-thin >/tmp/lvm.out 2>&1; then
  pass "qbdctl attach vol2 --lvm-thin ($(head -n 1 /tmp/lvm.out))"
else
  fail attach-lvm-thin "$(cat /tmp/lvm.out)"
  journal
fi
[ -s /etc/lvm/backup/qbd_vg_vol2 ] && pass "LVM's metadata backup /etc/lvm/backup/qbd_vg_vol2" ||
  fail lvm-backup "$(ls /etc/lvm/backup 2>&1)"
if check thin-lv lvcreate -q -y -V 128M -T qbd_vg_vol2/pool -n disk1; then
  check thin-mkfs mkfs.ext4 -q /dev/qbd_vg_vol2/disk1 &&
    check thin-mount mount /dev/qbd_vg_vol2/disk1 /mnt/thin &&
    dd if=/dev/urandom of=/mnt/thin/a bs=1M count=4 conv=fsync 2>/dev/null &&
    (cd /mnt/thin && sha256sum a) >/tmp/thin.sums
fi

# 4. A restart under writers on the ext4 device (the thin LV stays mounted across it too).
writer() { # PREFIX
  j=0
  while [ ! -e /tmp/stop ]; do
    if dd if=/dev/urandom of=/mnt/fs/$1$j bs=32k count=1 conv=fsync 2>/tmp/dd.err.$1; then
      (cd /mnt/fs && sha256sum $1$j) >>/tmp/sums
    else
      echo "$1$j: $(cat /tmp/dd.err.$1)" >>/tmp/werr
    fi
    j=$((j + 1))
  done
}
rm -f /tmp/stop /tmp/werr
wpids=""
for w in a b; do
  writer "w$w-" &
  wpids="$wpids $!"
done
sleep 2
t0=$(now_ms)
if timeout 120 systemctl restart qbd-master; then
  pass "systemctl restart qbd-master ($(($(now_ms) - t0)) ms)"
else
  fail restart "$(systemctl is-active qbd-master)"
  journal
fi
pid2=$(systemctl show -p MainPID --value qbd-master)
[ "$pid2" != "$pid" ] && [ "$pid2" != 0 ] && pass "a new qbd-master ($pid -> $pid2)" ||
  fail new-pid "MainPID $pid -> $pid2"
sleep 4
touch /tmp/stop
for p in $wpids; do wait $p; done
[ -s /tmp/werr ] && fail writes-across-restart "$(head -n 3 /tmp/werr)" ||
  pass "writes across the restart: $(grep -c ' w' /tmp/sums) files, no error"
grep -q ' /mnt/fs .*[ ,]rw[ ,]' /proc/mounts && touch /mnt/fs/probe && pass "ext4 still read-write" ||
  fail still-rw "$(grep /mnt/fs /proc/mounts)"
sync
umount /mnt/fs
echo 3 >/proc/sys/vm/drop_caches
check e2fsck e2fsck -fn "$dev"
mount -o ro "$dev" /mnt/fs && check checksums sh -c 'cd /mnt/fs && sha256sum -c /tmp/sums >/dev/null'
umount /mnt/fs
if grep -q ' /mnt/thin ' /proc/mounts; then
  check thin-checksum sh -c 'cd /mnt/thin && sha256sum -c /tmp/thin.sums >/dev/null'
  check thin-umount umount /mnt/thin
fi
check detach-lvm ctl detach vol2
check detach ctl detach vol
t0=$(now_ms)
if timeout 120 systemctl stop qbd-master; then
  result=$(systemctl show -p Result --value qbd-master)
  status=$(systemctl show -p ExecMainStatus --value qbd-master)
  state=$(systemctl is-active qbd-master)
  [ "$result" = success ] && [ "$status" = 0 ] && [ "$state" = inactive ] &&
    pass "systemctl stop: inactive, exit 0 ($(($(now_ms) - t0)) ms)" ||
    fail stop "state $state, result $result, exit status $status"
else
  fail stop "systemctl stop failed"
fi
if journalctl -q -o cat -u qbd-master | grep -iE 'operation not permitted|permission denied|read-only file system|bad system call' >/tmp/denied; then
  fail journal "the unit's sandbox denied something:"
  show /tmp/denied 20
else
  pass "no EPERM, EACCES, EROFS or seccomp denial in qbd-master's journal"
fi
if dmesg | grep -iE 'I/O error|EXT4-fs (error|warning)|Buffer I/O|remounting'; then
  fail dmesg "errors in the kernel log (above)"
else
  pass dmesg-clean
fi
[ $FAILS -eq 0 ] || journal 60
[ $FAILS -eq 0 ]
