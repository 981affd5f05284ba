#!/usr/bin/env python3
"""Many NBD clients that hold connections open, over raw sockets, for tests of server limits.

    nbd_clients.py --port PORT --export NAME --status FILE MODE N

MODE idle: N connections through NBD_OPT_GO, then silent.
MODE slow-writers: N connections, each sends a WRITE header announcing 32 MiB at offset 0, then
one byte of it per second.
MODE refused: N connections, each expected to be closed by the server before its greeting.

Writes "ready N" to FILE once every connection is set up (or, for refused, checked), then
"closed K" whenever K of them have been closed by the server; runs until every connection is
closed or it is killed (the caller stops it by PID).
"""

import argparse
import os
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbd_abuse import CMD_WRITE, Closed, Conn, REQUEST_MAGIC  # noqa: E402


def status(path, line):
    with open(path + ".tmp", "w") as f:
        f.write(line + "\n")
    os.replace(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("mode", choices=["idle", "slow-writers", "refused"])
    p.add_argument("n", type=int)
    a = p.parse_args()

    if a.mode == "refused":
        closed = 0
        for _ in range(a.n):
            s = socket.create_connection(("127.0.0.1", a.port), timeout=60)
            try:
                closed += 1 if not s.recv(18) else 0
            except ConnectionResetError:
                closed += 1
            s.close()
        status(a.status, f"ready {a.n}\nclosed {closed}")
        return 0

    conns = []
    for i in range(a.n):
        c = Conn(a.port, timeout=60).open(a.export)
        if a.mode == "slow-writers":
            c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, i + 1, 0, 32 << 20))
        c.sock.setblocking(False)
        conns.append(c)
    status(a.status, f"ready {a.n}\nclosed 0")

    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    open_conns = set(conns)
    next_byte = time.monotonic()
    while open_conns:
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                sel.unregister(c.sock)
                open_conns.discard(c)
                c.close()
                status(a.status, f"ready {a.n}\nclosed {a.n - len(open_conns)}")
        if a.mode == "slow-writers" and time.monotonic() >= next_byte:
            next_byte += 1.0
            for c in list(open_conns):
                try:
                    c.sock.send(b"\x5a")
                except (BlockingIOError, OSError, Closed):
                    pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
