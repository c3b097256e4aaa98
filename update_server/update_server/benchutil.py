"""Helpers shared by the benchmarks (``update_server/bench``, ``client/bench``); not used at run time."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import bundle

MIB = 1 << 20
BLKFLSBUF = 0x1261  # ioctl: flush a block device's buffer cache


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evict(path: str | os.PathLike) -> None:
    """Flush ``path`` and drop it from the page cache (and a block device's buffer cache)
    so that the next run starts cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        except OSError:  # not a block device, or not allowed
            pass
    finally:
        os.close(fd)


def warm(path: str | os.PathLike) -> None:
    """Read ``path`` once so that the runs read it from the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(8 * MIB):
            pass


def make_bundle(work: Path, size_mib: int, version: str) -> tuple:
    """A signed bundle ``work/bundle.ot2`` (compatible ``ot2-bench``) of a random
    ``size_mib`` MiB image ``work/rootfs.img``, and ``work/keyring`` trusting its key.

    Returns ``(bundle path, image path, keyring dir)``.
    """
    image, path = work / "rootfs.img", work / "bundle.ot2"
    with open(image, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MIB))
    key = bundle.generate_private_key()
    keyring = bundle.write_keyring(work / "keyring", {"bench": key})
    with open(path, "wb") as out:
        bundle.write_bundle(out, key, bundle.make_certificate(key), "ot2-bench", ["1.0"], version, {"rootfs": str(image)})
    return path, image, keyring


def boot_files(work: Path) -> Path:
    """A U-Boot environment (``BOOT_ORDER=A B``, 3 tries each) made by ``mkenvimage`` and
    a kernel command line booting slot A, under ``work``; returns the fw_env config."""
    (work / "boot").mkdir(parents=True, exist_ok=True)
    (work / "boot/env.txt").write_text("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n")
    subprocess.run(["mkenvimage", "-s", "0x4000", "-o", str(work / "boot/uboot.env"),
                    str(work / "boot/env.txt")], check=True)
    (work / "boot/fw_env.config").write_text(f"{work / 'boot/uboot.env'} 0x0 0x4000\n")
    (work / "cmdline").write_text("ot2.slot=A\n")
    return work / "boot/fw_env.config"


def start_update_server(config: Path, port: int, cwd: Path, timeout: float = 30) -> subprocess.Popen:
    """Start ``update-server --config CONFIG`` and wait until ``/health`` on ``port`` answers.

    Raises RuntimeError (after stopping it) if it does not within ``timeout`` seconds.
    """
    exe = shutil.which("update-server") or str(Path(sys.executable).with_name("update-server"))
    proc = subprocess.Popen([exe, "--config", str(config)], cwd=cwd)
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError("update-server did not start") from None
            time.sleep(0.1)


def round_trips(port: int, method: str, path: str, headers: dict, n: int, body: bytes | None = None) -> float:
    """Median seconds of ``n`` round trips to ``127.0.0.1:port`` on one keep-alive
    connection; RuntimeError unless every answer is 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - t0)
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}")
    finally:
        conn.close()
    return statistics.median(times)


def open_vs_token(cases: dict, rounds: int, requests: int) -> dict:
    """Time ``cases`` (``{(what, "open" | "token"): (port, method, path, headers, body)}``)
    alternately, ``rounds`` times :func:`round_trips` of ``requests`` each; returns
    ``{case: [median seconds of each round]}``."""
    results = {case: [] for case in cases}
    for _ in range(rounds):
        for case, (port, method, path, headers, body) in cases.items():
            results[case].append(round_trips(port, method, path, headers, requests, body))
    return results


def print_open_vs_token(title: str, labels: dict, results: dict) -> None:
    """Print, per ``what`` of ``labels`` (``{what: label}``), the median round trip in
    open mode and with a token checked, and their ratio."""
    print(title)
    for what, label in labels.items():
        before = statistics.median(results[(what, "open")])
        after = statistics.median(results[(what, "token")])
        print(f"  {label:<40} open mode {before * 1e6:7.0f} us   token checked {after * 1e6:7.0f} us"
              f"   ratio {after / before:.2f}")


class BenchRobot:
    """A real ``update-server`` process on loopback with file-backed slots of ``slot_size``
    bytes, GRUB environment files (grub-editenv), ``version`` of board ``ot2-bench``
    revision 1.0 booted from slot A; ``settings`` adds TOML lines (``key = value``)."""

    def __init__(self, root: Path, keyring: Path, slot_size: int, version: str = "1.0.0", **settings):
        root.mkdir(parents=True)
        self.root = root
        for s in "AB":
            with open(root / f"slot-{s}.img", "wb") as f:
                f.truncate(slot_size)
        envs = [root / "grubenv", root / "grubenv.bak"]
        for e in envs:
            subprocess.run(["grub-editenv", str(e), "set", "BOOT_ORDER=A B", "BOOT_A_LEFT=3",
                            "BOOT_B_LEFT=3"], check=True)
        self.boot_into("A", version)
        self.port = free_port()
        self.reboot_marker = root / "rebooted"
        self.config = root / "update-server.toml"
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        self.config.write_text(
            f'listen = "127.0.0.1"\nport = {self.port}\ndata_dir = "{root / "data"}"\n'
            f'keyring = "{keyring}"\nboot_backend = "grub"\nrevision = "1.0"\n'
            f'grubenv = ["{envs[0]}", "{envs[1]}"]\ncmdline = "{root / "cmdline"}"\n'
            f'boot_id_file = "{root / "boot_id"}"\n'
            f'version_file = "{root / "version.json"}"\nmachine_id_file = "{root / "machine-id"}"\n'
            f'reboot_command = ["touch", "{self.reboot_marker}"]\nlog_level = "warning"\n{extra}'
            f'[slots.A]\ndevice = "{root / "slot-A.img"}"\n[slots.B]\ndevice = "{root / "slot-B.img"}"\n')
        self.proc = start_update_server(self.config, self.port, root)

    def boot_into(self, slot: str, version: str) -> None:
        """What the next start boots: ``slot`` (kernel command line, a new boot id) at ``version``."""
        (self.root / "cmdline").write_text(f"ot2.slot={slot}\n")
        (self.root / "boot_id").write_text(os.urandom(16).hex() + "\n")
        (self.root / "version.json").write_text(json.dumps({"version": version, "compatible": "ot2-bench"}))

    def reboot_into_update(self, version: str) -> None:
        """After the server asked for a reboot: it starts again from slot B, which the boot
        check marks good."""
        self.stop()
        self.reboot_marker.unlink()
        self.boot_into("B", version)
        self.proc = start_update_server(self.config, self.port, self.root)
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.port}/server/update/mark-good", method="POST"), timeout=10).read()

    def reset(self):
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{self.port}/server/update/cancel", method="POST"), timeout=10).read()
        evict(self.root / "slot-B.img")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
