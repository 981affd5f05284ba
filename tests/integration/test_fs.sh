#!/usr/bin/env bash
# A real ext4 filesystem on a qbd volume without the kernel nbd module: nbdfuse exposes the export
# as a file, a loop device makes it a block device. Files written, everything unmounted, qbd-master
# restarted, remounted: e2fsck is clean and every file's sha256 matches.
. "$(dirname "$0")/lib.sh"

qbd_conf 3
qbdctl create fs --size 256M --replicas 3 >/dev/null || die setup "qbdctl create fs failed"
mkdir -p "$T/fuse" "$T/mnt"
LOOP=""
FUSE_PID=""

attach() { # nbdfuse + loop device; sets LOOP
  nbdfuse "$T/fuse/disk" "$(uri fs)" </dev/null >>"$T/nbdfuse.log" 2>&1 &
  FUSE_PID=$!
  track $FUSE_PID
  track_fuse "$T/fuse"
  local deadline=$(($(date +%s) + 10))
  until [ -f "$T/fuse/disk" ]; do
    if ! alive $FUSE_PID || [ "$(date +%s)" -ge "$deadline" ]; then
      show "$T/nbdfuse.log"
      echo "nbdfuse did not create $T/fuse/disk"
      return 1
    fi
    sleep 0.1
  done
  LOOP=$(losetup -f --show "$T/fuse/disk") || return 1
  track_loop "$LOOP"
  echo "nbdfuse pid $FUSE_PID, loop device $LOOP"
}

detach() { # loop device, then nbdfuse; both must go cleanly
  if [ -n "$LOOP" ]; then
    losetup -d "$LOOP" || return 1
    untrack_loop "$LOOP"
    LOOP=""
  fi
  # losetup -d returns before the kernel lets go of the file: retry the FUSE unmount briefly.
  local i
  for i in $(seq 50); do
    fusermount3 -u "$T/fuse" 2>/dev/null && break
    sleep 0.1
  done
  mountpoint -q "$T/fuse" && { echo "fusermount3 -u $T/fuse failed"; return 1; }
  untrack_fuse "$T/fuse"
  wait_pid "$FUSE_PID" 10 || { echo "nbdfuse did not exit"; return 1; }
  if [ "$WAIT_RC" != 0 ]; then
    echo "nbdfuse exited with status $WAIT_RC"
    show "$T/nbdfuse.log"
    return 1
  fi
}

mount_fs() { # [MOUNT_OPTIONS]
  mount ${1:+-o "$1"} "$LOOP" "$T/mnt" || return 1
  track_mount "$T/mnt"
}

umount_fs() {
  umount "$T/mnt" || return 1
  untrack_mount "$T/mnt"
}

write_files() { # ~50 files of random sizes and contents in a few directories, and their sha256
  python3 - "$T/mnt" <<'EOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(20240601)
for i in range(50):
    d = os.path.join(root, f"dir{i % 5}")
    os.makedirs(d, exist_ok=True)
    if i < 14:
        size = rng.choice([0, 1, 511, 4095, 4096, 4097, 65536 + 17])
    else:
        size = rng.randrange(1, 3 << 20)
    with open(os.path.join(d, f"file{i:02d}.bin"), "wb") as f:
        f.write(os.urandom(size))
EOF
  (cd "$T/mnt" && find . -type f -name '*.bin' | sort | xargs sha256sum) >"$T/sums" || return 1
  [ "$(wc -l <"$T/sums")" -eq 50 ] || { echo "expected 50 files:"; cat "$T/sums"; return 1; }
  sync
}

qbd_start
check "nbdfuse exposes the export and losetup attaches it" attach || exit 1
check "mkfs.ext4 on the loop device" mkfs.ext4 -q -F "$LOOP"
check "mount the new filesystem" mount_fs || exit 1
check "write 50 files with random contents" write_files
check "sha256sums match before unmounting" \
  bash -c 'cd "$1" && sha256sum --quiet -c "$2"' _ "$T/mnt" "$T/sums"
check "umount" umount_fs
check "detach the loop device and unmount nbdfuse" detach
qbd_stop
qbd_start
check "after a qbd-master restart nbdfuse and losetup attach again" attach || exit 1
check "e2fsck -fn finds the filesystem clean" e2fsck -fn "$LOOP"
check "mount it again (read-only)" mount_fs ro || exit 1
check "every file's sha256 matches after the restart" \
  bash -c 'cd "$1" && sha256sum --quiet -c "$2"' _ "$T/mnt" "$T/sums"
check "umount again" umount_fs
check "detach again" detach
qbd_stop
