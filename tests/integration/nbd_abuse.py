#!/usr/bin/env python3
"""Malformed and out-of-range NBD traffic against a running server, over raw sockets.

    nbd_abuse.py --port PORT --export NAME CASE...

Each CASE sends one kind of bad input and checks the server's answer (an NBD error, or a closed
connection where the protocol leaves no other way), then checks that the server still serves a
fresh, well-behaved client. Prints what it saw; exits 0 when every CASE behaved, 1 otherwise.
Run with no CASE to list them.
"""

import argparse
import socket
import struct
import sys
import threading
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
REP_ERR_BIT = 1 << 31
REP_ERR_UNSUP = REP_ERR_BIT | 1
REP_ERR_UNKNOWN = REP_ERR_BIT | 6
INFO_EXPORT = 0

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6

EPERM = 1
EINVAL = 22
ENOSPC = 28
ERRNO_NAMES = {0: "OK", 1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC",
               75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}

MAX_PAYLOAD = 32 * 1024 * 1024
TIMEOUT = 10.0


class Closed(Exception):
    """The server closed (or reset) the connection."""


class CaseFailed(Exception):
    pass


def errname(e):
    return ERRNO_NAMES.get(e, str(e))


class Conn:
    def __init__(self, port, timeout=TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.size = None
        self.tflags = None
        self.handle = 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e)) from e

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError as e:
                raise Closed("connection reset") from e
            except socket.timeout as e:
                raise CaseFailed(f"no answer from the server within {self.sock.gettimeout()} s "
                                 f"(got {len(buf)} of {n} bytes)") from e
            if not chunk:
                raise Closed(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def closed_within(self, seconds):
        """True if the server closes the connection within SECONDS (data it sends is skipped)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False
            finally:
                self.sock.settimeout(TIMEOUT)

    # --- handshake ---
    def greet(self):
        magic, opt, hflags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBDMAGIC or opt != IHAVEOPT:
            raise CaseFailed(f"bad greeting {magic:#x} {opt:#x}")
        if not hflags & FLAG_FIXED_NEWSTYLE:
            raise CaseFailed(f"server is not fixed-newstyle (handshake flags {hflags:#x})")
        return hflags

    def start(self):
        hflags = self.greet()
        self.send(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)))

    def send_opt(self, opt, data=b"", length=None):
        n = len(data) if length is None else length
        self.send(struct.pack(">QII", IHAVEOPT, opt, n) + data)

    def opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        if magic != OPT_REPLY_MAGIC:
            raise CaseFailed(f"bad option reply magic {magic:#x}")
        if length > 64 * 1024 * 1024:
            raise CaseFailed(f"option reply length {length} is absurd")
        return opt, rtype, self.recv_exact(length)

    def go(self, export):
        """NBD_OPT_GO; returns the final reply type (REP_ACK on success, else the error)."""
        name = export.encode()
        self.send_opt(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        while True:
            opt, rtype, data = self.opt_reply()
            if opt != OPT_GO:
                raise CaseFailed(f"reply to option {opt}, expected {OPT_GO}")
            if rtype == REP_INFO and len(data) >= 2:
                (info,) = struct.unpack(">H", data[:2])
                if info == INFO_EXPORT:
                    self.size, self.tflags = struct.unpack(">QH", data[2:12])
            elif rtype == REP_ACK or rtype & REP_ERR_BIT:
                return rtype

    def open(self, export):
        self.start()
        rtype = self.go(export)
        if rtype != REP_ACK:
            raise CaseFailed(f"NBD_OPT_GO {export!r} failed with reply type {rtype:#x}")
        if self.size is None:
            raise CaseFailed("NBD_OPT_GO gave no NBD_INFO_EXPORT")
        return self

    # --- transmission ---
    def request(self, cmd, offset, length, flags=0, payload=b"", magic=REQUEST_MAGIC):
        h = self.handle
        self.handle += 1
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, h, offset, length) + payload)
        return h

    def reply(self, handle, datalen=0):
        magic, err, h = struct.unpack(">IIQ", self.recv_exact(16))
        if magic != SIMPLE_REPLY_MAGIC:
            raise CaseFailed(f"bad reply magic {magic:#x}")
        if h != handle:
            raise CaseFailed(f"reply for handle {h}, expected {handle}")
        data = self.recv_exact(datalen) if err == 0 and datalen else b""
        return err, data

    def read(self, offset, length, flags=0):
        return self.reply(self.request(CMD_READ, offset, length, flags), length)

    def write(self, offset, data, flags=0):
        return self.reply(self.request(CMD_WRITE, offset, len(data), flags, data))

    def disconnect(self):
        try:
            self.request(CMD_DISC, 0, 0)
        except Closed:
            pass
        self.close()


# --- helpers for cases ---

def log(msg):
    print(msg, flush=True)


def connected(args):
    return Conn(args.port).open(args.export)


def still_usable(c, what):
    """A well-formed read on the same connection still works."""
    err, data = c.read(0, 4096)
    if err != 0 or len(data) != 4096:
        raise CaseFailed(f"after {what}, a valid read on the same connection failed: "
                         f"{errname(err)}")
    log(f"  after {what}: the same connection still serves reads")


def expect_error(c, handle, what, allowed=None, datalen=0, may_close=False):
    """The reply to HANDLE is an error (one of ALLOWED if given); or, with MAY_CLOSE, a close."""
    try:
        err, _ = c.reply(handle, datalen)
    except Closed as e:
        if may_close:
            log(f"  {what}: connection closed ({e})")
            return False
        raise CaseFailed(f"{what}: expected an error reply, the server closed the "
                         "connection") from e
    if err == 0:
        raise CaseFailed(f"{what}: the server replied success")
    if allowed and err not in allowed:
        raise CaseFailed(f"{what}: error {errname(err)}, expected "
                         + " or ".join(errname(a) for a in allowed))
    log(f"  {what}: error reply {errname(err)}")
    return True


def expect_closed(c, what, seconds=5):
    if not c.closed_within(seconds):
        raise CaseFailed(f"{what}: the server kept the connection open for {seconds} s")
    log(f"  {what}: connection closed")


def healthy(args):
    c = Conn(args.port).open(args.export)
    err, data = c.read(0, 4096)
    if err != 0 or len(data) != 4096:
        raise CaseFailed(f"a fresh client's read failed: {errname(err)}")
    err, _ = c.reply(c.request(CMD_FLUSH, 0, 0))
    if err != 0:
        raise CaseFailed(f"a fresh client's flush failed: {errname(err)}")
    c.disconnect()


# --- cases ---

def case_garbage_flags(args):
    """garbage instead of the client flags: the server closes the connection"""
    c = Conn(args.port)
    c.greet()
    c.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    expect_closed(c, "HTTP request as client flags")
    c.close()
    c = Conn(args.port)
    c.greet()
    c.send(struct.pack(">I", 0xFFFFFFFF))
    expect_closed(c, "client flags 0xffffffff")
    c.close()


def case_truncated_handshake(args):
    """clients that vanish mid-greeting, mid-flags, mid-option and mid-request"""
    c = Conn(args.port)
    c.greet()
    c.close()
    c = Conn(args.port)
    c.greet()
    c.send(b"\x00\x00")
    c.close()
    c = Conn(args.port)
    c.start()
    name = args.export.encode()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 4 + len(name) + 2) + struct.pack(">I", len(name)))
    c.close()
    c = Conn(args.port)
    c.start()
    c.send(struct.pack(">QI", IHAVEOPT, OPT_GO)[:10])
    c.close()
    c = connected(args)
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, 65536) + b"\x5a" * 1000)
    c.close()
    c = connected(args)
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 4096)[:13])
    c.close()
    log("  six clients closed mid-handshake or mid-request")
    # The half-sent write must not have reached the disk.
    c = connected(args)
    err, data = c.read(0, 1000)
    if err == 0 and data == b"\x5a" * 1000:
        raise CaseFailed("a write whose payload never fully arrived changed the data")
    c.disconnect()


def case_huge_option(args):
    """option lengths far beyond any sane option: an error reply or a closed connection"""
    c = Conn(args.port)
    c.start()
    c.send_opt(OPT_GO, b"\x00" * 64, length=0xFFFFFFF0)
    try:
        opt, rtype, _ = c.opt_reply()
        if not rtype & REP_ERR_BIT:
            raise CaseFailed(f"option of length 0xfffffff0: reply type {rtype:#x} is not an error")
        log(f"  option of length 0xfffffff0: error reply {rtype:#x}")
    except Closed:
        log("  option of length 0xfffffff0: connection closed")
    c.close()
    # A 1 MiB NBD_OPT_LIST (whose length must be 0), sent in full.
    c = Conn(args.port)
    c.start()
    try:
        c.send_opt(OPT_LIST, b"\x00" * (1 << 20))
        opt, rtype, _ = c.opt_reply()
        if not rtype & REP_ERR_BIT:
            raise CaseFailed(f"NBD_OPT_LIST with 1 MiB of data: reply type {rtype:#x}, "
                             "not an error")
        log(f"  NBD_OPT_LIST with 1 MiB of data: error reply {rtype:#x}")
    except Closed:
        log("  NBD_OPT_LIST with 1 MiB of data: connection closed")
    c.close()


def case_unknown_option(args):
    """an unknown option gets NBD_REP_ERR_UNSUP and haggling goes on"""
    c = Conn(args.port)
    c.start()
    c.send_opt(0x5A5A, b"hello")
    opt, rtype, _ = c.opt_reply()
    if opt != 0x5A5A or rtype != REP_ERR_UNSUP:
        raise CaseFailed(f"unknown option: reply to option {opt:#x} type {rtype:#x}, "
                         f"expected NBD_REP_ERR_UNSUP ({REP_ERR_UNSUP:#x})")
    log("  unknown option 0x5a5a: NBD_REP_ERR_UNSUP")
    if c.go(args.export) != REP_ACK:
        raise CaseFailed("NBD_OPT_GO after an unknown option failed")
    still_usable(c, "an unknown option")
    c.disconnect()


def case_unknown_export(args):
    """an unknown export name: NBD_OPT_GO gets an error, NBD_OPT_EXPORT_NAME a closed connection"""
    c = Conn(args.port)
    c.start()
    rtype = c.go("no-such-export-" + args.export)
    if not rtype & REP_ERR_BIT:
        raise CaseFailed(f"NBD_OPT_GO of an unknown export: reply type {rtype:#x}")
    log(f"  NBD_OPT_GO unknown export: error reply {rtype:#x}"
        + (" (NBD_REP_ERR_UNKNOWN)" if rtype == REP_ERR_UNKNOWN else ""))
    if c.go(args.export) != REP_ACK:
        raise CaseFailed("NBD_OPT_GO of the real export after an unknown one failed")
    still_usable(c, "an unknown export name")
    c.disconnect()
    c = Conn(args.port)
    c.start()
    c.send_opt(OPT_EXPORT_NAME, b"no-such-export")
    expect_closed(c, "NBD_OPT_EXPORT_NAME of an unknown export")
    c.close()


def case_bad_magic(args):
    """a request with a bad magic after good ones: the server closes the connection"""
    c = connected(args)
    still_usable(c, "connecting")
    c.send(struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 77, 0, 4096))
    expect_closed(c, "request magic 0xdeadbeef")
    c.close()
    c = connected(args)
    c.send(b"\xff" * 28)
    expect_closed(c, "28 bytes of 0xff as a request")
    c.close()


def case_unknown_command(args):
    """an unknown command type: an error reply (or a closed connection)"""
    for cmd in (0x55, 0xFFFF):
        c = connected(args)
        if expect_error(c, c.request(cmd, 0, 0), f"command type {cmd:#x}", may_close=True):
            still_usable(c, f"command type {cmd:#x}")
        c.disconnect()


def case_unknown_flags(args):
    """unknown command flags: an error reply (or a closed connection), and no write happens"""
    c = connected(args)
    if expect_error(c, c.request(CMD_READ, 0, 4096, flags=0x8000), "read with flag 0x8000",
                    datalen=4096, may_close=True):
        still_usable(c, "a read with unknown flags")
    c.disconnect()
    c = connected(args)
    before = c.read(0, 4096)[1]
    c.disconnect()
    c = connected(args)
    h = c.request(CMD_WRITE, 0, 4096, flags=0x4000, payload=b"\xa5" * 4096)
    if expect_error(c, h, "write with flag 0x4000", may_close=True):
        still_usable(c, "a write with unknown flags")
    c.disconnect()
    c = connected(args)
    err, after = c.read(0, 4096)
    if err != 0 or after != before:
        raise CaseFailed("a write with unknown flags changed the data")
    c.disconnect()


def case_read_beyond_end(args):
    """reads past the end of the export get EINVAL"""
    c = connected(args)
    size = c.size
    for off, n in ((size, 4096), (size - 2048, 4096), (size + (1 << 30), 512)):
        expect_error(c, c.request(CMD_READ, off, n), f"read {n} at {off} (size {size})",
                     allowed=(EINVAL,), datalen=n)
    still_usable(c, "reads past the end")
    c.disconnect()


def case_offset_overflow(args):
    """offset + length wrapping around 2^64: an error reply, nothing written"""
    c = connected(args)
    top = (1 << 64) - 4096
    expect_error(c, c.request(CMD_READ, top, 8192), "read 8192 at 2^64-4096", datalen=8192)
    expect_error(c, c.request(CMD_READ, (1 << 64) - 1, 2), "read 2 at 2^64-1", datalen=2)
    expect_error(c, c.request(CMD_WRITE, top, 8192, payload=b"\x5a" * 8192),
                 "write 8192 at 2^64-4096")
    expect_error(c, c.request(CMD_TRIM, top, 8192), "trim 8192 at 2^64-4096")
    expect_error(c, c.request(CMD_WRITE_ZEROES, top, 8192), "write_zeroes 8192 at 2^64-4096")
    still_usable(c, "overflowing requests")
    err, data = c.read(0, 4096)
    if err == 0 and data == b"\x5a" * 4096:
        raise CaseFailed("an overflowing write wrapped around to offset 0")
    c.disconnect()


def case_read_too_long(args):
    """reads longer than 32 MiB get EINVAL"""
    c = connected(args)
    for n in (MAX_PAYLOAD + 4096, 0xFFFFFFFF):
        expect_error(c, c.request(CMD_READ, 0, n), f"read of {n} bytes", allowed=(EINVAL,),
                     datalen=n)
    still_usable(c, "over-long reads")
    c.disconnect()


def case_write_too_long(args):
    """a 64 MiB write (over the 32 MiB limit): an error reply or a closed connection"""
    c = connected(args)
    n = 2 * MAX_PAYLOAD
    h = c.request(CMD_WRITE, 0, n)

    def pump():
        try:
            c.sock.sendall(b"\x3c" * n)
        except OSError:
            pass

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    c.sock.settimeout(30)
    if expect_error(c, h, f"write of {n} bytes", may_close=True):
        t.join(30)
        try:
            still_usable(c, "an over-long write")
        except Closed:
            log("  the server closed the connection after its error reply")
    c.close()
    c = connected(args)
    err, data = c.read(0, 4096)
    if err == 0 and data == b"\x3c" * 4096:
        raise CaseFailed("an over-long write was written")
    c.disconnect()


def case_write_beyond_end(args):
    """writes, write_zeroes and trims past the end get ENOSPC or EINVAL"""
    c = connected(args)
    size = c.size
    for off in (size, size - 2048):
        expect_error(c, c.request(CMD_WRITE, off, 4096, payload=b"\x66" * 4096),
                     f"write 4096 at {off} (size {size})", allowed=(ENOSPC, EINVAL))
        expect_error(c, c.request(CMD_WRITE_ZEROES, off, 4096),
                     f"write_zeroes 4096 at {off}", allowed=(ENOSPC, EINVAL))
        expect_error(c, c.request(CMD_TRIM, off, 4096), f"trim 4096 at {off}",
                     allowed=(ENOSPC, EINVAL))
    still_usable(c, "writes past the end")
    err, data = c.read(size - 4096, 4096)
    if err != 0:
        raise CaseFailed(f"reading the last block failed: {errname(err)}")
    if data[2048:] == b"\x66" * 2048:
        raise CaseFailed("a partly out-of-range write was partly written")
    c.disconnect()


def case_write_readonly(args):
    """writes, write_zeroes and trims on a read-only export get EPERM; the data is unchanged"""
    c = connected(args)
    if not c.tflags & 2:
        raise CaseFailed(f"export {args.export!r} does not advertise NBD_FLAG_READ_ONLY")
    before = c.read(0, 4096)[1]
    expect_error(c, c.request(CMD_WRITE, 0, 4096, payload=b"\x99" * 4096), "write",
                 allowed=(EPERM,))
    expect_error(c, c.request(CMD_WRITE_ZEROES, 0, 4096), "write_zeroes", allowed=(EPERM,))
    expect_error(c, c.request(CMD_TRIM, 0, 4096), "trim", allowed=(EPERM,))
    err, after = c.read(0, 4096)
    if err != 0 or after != before:
        raise CaseFailed("the read-only export's data changed")
    log("  the read-only export's data is unchanged")
    c.disconnect()


CASES = {name[len("case_"):].replace("_", "-"): fn
         for name, fn in sorted(globals().items()) if name.startswith("case_")}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("cases", nargs="*")
    args = ap.parse_args()
    if not args.cases:
        for name, fn in CASES.items():
            print(f"{name}: {fn.__doc__}")
        return 0
    failed = 0
    for name in args.cases:
        if name not in CASES:
            print(f"unknown case {name!r}; cases: {' '.join(CASES)}")
            return 2
        log(f"{name}: {CASES[name].__doc__}")
        try:
            CASES[name](args)
            healthy(args)
            log(f"  ok; a fresh client is served afterwards")
        except (CaseFailed, Closed, OSError) as e:
            log(f"  FAILED: {type(e).__name__}: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
