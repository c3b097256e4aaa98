"""Protocol simulation benchmark: a 96-well transfer protocol (one tip per well: pick up,
aspirate, dispense, blow out, drop; 480 commands) through ``robot-simulate`` and the OT-2's
``opentrons_simulate``, side by side in one run, each a fresh process.

    python robot_server/bench/bench_protocols.py [--repeat 3]

Prints run-log lines, wall time (best of N, s) and peak RSS (MB) of each command and the
ratio ours / theirs. Both run the same engine (opentrons 8.8.2), so the ratio shows what
the thin command adds.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROTOCOL = '''from opentrons import protocol_api

metadata = {"protocolName": "96-well transfer", "apiLevel": "2.15"}


def run(protocol: protocol_api.ProtocolContext):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    source = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])
    for i, well in enumerate(plate.wells()):
        p300.pick_up_tip()
        p300.aspirate(100, source.wells()[i // 8])
        p300.dispense(100, well)
        p300.blow_out()
        p300.drop_tip()
'''


#: Runs a command and prints its peak RSS (kB): the measuring process's only child.
PEAK_RSS = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def measure(command: list[str], home: str, repeat: int) -> tuple[float, float, int]:
    """Best wall time (s), peak RSS (MB) and run-log lines of ``command``."""
    env = dict(os.environ, HOME=home)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=home, env=env, check=True)
        best = min(best, time.perf_counter() - t0)
    rss = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True, text=True, cwd=home,
                         env=env, check=True)
    return best, int(rss.stdout) / 1024, len(done.stdout.splitlines())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "transfer_96.py")
        with open(path, "w") as fh:
            fh.write(PROTOCOL)
        theirs = measure([str(bin_dir / "opentrons_simulate"), path], d, args.repeat)
        ours = measure([str(bin_dir / "robot-simulate"), path], d, args.repeat)
    print(f"96-well transfer, best of {args.repeat}, fresh process each")
    for name, (wall, rss, lines) in (("opentrons_simulate", theirs), ("robot-simulate", ours)):
        print(f"{name:<22}{wall:8.2f} s  {lines:5d} run-log lines  peak RSS {rss:6.1f} MB")
    print(f"{'ratio ours / theirs':<22}{ours[0] / theirs[0]:8.2f}")
    return 0 if ours[2] == theirs[2] else 1


if __name__ == "__main__":
    sys.exit(main())
