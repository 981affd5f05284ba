#!/usr/bin/env python3
"""qbd benchmark (`make bench`): qbd-master against plain NBD servers on the same machine, same disk,
same run.

Every server listens on 127.0.0.1 (a free port, never 10809 or 10810) and serves its own export in one
scratch directory (BENCH_DIR, default the system temporary directory):
  qbd 1 part                  qbd-master, volume "one": 1 replica
  qbd 3 parts                 the same qbd-master, volume "three": 3 replicas on three directories of
                              the same disk (allow_shared_failure_domain: this measures the cost of
                              replication and checksums, not its safety)
  qemu quorum 3 files         the replicated peer of qbd 3 parts: qemu-nbd -t -e 16 --cache=writeback
                              with QEMU's quorum driver (vote-threshold=2) over three raw files on
                              the same disk; it writes every file and reads all three and votes (its
                              default read-pattern=quorum), with no checksums and nothing on disk
                              about which copy is stale
  nbdkit file                 nbdkit's file plugin on a raw file
  qemu-nbd --cache=writeback  qemu-nbd -t -e 16 on a raw file
  nbd-server                  nbd-server (config file; flush and fua on, otherwise its defaults)
  nbdkit memory               nbdkit's memory plugin: no disk at all, the protocol ceiling

Warm rows. Each export is max(BENCH_SIZE, BENCH_COPY_SIZE) bytes (default 2 GiB, so that the nbdcopy
row fits); its first BENCH_SIZE bytes (default 1 GiB) are written once through NBD with the same fio
job on every server, so that reads hit real data, and the fio jobs use that region, which stays in
the page cache: these rows measure each server's own cost. For every workload (row), every server
(column) in turn runs the same job; with BENCH_ROUNDS=N (default 1) the whole sequence runs N times
and each cell is the median. `sync` runs before every job so that none starts with another's dirty
pages. Workloads: fio with ioengine=nbd, one connection, BENCH_SECONDS (default 30) per job; the
last warm row is `nbdcopy --flush` of a BENCH_COPY_SIZE file of random data (read once just before
each copy, so it comes from the page cache) into the export.

Cold rows ("cold 4k rand..."): what a VM disk larger than RAM sees, where a 4 KiB request goes to
the disk and qbd's block metadata is not in memory either. Once the warm rows are done, their
servers are stopped and their files removed; then qbd 1 part, qbd 3 parts, qemu quorum 3 files,
nbdkit file and qemu-nbd (and the base columns with BENCH_BASE; not the cache columns, whose memory
cache would serve the data) each get a fresh export of BENCH_COLD_SIZE bytes (default 4 GiB),
written whole once through NBD (fio, 1 MiB sequential writes). Before each job `sync` runs and the
page cache is dropped (echo 3 > /proc/sys/vm/drop_caches); the fio jobs (4 KiB random read and
write, iodepth 1 and 32, BENCH_SECONDS each, interleaved and BENCH_ROUNDS medians as above) span
the whole export. Skipped, with the reason printed, when not root (the page cache cannot be
dropped) or when BENCH_DIR has not the room for every cold file (BENCH_COLD_SIZE per replica: 9
files, 13 with BENCH_BASE, qbd's 3% larger for its block metadata, plus 1 GiB).

Last, the cost of the first access to a chunk after a start (scripts/bench-first-access.py:
qbd-master compares a chunk's copies before it serves it the first time), on 3 parts with the page
cache dropped.

Printed: the table with the ratios qbd/peer per row (3p/quorum: qbd 3 parts / qemu quorum 3 files),
qbd-master's CPU seconds (user + system, from /proc/PID/stat) per GiB moved by each warm qbd job and
its peak RSS (VmHWM) in the warm rows. Appended to bench/results/history.txt with the machine, date
(UTC) and commit; the run also goes to bench/results/latest.json as {"workload (unit)": {"server":
value}} (cold rows included), plus rows "qbd-master CPU, <workload> (s/GiB)" and "qbd-master peak
RSS (MiB)" of the same shape.

usage: scripts/bench.py BUILD_DIR   (make bench)
  BENCH_SECONDS=N  each fio job's length (default 30)   BENCH_SIZE=S  fio region (default 1G)
  BENCH_COPY_SIZE=S  nbdcopy size (default 2G)   BENCH_ROUNDS=N  rounds, medians (default 1)
  BENCH_COLD_SIZE=S  each cold export (default 4G; 0 leaves the cold rows out)
  BENCH_DIR=DIR  where the scratch directory is created
  BENCH_CACHE="qbd.conf lines"  the cache columns' settings (default "cache_size = 2G"; "" for none)
  BENCH_BASE=DIR  another build's bin directory as columns "base 1 part" and "base 3 parts"
"""
import ctypes, json, os, platform, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = sys.argv[1] if len(sys.argv) > 1 else "build/release"


def parse_size(text):
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        sys.exit(f"bench: bad size {text!r} (a number with K, M, G or T)")
    return int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))


def env_int(name, default):
    text = os.environ.get(name, "") or default
    if not text.isdigit() or int(text) < 1:
        sys.exit(f"bench: {name}={text!r}: a whole number >= 1")
    return int(text)


SECONDS = env_int("BENCH_SECONDS", "30")
SIZE = parse_size(os.environ.get("BENCH_SIZE", "") or "1G")
COPY_SIZE = parse_size(os.environ.get("BENCH_COPY_SIZE", "") or "2G")
ROUNDS = env_int("BENCH_ROUNDS", "1")
EXPORT_SIZE = max(SIZE, COPY_SIZE)
COLD_SIZE = parse_size(os.environ.get("BENCH_COLD_SIZE", "") or "4G")  # 0: no cold rows
GIB = 1 << 30

# qbd-master daemons: label -> extra qbd.conf lines. Each runs over its own three part directories
# and serves volume "one" (1 replica) and volume "three" (3 replicas).
# The cache columns: a memory cache that holds the fio region (1 GiB) and its bookkeeping; the
# target for their peak RSS is the cache size + 64 MiB. BENCH_CACHE="" leaves them out.
QBD_CACHE_CONF = os.environ.get("BENCH_CACHE", "cache_size = 2G")
QBD_DAEMONS = {"qbd-master": ""}
if QBD_CACHE_CONF:
    QBD_DAEMONS["qbd-master cache"] = QBD_CACHE_CONF
# BENCH_BASE=DIR: the binaries of another build (e.g. an older commit's build/release) as two more
# columns in the same run, interleaved with the others: a before/after comparison on one machine
# state. Their daemon is "qbd-master base".
BASE = os.environ.get("BENCH_BASE", "")
if BASE:
    QBD_DAEMONS["qbd-master base"] = ""

# Columns, in order: (name, kind, argument). For kind "qbd" the argument is (daemon, volume).
SERVERS = [
    ("qbd 1 part", "qbd", ("qbd-master", "one")),
    ("qbd 3 parts", "qbd", ("qbd-master", "three")),
    ("qemu quorum 3 files", "qemu-quorum", None),
    *([("qbd 1 part cache", "qbd", ("qbd-master cache", "one")),
       ("qbd 3 parts cache", "qbd", ("qbd-master cache", "three"))] if QBD_CACHE_CONF else []),
    *([("base 1 part", "qbd", ("qbd-master base", "one")),
       ("base 3 parts", "qbd", ("qbd-master base", "three"))] if BASE else []),
    ("nbdkit file", "nbdkit-file", None),
    ("qemu-nbd --cache=writeback", "qemu-nbd", None),
    ("nbd-server", "nbd-server", None),
    ("nbdkit memory", "nbdkit-memory", None),
]

# Ratio columns: (header, numerator column, denominator column). > 1 means qbd is faster.
RATIOS = [
    ("1p/nbdkit", "qbd 1 part", "nbdkit file"),
    ("3p/nbdkit", "qbd 3 parts", "nbdkit file"),
    ("3p/quorum", "qbd 3 parts", "qemu quorum 3 files"),
    *([("1pc/nbdkit", "qbd 1 part cache", "nbdkit file"),
       ("3pc/nbdkit", "qbd 3 parts cache", "nbdkit file")] if QBD_CACHE_CONF else []),
    *([("1p/base", "qbd 1 part", "base 1 part"), ("3p/base", "qbd 3 parts", "base 3 parts")] if BASE else []),
    ("1p/qemu", "qbd 1 part", "qemu-nbd --cache=writeback"),
    ("1p/nbd-srv", "qbd 1 part", "nbd-server"),
]

# Rows: (name with its unit, fio options or "nbdcopy", what is reported).
WORKLOADS = [
    ("4k randread iodepth1 (IOPS)", dict(rw="randread", bs="4k", iodepth=1), "iops"),
    ("4k randread iodepth32 (IOPS)", dict(rw="randread", bs="4k", iodepth=32), "iops"),
    ("4k randwrite iodepth1 (IOPS)", dict(rw="randwrite", bs="4k", iodepth=1), "iops"),
    ("4k randwrite iodepth32 (IOPS)", dict(rw="randwrite", bs="4k", iodepth=32), "iops"),
    ("1m seq read iodepth8 (MB/s)", dict(rw="read", bs="1m", iodepth=8), "mbps"),
    ("1m seq write iodepth8 (MB/s)", dict(rw="write", bs="1m", iodepth=8), "mbps"),
    # A database's log: sequential 4 KiB writes, each followed by a flush (fio --fsync=1).
    ("4k write+fsync iodepth1 (IOPS)", dict(rw="write", bs="4k", iodepth=1, fsync=1), "iops"),
    (f"nbdcopy {COPY_SIZE / GIB:g} GiB in (MB/s)", "nbdcopy", "mbps"),
]

# Cold rows: fio over the whole of a BENCH_COLD_SIZE export, the page cache dropped before each job.
COLD_WORKLOADS = [
    ("cold 4k randread iodepth1 (IOPS)", dict(rw="randread", bs="4k", iodepth=1), "iops"),
    ("cold 4k randread iodepth32 (IOPS)", dict(rw="randread", bs="4k", iodepth=32), "iops"),
    ("cold 4k randwrite iodepth1 (IOPS)", dict(rw="randwrite", bs="4k", iodepth=1), "iops"),
    ("cold 4k randwrite iodepth32 (IOPS)", dict(rw="randwrite", bs="4k", iodepth=32), "iops"),
]
# Their columns: qbd (and base) 1 and 3 parts without a memory cache, which would serve the data,
# its replicated peer and the two plain file servers.
COLD_SERVERS = [s for s in SERVERS if s[1] in ("qbd", "qemu-quorum", "nbdkit-file", "qemu-nbd")
                and (s[1] != "qbd" or s[2][0] != "qbd-master cache")]
COLD_QBD_OVERHEAD = 1.03  # qbd's chunk files: 32 bytes of metadata per 4 KiB block, and a margin


def files_of(kind, arg):
    """How many files of the export's size a column's export takes on disk."""
    if kind == "qbd":
        return 1 if arg[1] == "one" else 3
    return 3 if kind == "qemu-quorum" else 1


def cold_bytes_needed():
    return int(sum(files_of(k, a) * COLD_SIZE * (COLD_QBD_OVERHEAD if k == "qbd" else 1)
                   for _, k, a in COLD_SERVERS)) + GIB


def drop_caches():
    """sync; echo 3 > /proc/sys/vm/drop_caches. Raises OSError when that is not allowed."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cold_skip_reason(directory):
    """Why the cold rows cannot run (None when they can)."""
    if not COLD_SIZE:
        return "BENCH_COLD_SIZE=0"
    try:
        drop_caches()
    except OSError as e:
        return f"cannot drop the page cache (/proc/sys/vm/drop_caches: {e.strerror}; needs root)"
    need, free = cold_bytes_needed(), shutil.disk_usage(directory).free
    if free < need:
        return (f"{directory} has {free / GIB:.1f} GiB free, the cold exports need {need / GIB:.1f} GiB "
                f"({COLD_SIZE / GIB:g} GiB x {sum(files_of(k, a) for _, k, a in COLD_SERVERS)} files + qbd's "
                f"metadata + 1 GiB); a smaller BENCH_COLD_SIZE or another BENCH_DIR")
    return None


TOOLS = {  # command -> Debian package (scripts/install-deps.sh installs them all)
    "fio": "fio", "nbdcopy": "libnbd-bin", "nbdinfo": "libnbd-bin", "nbdkit": "nbdkit",
    "qemu-nbd": "qemu-utils", "nbd-server": "nbd-server",
}


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # A server started here gets SIGTERM if this script dies without its cleanup (SIGKILL).
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Procs:
    """Every process started here, stopped by its PID (SIGTERM, then SIGKILL after 20 s). This script
    is a child subreaper, so a server that forks into the background (nbd-server) stays its child: its
    PID cannot go to another process before it is stopped and reaped here."""

    def __init__(self):
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        self.items = []  # (name, Popen or the PID of a child that was not started as a Popen)

    def start(self, name, args, logfile):
        with open(logfile, "w") as out:
            p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=_die_with_parent)
        self.items.append((name, p))
        return p

    def adopt(self, name, pid):
        self.items.append((name, pid))

    @staticmethod
    def _stat(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # [state, ppid, ...]

    @classmethod
    def running(cls, pid):
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == 0  # reaps it once it has exited
        except ChildProcessError:  # not (or no longer) a child of this script
            try:
                return cls._stat(pid)[0] != "Z"
            except OSError:
                return False

    @classmethod
    def _children(cls, pid):
        kids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if int(cls._stat(d)[1]) == pid:
                        kids.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        return kids

    def stop_all(self):
        pids = []
        for name, p in reversed(self.items):
            if isinstance(p, subprocess.Popen):
                if p.poll() is None:
                    pids.append((name, p.pid, p))
            elif self.running(p):
                pids += [(f"{name} child", k, None) for k in self._children(p)]
                pids.append((name, p, None))
        for _, pid, _ in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.time() + 20
        for name, pid, p in pids:
            while (p.poll() is None) if p else self.running(pid):
                if time.time() > end:
                    log(f"bench: {name} (pid {pid}) ignores SIGTERM, killing it")
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    if p:
                        p.wait()
                    break
                time.sleep(0.05)
        self.items = []
        while True:  # orphans handed to this subreaper (nbd-server's connection processes)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def free_port(taken):
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in (10809, 10810) and port not in taken:
            taken.add(port)
            return port


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_ready(name, uri, proc, logfile, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if isinstance(proc, subprocess.Popen) and proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode} at start:\n{tail(logfile)}")
        if isinstance(proc, int) and not Procs.running(proc):
            raise BenchError(f"{name} (pid {proc}) exited at start; it logs only to syslog")
        if subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise BenchError(f"{name} does not answer on {uri} after {timeout} s:\n{tail(logfile)}")


def run(args, what):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"{what} failed (exit {r.returncode}): {' '.join(args)}\n{(r.stderr or r.stdout)[-3000:]}")
    return r.stdout


class Bench:
    """The servers of one set of rows, every export `size` bytes, their files under `tmp`."""

    def __init__(self, tmp, procs, size):
        self.tmp, self.procs, self.size, self.ports = tmp, procs, size, set()
        self.qbd = {}  # daemon label -> (port, Popen)
        os.makedirs(tmp, exist_ok=True)

    def image(self, name):
        path = f"{self.tmp}/{name}.img"
        with open(path, "wb") as f:
            f.truncate(self.size)
        return path

    def start_qbd(self, label, extra):
        d = f"{self.tmp}/{label.replace(' ', '-')}"
        os.makedirs(d)
        port = free_port(self.ports)
        conf = f"{d}/qbd.conf"
        bindir = f"{BASE}" if label == "qbd-master base" else f"{BUILD}/bin"
        with open(conf, "w") as f:
            f.write(f"listen = 127.0.0.1:{port}\nparts = a b c\nallow_shared_failure_domain = true\n")
            # Each daemon its own REST API port (the default, 10810, is one per machine); a base
            # build older than the API does not know the key.
            with open(f"{bindir}/qbd-master", "rb") as binary:
                if b"api_listen" in binary.read():
                    f.write(f"api_listen = 127.0.0.1:{free_port(self.ports)}\n")
            if extra:
                f.write(extra.rstrip("\n") + "\n")
            for p in "abc":
                f.write(f"[backend {p}]\npath = node-{p}\n")
        ctl = [f"{bindir}/qbdctl", "--config", conf]
        run(ctl + ["create", "one", "--size", str(self.size), "--replicas", "1"], "qbdctl create one")
        run(ctl + ["create", "three", "--size", str(self.size), "--replicas", "3"], "qbdctl create three")
        p = self.procs.start(label, [f"{bindir}/qbd-master", "--config", conf], f"{d}/master.log")
        wait_ready(label, f"nbd://127.0.0.1:{port}/one", p, f"{d}/master.log")
        self.qbd[label] = (port, p)

    def start(self, name, kind, arg):
        """Starts the server of column `name` (qbd daemons are already running); returns its URI."""
        if kind == "qbd":
            return f"nbd://127.0.0.1:{self.qbd[arg[0]][0]}/{arg[1]}"
        port = free_port(self.ports)
        logfile = f"{self.tmp}/{kind}.log"
        uri = f"nbd://127.0.0.1:{port}/"
        if kind == "nbdkit-file":
            p = self.procs.start(name, ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "file",
                                        self.image("nbdkit-file")], logfile)
        elif kind == "nbdkit-memory":
            p = self.procs.start(name, ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "memory",
                                        str(self.size)], logfile)
        elif kind == "qemu-nbd":
            p = self.procs.start(name, ["qemu-nbd", "-f", "raw", "-t", "-e", "16", "--cache=writeback",
                                        "-b", "127.0.0.1", "-p", str(port), self.image("qemu-nbd")], logfile)
        elif kind == "qemu-quorum":
            # QEMU's quorum driver over three raw files: writes go to all three, a read reads all
            # three and returns what at least vote-threshold of them agree on. A comma in a file
            # name is written ",," in QEMU's option syntax.
            files = [self.image(f"qemu-quorum-{i}").replace(",", ",,") for i in range(3)]
            opts = "driver=quorum,vote-threshold=2," + ",".join(
                f"children.{i}.driver=raw,children.{i}.file.filename={f}" for i, f in enumerate(files))
            p = self.procs.start(name, ["qemu-nbd", "-t", "-e", "16", "--cache=writeback", "-b", "127.0.0.1",
                                        "-p", str(port), "--image-opts", opts], logfile)
        elif kind == "nbd-server":
            # It forks into the background (its -d mode serves one connection, then exits) and logs
            # only to syslog: its PID comes from -p, its start-up errors from stderr.
            conf, pidfile = f"{self.tmp}/nbd-server.conf", f"{self.tmp}/nbd-server.pid"
            with open(conf, "w") as f:
                f.write(f"[generic]\nlistenaddr = 127.0.0.1\nport = {port}\n"
                        f"[bench]\nexportname = {self.image('nbd-server')}\nflush = true\nfua = true\n")
            r = subprocess.run(["nbd-server", "-C", conf, "-p", pidfile], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True)
            deadline, p = time.time() + 10, None
            while r.returncode == 0 and p is None and time.time() < deadline:
                try:
                    with open(pidfile) as f:
                        p = int(f.read())
                except (OSError, ValueError):  # not written yet
                    time.sleep(0.05)
            if p is None:
                raise BenchError(f"nbd-server did not start (exit {r.returncode}):\n{r.stderr}{r.stdout}")
            self.procs.adopt(name, p)
            uri += "bench"
        else:
            raise BenchError(f"unknown server kind {kind}")
        wait_ready(name, uri, p, logfile)
        return uri


def fio(uri, job, name="b", size=SIZE, seconds=SECONDS):
    args = ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
            "--output-format=json"] + [f"--{k}={v}" for k, v in job.items()]
    if seconds:
        args += [f"--runtime={seconds}", "--time_based"]
    out = run(args, f"fio {name} on {uri}")
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON.
    data = json.JSONDecoder().raw_decode(out[out.index("\n{") + 1 if not out.startswith("{") else 0:])[0]
    j = data["jobs"][0]
    if j.get("error"):
        raise BenchError(f"fio {name} on {uri}: error {j['error']}")
    return (j["read"]["iops"] + j["write"]["iops"], (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6,
            j["read"]["io_bytes"] + j["write"]["io_bytes"])


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def machine():
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / (1 << 20)
    return f"{platform.node()} {len(os.sched_getaffinity(0))} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions():
    out = []
    for args in (["nbdkit", "--version"], ["qemu-nbd", "--version"], ["nbd-server", "-V"], ["fio", "--version"],
                 ["nbdcopy", "--version"]):
        r = subprocess.run(args, capture_output=True, text=True)
        line = (r.stdout or r.stderr).strip().splitlines()
        m = re.search(r"\d+\.\d+(\.\d+)?", line[0] if line else "")
        out.append(f"{args[0]} {m.group(0) if m else '?'}")
    return ", ".join(out)


def fmt(v):
    return "-" if v is None else f"{v:.0f}"


def table(results):
    cols = [s[0] for s in SERVERS]
    rows = [w[0] for w in WORKLOADS + COLD_WORKLOADS if w[0] in results]
    wl = max(len(w) for w in rows) + 2
    widths = [max(len(c), 8) + 2 for c in cols]
    rw = [max(len(r[0]), 5) + 2 for r in RATIOS]
    head = f"{'workload':{wl}}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths)) + \
        "".join(f"{r[0]:>{w}}" for r, w in zip(RATIOS, rw))
    lines = [head, "-" * len(head)]
    for name in rows:
        row = results[name]
        line = f"{name:{wl}}" + "".join(f"{fmt(row.get(c)):>{w}}" for c, w in zip(cols, widths))
        for (_, num, den), w in zip(RATIOS, rw):
            a, b = row.get(num), row.get(den)
            line += f"{(f'{a / b:.2f}' if a is not None and b else '-'):>{w}}"
        lines.append(line)
    return "\n".join(lines)


def run_cold(tmp, procs):
    """The cold rows: fresh COLD_SIZE exports, written whole once, the page cache dropped before each
    job. Returns {row: {column: [samples]}}."""
    bench = Bench(tmp, procs, COLD_SIZE)
    for label in dict.fromkeys(s[2][0] for s in COLD_SERVERS if s[1] == "qbd"):
        bench.start_qbd(label, QBD_DAEMONS[label])
    uris = {name: bench.start(name, kind, arg) for name, kind, arg in COLD_SERVERS}
    for name, uri in uris.items():
        t = time.monotonic()
        fio(uri, dict(rw="write", bs="1m", iodepth=8), name="fill", size=COLD_SIZE, seconds=0)
        log(f"  cold fill {name}: {COLD_SIZE / GIB:g} GiB in {time.monotonic() - t:.0f} s")
    samples = {w[0]: {s: [] for s in uris} for w in COLD_WORKLOADS}
    for rnd in range(ROUNDS):
        for wname, job, unit in COLD_WORKLOADS:
            for name, uri in uris.items():  # interleaved, as the warm rows
                drop_caches()
                iops, mbps, _ = fio(uri, job, size=COLD_SIZE)
                value = iops if unit == "iops" else mbps
                samples[wname][name].append(value)
                log(f"  {f'round {rnd + 1} ' if ROUNDS > 1 else ''}{wname:36} {name:28} {value:>10.0f}")
    return samples


def main():
    t0 = time.time()
    missing = [f"{t} (package {pkg})" for t, pkg in TOOLS.items() if not shutil.which(t)]
    if missing:
        raise BenchError("missing: " + ", ".join(missing) + "; scripts/install-deps.sh (make deps) installs them")
    for b in ("qbd-master", "qbdctl"):
        if not os.access(f"{BUILD}/bin/{b}", os.X_OK):
            raise BenchError(f"{BUILD}/bin/{b} is missing: build it first (make)")
    if BASE and not all(os.access(f"{BASE}/{b}", os.X_OK) for b in ("qbd-master", "qbdctl")):
        raise BenchError(f"BENCH_BASE={BASE}: qbd-master and qbdctl must be there")
    if SIZE < (1 << 20) or COPY_SIZE < (1 << 20):
        raise BenchError("BENCH_SIZE and BENCH_COPY_SIZE must be at least 1M")
    if COLD_SIZE and COLD_SIZE < (1 << 20):
        raise BenchError("BENCH_COLD_SIZE must be 0 or at least 1M")

    def on_sigterm(signum, frame):
        raise Interrupted(f"signal {signum}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)

    tmp = tempfile.mkdtemp(prefix="qbd-bench.", dir=os.environ.get("BENCH_DIR") or None)
    procs = Procs()
    try:
        # The warm files are removed before the cold exports are written: the free space now is theirs.
        cold_skip = cold_skip_reason(tmp)
        fio_rows = sum(1 for w in WORKLOADS if w[1] != "nbdcopy")
        est = ROUNDS * len(SERVERS) * fio_rows * (SECONDS + 1) / 60 + 1.5  # + set-up, fill and nbdcopy
        if not cold_skip:  # + the fill at about 300 MB/s
            est += ROUNDS * len(COLD_SERVERS) * len(COLD_WORKLOADS) * (SECONDS + 2) / 60 + \
                (cold_bytes_needed() - GIB) / 300e6 / 60
        log(f"bench: {len(WORKLOADS)} warm workloads x {len(SERVERS)} servers"
            f"{'' if cold_skip else f', {len(COLD_WORKLOADS)} cold ones x {len(COLD_SERVERS)}'}"
            f" x {ROUNDS} round(s), {SECONDS} s per fio job: about {est:.0f} min")
        if cold_skip:
            log(f"bench: no cold rows: {cold_skip}")

        warm = f"{tmp}/warm"
        os.makedirs(warm)
        log(f"bench: scratch directory {tmp}; writing {COPY_SIZE / GIB:g} GiB of random data for nbdcopy")
        src = f"{warm}/random.img"
        with open(src, "wb") as f:
            left = COPY_SIZE
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n

        bench = Bench(warm, procs, EXPORT_SIZE)
        for label, extra in QBD_DAEMONS.items():
            bench.start_qbd(label, extra)
        uris = {name: bench.start(name, kind, arg) for name, kind, arg in SERVERS}
        qbd_pid = {name: bench.qbd[arg[0]][1].pid for name, kind, arg in SERVERS if kind == "qbd"}

        # The same fill everywhere: the fio region written once, 1 MiB at a time, through NBD.
        for name, uri in uris.items():
            log(f"  fill {name}")
            fio(uri, dict(rw="write", bs="1m", iodepth=8), name="fill", seconds=0)
        os.sync()

        samples = {w[0]: {s: [] for s in uris} for w in WORKLOADS}
        cpu = {w[0]: {s: [] for s in qbd_pid} for w in WORKLOADS}
        for rnd in range(ROUNDS):
            for wname, job, unit in WORKLOADS:
                for name, uri in uris.items():  # interleaved: every server per workload, in turn
                    if job == "nbdcopy":
                        with open(src, "rb") as f:  # from the page cache, like the fio data
                            while f.read(16 << 20):
                                pass
                    os.sync()
                    c0 = cpu_seconds(qbd_pid[name]) if name in qbd_pid else None
                    if job == "nbdcopy":
                        t = time.monotonic()
                        run(["nbdcopy", "--flush", src, uri], f"nbdcopy into {name}")
                        moved = COPY_SIZE
                        value = moved / 1e6 / (time.monotonic() - t)
                    else:
                        iops, mbps, moved = fio(uri, job)
                        value = iops if unit == "iops" else mbps
                    if c0 is not None:
                        cpu[wname][name].append((cpu_seconds(qbd_pid[name]) - c0) / (moved / GIB))
                    samples[wname][name].append(value)
                    log(f"  {f'round {rnd + 1} ' if ROUNDS > 1 else ''}{wname:36} {name:28} {value:>10.0f}")

        rss = {label: peak_rss_mib(p.pid) for label, (_, p) in bench.qbd.items()}
        # The warm servers stop and their files go before the cold exports are written.
        procs.stop_all()
        shutil.rmtree(warm)
        if not cold_skip:
            cold_skip = cold_skip_reason(tmp)  # again: something else may have taken the space since
            if cold_skip:
                log(f"bench: no cold rows: {cold_skip}")
        if not cold_skip:
            log(f"bench: cold rows, {COLD_SIZE / GIB:g} GiB exports, page cache dropped before each job")
            samples.update(run_cold(f"{tmp}/cold", procs))
            procs.stop_all()
            shutil.rmtree(f"{tmp}/cold")

        results = {w: {s: round(statistics.median(v), 1) for s, v in row.items()} for w, row in samples.items()}
        cpu_med = {w: {s: round(statistics.median(v), 3) for s, v in row.items()} for w, row in cpu.items()}

        out = table(results)
        qcols = list(qbd_pid)
        cw = max(len(c) for c in qcols) + 2
        wl = max(len(w[0]) for w in WORKLOADS) + 2
        cpu_lines = [f"{'qbd-master CPU s per GiB moved':{wl}}" + "".join(f"{c:>{cw}}" for c in qcols)]
        for w in cpu_med:
            cpu_lines.append(f"{w.rsplit(' (', 1)[0]:{wl}}" + "".join(f"{cpu_med[w][c]:>{cw}.2f}" for c in qcols))
        rss_line = "qbd-master peak RSS (VmHWM): " + ", ".join(
            f"{label} {v:.0f} MiB" + (f" ({extra.strip()})" if extra else "")
            for (label, extra), v in zip(QBD_DAEMONS.items(), rss.values()))
        cold_line = (f"cold rows left out: {cold_skip}" if cold_skip else
                     f"cold rows: fio over the whole of {COLD_SIZE / GIB:g} GiB exports written once, page cache "
                     f"dropped before each job")
        wall = (time.time() - t0) / 60
        notes = (f"{'Medians of ' + str(ROUNDS) + ' rounds; ' if ROUNDS > 1 else ''}fio ioengine=nbd, one connection, "
                 f"{SECONDS} s per job over the first {SIZE / GIB:g} GiB (written once through NBD) of "
                 f"{EXPORT_SIZE / GIB:g} GiB exports on one disk; nbdcopy --flush of {COPY_SIZE / GIB:g} GiB of "
                 f"random data from the page cache; {cold_line}. Ratios: qbd / peer (1p = qbd 1 part, "
                 f"3p = qbd 3 parts, quorum = qemu quorum 3 files).")
        # The first access to each chunk after a start compares its copies (layout-spec.md §4.6):
        # its cost on cold chunks, beside a cold 4 KiB read of nbdkit's file plugin.
        log("  first access after a start (3 parts, cold page cache)")
        first_json = f"{tmp}/first-access.json"
        first = subprocess.run(["/usr/bin/python3", f"{ROOT}/scripts/bench-first-access.py", f"{BUILD}/bin",
                                "--json", first_json], capture_output=True, text=True)
        if first.returncode != 0:
            raise BenchError(f"bench-first-access.py failed:\n{first.stdout}{first.stderr}")
        first_lines = ["first access to a chunk after a start, 4 KiB reads:", *first.stdout.strip().splitlines()]
        report = "\n".join([out, cold_line, "", *cpu_lines, rss_line, "", *first_lines])
        print(report)
        print(f"\nwall time {wall:.1f} min")

        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "?"
        if subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                          text=True).stdout.strip():
            commit += " (with uncommitted changes)"
        os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
        with open(f"{ROOT}/bench/results/history.txt", "a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} commit {commit}, NBD peers, "
                    f"{SECONDS}s per job, {SIZE / GIB:g} GiB fio region; {machine()}; {versions()}; "
                    f"wall {wall:.1f} min\n{report}\n\n{notes}\n")
        doc = dict(results)
        for w, row in cpu_med.items():
            doc[f"qbd-master CPU, {w.rsplit(' (', 1)[0]} (s/GiB)"] = row
        doc["qbd-master peak RSS (MiB)"] = {label: round(v, 1) for label, v in rss.items()}
        with open(first_json) as f:
            doc["first access after a start, 3 parts, cold (ms)"] = json.load(f)
        with open(f"{ROOT}/bench/results/latest.json", "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        sys.exit(f"bench: {e}")
    except (KeyboardInterrupt, Interrupted):
        sys.exit("bench: interrupted; every server it started is stopped")
