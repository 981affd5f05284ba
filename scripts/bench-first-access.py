#!/usr/bin/python3
"""What the first access to a chunk after a start costs (layout-spec.md §4.6): qbd-master compares
the chunk's copies on every part before it serves it, so the first read of a cold chunk reads the
whole chunk on each part. Measured on a volume written once through NBD, after a clean restart of
qbd-master with the page cache dropped (cold, as a VM disk larger than RAM is):

  first read    one 4 KiB read at a random block of each of N chunks, one request at a time: the
                first access to each chunk (comparison included)
  second read   one 4 KiB read at another random block of the same chunks (compared already)
  cold 4k read  the same pattern against nbdkit's file plugin over a file of the same size with the
                page cache dropped: what one cold 4 KiB read costs without any comparison

Usage: scripts/bench-first-access.py BIN_DIR [--parts N] [--chunks N] [--json FILE]
Prints one line per figure (median and 90th percentile in ms). Needs root to drop the page cache
(/proc/sys/vm/drop_caches); without it, posix_fadvise(DONTNEED) on every file is used instead.
Runs on loopback only; stops every process it starts.
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import nbd  # Debian's python3-libnbd (libnbd-bin's nbdsh uses it too)


def free_port():
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in (10809, 10810):
            return port


def drop_caches(paths):
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return
    except OSError:
        pass
    for top in paths:
        for d, _, files in os.walk(top):
            for name in files:
                try:
                    fd = os.open(os.path.join(d, name), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def wait_ready(uri, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench-first-access: server exited with status {proc.returncode}")
        h = nbd.NBD()
        try:
            h.connect_uri(uri)
            h.shutdown()
            return
        except nbd.Error:
            time.sleep(0.1)
    sys.exit(f"bench-first-access: {uri} not ready within {timeout} s")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timed_reads(uri, offsets):
    h = nbd.NBD()
    h.connect_uri(uri)
    out = []
    for off in offsets:
        t = time.monotonic()
        h.pread(4096, off)
        out.append((time.monotonic() - t) * 1000)
    h.shutdown()
    return out


def summary(ms):
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(ms[int(len(ms) * 0.9)], 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--json")
    a = ap.parse_args()
    chunk = 4 << 20
    size = a.chunks * chunk
    rnd = random.Random(12)
    first = [c * chunk + rnd.randrange(chunk // 4096) * 4096 for c in range(a.chunks)]
    second = [c * chunk + ((o // 4096 + 1 + rnd.randrange(chunk // 4096 - 1)) % (chunk // 4096)) * 4096
              for c, o in zip(range(a.chunks), (f % chunk for f in first))]
    order = list(range(a.chunks))
    rnd.shuffle(order)
    first = [first[i] for i in order]
    second = [second[i] for i in order]
    tmp = tempfile.mkdtemp(prefix="qbd-first-access.", dir=os.environ.get("BENCH_DIR") or None)
    procs = []
    try:
        port = free_port()
        conf = f"{tmp}/qbd.conf"
        letters = "abcdefghijklmnopqrstuvwxyz"[:a.parts]
        with open(conf, "w") as f:
            f.write(f"listen = 127.0.0.1:{port}\nparts = {' '.join(letters)}\nallow_shared_failure_domain = true\n")
            f.write(f"admin_socket = {tmp}/qbd.sock\napi_listen = 127.0.0.1:{free_port()}\n")
            for p in letters:
                f.write(f"[backend {p}]\npath = node-{p}\n")
        subprocess.run([f"{a.bin}/qbdctl", "--config", conf, "create", "v", "--size", str(size), "--replicas",
                        str(a.parts)], check=True, stdout=subprocess.DEVNULL)
        src = f"{tmp}/data.img"
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        uri = f"nbd://127.0.0.1:{port}/v"

        def start():
            p = subprocess.Popen([f"{a.bin}/qbd-master", "--config", conf], stdin=subprocess.DEVNULL,
                                 stdout=open(f"{tmp}/master.log", "a"), stderr=subprocess.STDOUT)
            procs.append(p)
            wait_ready(uri, p)
            return p

        p = start()
        subprocess.run(["nbdcopy", "--flush", src, uri], check=True)
        stop(p)
        drop_caches([tmp])
        p = start()
        res = {"first read": summary(timed_reads(uri, first)), "second read": summary(timed_reads(uri, second))}
        stop(p)

        # The peer: one cold 4 KiB read per chunk-sized stretch of a plain file.
        kport = free_port()
        k = subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(kport), "file", src],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(k)
        kuri = f"nbd://127.0.0.1:{kport}/"
        wait_ready(kuri, k)
        drop_caches([tmp])
        res["nbdkit file cold 4k read"] = summary(timed_reads(kuri, first))
        stop(k)
        for name, r in res.items():
            print(f"{name:28} median {r['median_ms']:8.3f} ms   p90 {r['p90_ms']:8.3f} ms   "
                  f"({a.chunks} chunks of 4 MiB, {a.parts} part(s), cold page cache)")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
                f.write("\n")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
