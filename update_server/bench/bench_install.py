#!/usr/bin/env python3
"""Install throughput and memory of the update server, next to ``dd`` in the same run.

Builds a signed bundle with a 256 MiB image, starts ``update-server`` as a subprocess
(U-Boot env file, file-backed slots), and alternately

* copies the image into the slot file with ``dd bs=1M conv=fsync,notrunc`` (what ``dd``
  does to a block device: overwrite in place, then flush), and
* installs the bundle over real HTTP on loopback (begin, upload, wait for ``done``),

evicting the slot file from the page cache before every run.  Prints MB/s of each, the
ratio (target >= 0.9), and the server's peak RSS (``VmHWM``; target < 40 MB).  The
literal ``dd conv=fsync`` (which truncates and reallocates a regular file) is run last and
shown for reference.

    python update_server/bench/bench_install.py [--size-mib 256] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from update_server import bundle
from update_server.benchutil import MIB, boot_files, evict, free_port, make_bundle, start_update_server, warm


def proc_status(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` field in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MemorySampler:
    """Samples VmRSS/RssAnon/RssFile of ``pid`` every 10 ms in a thread (kB maxima)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for key in self.peak:
                self.peak[key] = max(self.peak[key], proc_status(self.pid, key))
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_dd(image: Path, slot: Path, conv: str) -> float:
    evict(slot)
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={image}", f"of={slot}", "bs=1M", f"conv={conv}", "status=none"], check=True)
    return time.perf_counter() - t0


def http_json(port: int, method: str, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return body


def run_install(port: int, bundle_path: Path, slot: Path) -> float:
    evict(slot)
    token = http_json(port, "POST", "/server/update/begin")["token"]
    size = bundle_path.stat().st_size
    with socket.create_connection(("127.0.0.1", port)) as sock, open(bundle_path, "rb") as f:
        t0 = time.perf_counter()
        sock.sendall(
            f"POST /server/update/{token}/file HTTP/1.1\r\nHost: robot\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        sock.sendfile(f)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = json.loads(resp.read())
        elapsed = time.perf_counter() - t0
    if resp.status != 200 or body.get("stage") != "done":
        raise SystemExit(f"install failed: {resp.status} {body}")
    http_json(port, "POST", "/server/update/cancel")  # end the session (slot stays unselected)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    parser.add_argument("--slot", help="use this file or block device as the target slot "
                        "(its content is overwritten!); default: a file in the work dir")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="ot2-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MIB
    slot_a, slot_b = work / "slot-A", work / "slot-B"
    if args.slot:
        slot_b = Path(args.slot)
    print(f"work dir {work}; image {args.size_mib} MiB; {os.cpu_count()} CPUs")

    bundle_path, image, keyring = make_bundle(work, args.size_mib, "bench")
    slot_size = 2 * size
    for slot in (slot_a,) if args.slot else (slot_a, slot_b):  # like a partition: all blocks allocated
        with open(slot, "wb") as f:
            for _ in range(slot_size // (8 * MIB)):
                f.write(bytes(8 * MIB))
    boot_files(work)
    port = free_port()
    (work / "update-server.toml").write_text(
        f'listen = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\n'
        f'compatible = "ot2-bench"\nkeyring = "{keyring}"\n'
        f'fw_env_config = "{work / "boot/fw_env.config"}"\ncmdline = "{work / "cmdline"}"\n'
        f'version_file = "{work / "version.json"}"\nreboot_command = ["true"]\nlog_level = "warning"\n'
        f'[slots.A]\ndevice = "{slot_a}"\n[slots.B]\ndevice = "{slot_b}"\n'
    )

    server = start_update_server(work / "update-server.toml", port, work)
    try:
        rss_idle = proc_status(server.pid, "VmRSS")
        anon_idle = proc_status(server.pid, "RssAnon")
        warm(image)
        warm(bundle_path)
        dd_times, install_times, cpu = [], [], []
        for _ in range(args.rounds):
            dd_times.append(run_dd(image, slot_b, "fsync,notrunc"))
            before = cpu_seconds(server.pid)
            with MemorySampler(server.pid) as sampler:
                install_times.append(run_install(port, bundle_path, slot_b))
            cpu.append(cpu_seconds(server.pid) - before)
        hwm = proc_status(server.pid, "VmHWM")
        with open(slot_b, "rb") as f:  # the last install really wrote the image
            h = hashlib.sha256()
            for _ in range(args.size_mib):
                h.update(f.read(MIB))
        assert h.hexdigest() == bundle.hash_file(image)[1], "slot content differs from the image"
        dd_trunc = run_dd(image, slot_b, "fsync") if not args.slot else float("nan")
    finally:
        server.terminate()
        server.wait(10)

    def mbs(seconds):
        return size / seconds / 1e6

    dd_best, inst_best = min(dd_times), min(install_times)
    dd_med, inst_med = statistics.median(dd_times), statistics.median(install_times)
    rows = [
        ("dd bs=1M conv=fsync,notrunc (best)", f"{mbs(dd_best):8.1f} MB/s", f"{dd_best:6.2f} s"),
        ("update-server install (best)", f"{mbs(inst_best):8.1f} MB/s", f"{inst_best:6.2f} s"),
        ("dd bs=1M conv=fsync,notrunc (median)", f"{mbs(dd_med):8.1f} MB/s", f"{dd_med:6.2f} s"),
        ("update-server install (median)", f"{mbs(inst_med):8.1f} MB/s", f"{inst_med:6.2f} s"),
        ("dd bs=1M conv=fsync (truncates file)", f"{mbs(dd_trunc):8.1f} MB/s", f"{dd_trunc:6.2f} s"),
        ("ratio install/dd (best, target >= 0.9)", f"{dd_best / inst_best:8.2f}", ""),
        ("ratio install/dd (median)", f"{dd_med / inst_med:8.2f}", ""),
        ("ratio install/dd conv=fsync (truncating)", f"{dd_trunc / inst_best:8.2f}", ""),
        ("server CPU per install (median)", f"{statistics.median(cpu):8.2f} s", ""),
        ("server RSS idle (of it private/anon)", f"{rss_idle / 1024:5.1f} ({anon_idle / 1024:.1f}) MB", ""),
        ("server RSS peak sampled, private/anon", f"{sampler.peak['RssAnon'] / 1024:8.1f} MB", ""),
        ("server RSS peak sampled, file-backed", f"{sampler.peak['RssFile'] / 1024:8.1f} MB", ""),
        ("server peak RSS VmHWM (target < 40 MB)", f"{hwm / 1024:8.1f} MB", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'value':>13}  {'time':>8}")
    print("-" * (width + 25))
    for name, value, t in rows:
        print(f"{name:<{width}}  {value:>13}  {t:>8}")
    if not args.dir:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
