#!/usr/bin/env python3
"""qbd benchmark: the same fio jobs (nbd ioengine) against qbd-master and peer NBD servers on
loopback, interleaved in one run, printed as a table (rows = workloads, columns = servers) with
the ratio qbd/peer, appended to bench/results/history.txt and written to bench/results/latest.json.

usage: scripts/bench.py BUILD_DIR      (BENCH_SECONDS=N sets each job's length, default 30)
"""
import json, os, platform, shutil, signal, socket, subprocess, sys, tempfile, time

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build/release"
SECONDS = int(os.environ.get("BENCH_SECONDS", "30"))
SIZE = os.environ.get("BENCH_SIZE", "1G")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = [
    ("4k randread iodepth32 (IOPS)", dict(rw="randread", bs="4k", iodepth=32), "iops"),
    ("4k randwrite iodepth32 (IOPS)", dict(rw="randwrite", bs="4k", iodepth=32), "iops"),
    ("1m read iodepth8 (MB/s)", dict(rw="read", bs="1m", iodepth=8), "mbps"),
    ("1m write iodepth8 (MB/s)", dict(rw="write", bs="1m", iodepth=8), "mbps"),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def fio(uri, job):
    args = ["fio", "--name=b", "--ioengine=nbd", f"--uri={uri}", f"--size={SIZE}", f"--runtime={SECONDS}",
            "--time_based", "--output-format=json", f"--rw={job['rw']}", f"--bs={job['bs']}",
            f"--iodepth={job['iodepth']}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    data = json.loads(out[out.index("{"):])["jobs"][0]
    iops = data["read"]["iops"] + data["write"]["iops"]
    mbps = (data["read"]["bw_bytes"] + data["write"]["bw_bytes"]) / 1e6
    return iops, mbps


def main():
    tmp = tempfile.mkdtemp(prefix="qbd-bench.")
    procs = []
    try:
        servers = {}
        # qbd-master with a 1-part and a 3-part volume.
        qport = free_port()
        with open(f"{tmp}/qbd.conf", "w") as f:
            # Three directories on one disk: the point is the cost of replication, not its safety.
            f.write(f"listen = 127.0.0.1:{qport}\nparts = a b c\nallow_shared_failure_domain = true\n")
            for p in "abc":
                f.write(f"[backend {p}]\npath = node-{p}\n")
        ctl = [f"{BUILD}/bin/qbdctl", "--config", f"{tmp}/qbd.conf"]
        subprocess.run(ctl + ["create", "one", "--size", SIZE, "--replicas", "1"], check=True, capture_output=True)
        subprocess.run(ctl + ["create", "three", "--size", SIZE, "--replicas", "3"], check=True, capture_output=True)
        log = open(f"{tmp}/master.log", "w")
        procs.append(subprocess.Popen([f"{BUILD}/bin/qbd-master", "--config", f"{tmp}/qbd.conf"], stderr=log))
        wait_port(qport)
        servers["qbd 1 part"] = f"nbd://127.0.0.1:{qport}/one"
        servers["qbd 3 parts"] = f"nbd://127.0.0.1:{qport}/three"
        # nbdkit file plugin on one file of the same size, same disk.
        kport = free_port()
        subprocess.run(["truncate", "-s", SIZE, f"{tmp}/nbdkit.img"], check=True)
        procs.append(subprocess.Popen(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(kport), "file",
                                       f"{tmp}/nbdkit.img"], stderr=subprocess.DEVNULL))
        wait_port(kport)
        servers["nbdkit file"] = f"nbd://127.0.0.1:{kport}/"

        # Fill every device once so reads hit data, not holes.
        for uri in servers.values():
            subprocess.run(["fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", f"--size={SIZE}", "--rw=write",
                            "--bs=1m", "--iodepth=8"], check=True, capture_output=True)

        results = {}
        for name, job, unit in WORKLOADS:
            results[name] = {}
            for server, uri in servers.items():  # interleaved: every server per workload, in turn
                iops, mbps = fio(uri, job)
                results[name][server] = round(iops if unit == "iops" else mbps, 1)
                print(f"  {name:32} {server:12} {results[name][server]:>10}", file=sys.stderr)

        cols = list(servers)
        head = f"{'workload':34}" + "".join(f"{c:>14}" for c in cols) + f"{'1p/nbdkit':>11}{'3p/nbdkit':>11}"
        lines = [head, "-" * len(head)]
        for name, row in results.items():
            base = row["nbdkit file"] or 1
            lines.append(f"{name:34}" + "".join(f"{row[c]:>14}" for c in cols) +
                         f"{row['qbd 1 part'] / base:>11.2f}{row['qbd 3 parts'] / base:>11.2f}")
        table = "\n".join(lines)
        print(table)
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        machine = f"{platform.node()} {os.cpu_count()} cores, {platform.platform()}"
        os.makedirs(f"{ROOT}/bench/results", exist_ok=True)
        with open(f"{ROOT}/bench/results/history.txt", "a") as f:
            f.write(f"\n## {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} commit {commit}, "
                    f"{SECONDS}s per job, {SIZE} devices; {machine}\n{table}\n")
        with open(f"{ROOT}/bench/results/latest.json", "w") as f:
            json.dump(results, f, indent=1)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
