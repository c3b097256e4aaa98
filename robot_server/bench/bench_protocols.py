"""Protocol simulation benchmark: a 96-well transfer protocol (one tip per well:
pick up, aspirate, dispense, drop; 480 commands), simulated in a fresh process.

    python robot_server/bench/bench_protocols.py [--repeat 5]

Prints commands, simulate time (best of N, s), commands/s and the process's peak RSS
(MB). Reference (``shared/reference/ot2-facts.md``): the OT-2's ``opentrons_simulate``
takes about 2.2 s and 110 MB for the same protocol.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

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

CHILD = r'''
import json, resource, sys, time
t0 = time.perf_counter()
from robot_server.protocol.loader import load_protocol, make_context, run_protocol
from robot_server.protocol.hardware import SimulatedHardware
t_import = time.perf_counter() - t0
src = open(sys.argv[1]).read()
best = None
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    proto = load_protocol(src, sys.argv[1])
    ctx = make_context(proto, SimulatedHardware(), keep_log=0)
    run_protocol(proto, ctx)
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
s = ctx.summary()
print(json.dumps({"import_s": t_import, "simulate_s": best, "commands": s["commands"],
                  "moves": s["moves"], "est_duration_s": s["duration_s"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "transfer_96.py")
        with open(path, "w") as fh:
            fh.write(PROTOCOL)
        t0 = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "robot_server.protocol.cli", "simulate", "-q", path],
                             capture_output=True, text=True, cwd=d)
        cli_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, "-c", CHILD, path, str(args.repeat)], capture_output=True,
                             text=True, cwd=d, check=True)
    r = json.loads(out.stdout)
    print(f"96-well transfer: {r['commands']} commands, {r['moves']} moves, "
          f"estimated run {r['est_duration_s'] / 60:.1f} min")
    print(f"{'simulate (best of %d)' % args.repeat:<28}{r['simulate_s'] * 1000:9.1f} ms  "
          f"{r['commands'] / r['simulate_s']:10.0f} commands/s")
    print(f"{'import protocol package':<28}{r['import_s'] * 1000:9.1f} ms")
    print(f"{'robot-simulate, whole run':<28}{cli_s * 1000:9.1f} ms  (exit {cli.returncode})")
    print(f"{'peak RSS':<28}{r['peak_rss_mb']:9.1f} MB")
    return 0 if cli.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
