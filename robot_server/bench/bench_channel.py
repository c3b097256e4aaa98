"""Benchmark: one OT-2 protocol executed by the real ``opentrons`` package through the
robot server's G-code channel vs straight to the emulator, side by side in one run.

It starts two ``smoothie-emulator`` processes on ptys (instant motion, a UART's stand-in):
``opentrons`` opens one directly (``OT_SMOOTHIE_EMULATOR_URI=/dev/pts/N``); a
``robot-server`` process (simulated GPIO) owns the other and lends it through its channel. Runs alternate (direct, channel, ...) so
both see the same machine load.

    python robot_server/bench/bench_channel.py [--repeat 3] [--wells 8]     (make bench)

Prints the best and median wall time of each (opentrons' start-up included, as a user
sees it) and the ratio channel / direct of the best times (target <= 1.10); then, to show
the channel's own cost, the median round trip of one command (``M114.2`` written the
OT-2 way, read up to ``ok\r\nok\r\n``) over pyserial, direct and through the channel.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import ot2_execute
from bench_api import start_local, stop_all


def start_emulator(tmp: Path) -> tuple[subprocess.Popen, str]:
    """``smoothie-emulator --pty``; returns the process and its pty's path."""
    # cwd=tmp: from the repository root the project directory would shadow the package
    proc = subprocess.Popen([sys.executable, "-m", "robot_server.emulator", "--pty"], cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc, proc.stdout.readline().strip()


def round_trips(url: str, count: int) -> list[float]:
    """Seconds per ``M114.2`` round trip, ``count`` times, over pyserial at ``url``."""
    port = serial.serial_for_url(url, baudrate=115200, timeout=5)
    try:
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            port.write(b"M114.2 \r\n\r\n")
            reply = port.read_until(b"ok\r\nok\r\n")
            samples.append(time.perf_counter() - t0)
            if not reply.endswith(b"ok\r\nok\r\n"):
                raise RuntimeError(f"no answer from {url}: {reply!r}")
        return samples
    finally:
        port.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="runs of each kind (best and median are shown)")
    p.add_argument("--wells", type=int, default=8, help="wells per step of the protocol (1..8)")
    p.add_argument("--commands", type=int, default=2000, help="M114.2 round trips of each kind")
    args = p.parse_args(argv)
    procs: list[subprocess.Popen] = []
    tmp = tempfile.TemporaryDirectory(prefix="ot2-bench-channel-")
    root = Path(tmp.name)
    try:
        direct_emu, direct_tty = start_emulator(root)
        procs.append(direct_emu)
        _, _, channel_url, server_procs = start_local(root)
        procs += server_procs
        times: dict[str, list[float]] = {"direct": [], "channel": []}
        urls = {"direct": direct_tty, "channel": channel_url}
        for i in range(args.repeat):
            for kind in ("direct", "channel"):
                work = root / f"{kind}{i}"
                work.mkdir()
                seconds, _ = ot2_execute.execute(urls[kind], work, args.wells)
                times[kind].append(seconds)
        print()
        print(f"{'opentrons protocol execution':<36} {'best':>9} {'median':>9}")
        for kind, label in (("direct", "straight to the emulator (pty)"),
                            ("channel", "through the G-code channel")):
            print(f"{label:<36} {min(times[kind]):>8.2f}s {statistics.median(times[kind]):>8.2f}s")
        ratio = min(times["channel"]) / min(times["direct"])
        print(f"{'ratio channel / direct (best)':<36} {ratio:>9.3f}   target <= 1.10")
        rtt = {kind: statistics.median(round_trips(urls[kind], args.commands)) for kind in urls}
        print()
        print(f"{'one command round trip (pyserial)':<36} {'median':>9}")
        print(f"{'straight to the emulator (pty)':<36} {rtt['direct'] * 1e3:>7.3f}ms")
        print(f"{'through the G-code channel':<36} {rtt['channel'] * 1e3:>7.3f}ms")
    finally:
        stop_all(procs)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
