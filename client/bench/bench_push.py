#!/usr/bin/env python3
"""Aggregate ``ot2 push`` throughput to 1 and to 10 update servers on loopback.

Starts N real ``update-server`` processes (file-backed slots, GRUB env files made by
grub-editenv, a keyring with the bench's signing key), builds a signed bundle with a
``--size-mib`` image, and pushes it with the client's fleet code (``--jobs N``): begin,
streamed upload, install (written, fsynced, hash-checked by each server), commit.  Prints
wall time, aggregate MB/s (bundle bytes delivered to all robots / wall time) and the
slowest robot's MB/s.  The slot files are evicted from the page cache before each run.

    python client/bench/bench_push.py [--size-mib 64] [--robots 1 10] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from update_server.benchutil import MIB, BenchRobot, make_bundle

from ot2_client.bundlecheck import verify_bundle
from ot2_client.push import PushOptions, push


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--robots", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-push-", dir=args.dir))
    servers = []
    try:
        path, image, keyring = make_bundle(work, args.size_mib, "2.0.0")
        image.unlink()
        info = verify_bundle(str(path), str(keyring))
        n_max = max(args.robots)
        servers = [BenchRobot(work / f"robot{i}", keyring, (args.size_mib + 8) * MIB) for i in range(n_max)]
        print(f"bundle {info.size / 1e6:.1f} MB; {os.cpu_count()} CPUs; update-server processes on loopback")
        for n in args.robots:
            best = None
            for _ in range(args.rounds):
                for s in servers[:n]:
                    s.reset()
                opts = PushOptions(jobs=n)
                t0 = time.monotonic()
                results = asyncio.run(push([f"127.0.0.1:{s.port}" for s in servers[:n]], info, opts))
                wall = time.monotonic() - t0
                failed = [r for r in results if not r.ok]
                if failed:
                    print(f"  {n} robots: FAILED: {failed[0].error}: {failed[0].message}")
                    return 1
                if best is None or wall < best[0]:
                    best = (wall, min(r.mb_per_s for r in results))
            wall, slowest = best
            total = info.size * n
            print(f"push to {n:2d} robot(s): {total / 1e6:7.1f} MB in {wall:6.2f} s = "
                  f"{total / wall / 1e6:6.1f} MB/s aggregate (slowest robot {slowest:.1f} MB/s), best of {args.rounds}")
        return 0
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
