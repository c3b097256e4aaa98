#!/usr/bin/env python3
"""A rollout from gooseBit (hawkBit's DDI API) to ten robots, and one idle robot's polling load.

Starts gooseBit (``.venv-goosebit``) and N real ``update-server`` processes on loopback
(file-backed slots, GRUB env files), each polling it (``ddi_url``) every second. Publishes a
signed bundle with a ``--size-mib`` image and a rollout, and times until every robot runs
the new version as gooseBit shows it (``sw_version``, state Finished): download, install,
the reboot the server asks for (the process started again from slot B, marked good), the
success feedback. Then counts the HTTP requests one idle robot makes through a counting
proxy in ``--idle-seconds``, and prints them per hour at gooseBit's default interval (60 s).

    python update_server/bench/bench_rollout.py [--robots 10] [--size-mib 32]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from update_server.benchutil import MIB, BenchRobot, make_bundle
from update_server.rollout_lab import DdiProxy, GooseBit

DEFAULT_POLL = 60.0   # s: gooseBit's poll_time default, 00:01:00


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--robots", type=int, default=10)
    ap.add_argument("--size-mib", type=int, default=32)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-", dir=args.dir))
    (work / "goosebit").mkdir()
    goosebit = GooseBit(work / "goosebit", poll_time="00:00:01")
    robots = []
    try:
        path, image, keyring = make_bundle(work, args.size_mib, "2.0.0")
        image.unlink()
        names = [f"robot-{i}" for i in range(args.robots)]
        for name in names:
            robots.append(BenchRobot(work / name, keyring, (args.size_mib + 8) * MIB, ddi_url=goosebit.url,
                                     ddi_controller_id=name, ddi_poll_seconds=1))
            # The first alone: gooseBit 0.2.12 makes two records of a board it has not seen
            # when robots of it register at the same moment, then fails their configData.
            while name == names[0] and name not in goosebit.devices():
                time.sleep(0.2)
        while not all(goosebit.devices().get(n, {}).get("sw_version") == "1.0.0" for n in names):
            time.sleep(0.2)

        started = time.monotonic()
        goosebit.rollout(goosebit.upload(path))
        waiting = set(range(len(robots)))
        while waiting:
            for i in sorted(waiting):
                if robots[i].reboot_marker.exists():
                    robots[i].reboot_into_update("2.0.0")
                    waiting.discard(i)
            time.sleep(0.1)
        while not all(d["last_state"] == "Finished" and d["sw_version"] == "2.0.0"
                      for n, d in goosebit.devices().items() if n in names):
            time.sleep(0.2)
        seconds = time.monotonic() - started
        total = path.stat().st_size * len(robots)
        print(f"rollout of a {path.stat().st_size / MIB:.1f} MiB bundle to {len(robots)} robots "
              f"(publish to all running it, gooseBit's view): {seconds:.1f} s, "
              f"{total / seconds / 1e6:.1f} MB/s delivered")

        proxy = DdiProxy(goosebit.port)
        idle = BenchRobot(work / "idle-robot", keyring, 8 * MIB, version="2.0.0", ddi_url=proxy.url,
                          ddi_controller_id="idle-robot", ddi_poll_seconds=1)   # nothing to install
        robots.append(idle)
        while goosebit.devices().get("idle-robot", {}).get("sw_version") != "2.0.0":
            time.sleep(0.2)
        before = len(proxy.requests)
        time.sleep(args.idle_seconds)
        requests = proxy.requests[before:]
        polls = sum(1 for line in requests if line.startswith("GET ") and line.split()[1].endswith("/idle-robot"))
        per_poll = len(requests) / max(polls, 1)
        print(f"one idle robot: {len(requests)} requests ({polls} polls) in {args.idle_seconds:.0f} s: "
              f"{per_poll:.2f} per poll, {per_poll * 3600 / DEFAULT_POLL:.0f} requests/hour at gooseBit's "
              f"default {DEFAULT_POLL:.0f} s interval")
        proxy.close()
    finally:
        for robot in robots:
            robot.stop()
        goosebit.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
