#!/usr/bin/env python3
"""The cost of the robot server's access checks (docs/security.md), side by side in one run.

Starts two ``robot-server`` processes (each with its ``smoothie-emulator``) on loopback,
neither trusting loopback (``trusted_interfaces = []``): one in the OT-2's open mode
(``open_access = true``, no token), one checking tokens (``Authorization: Bearer``, the
hashed token file of ``update_server/tokens.py``).  Alternating between them, each round
times ``--requests`` round trips on one keep-alive connection of

* ``GET /health`` (open in both), and
* ``POST /robot/lights {"on": true}`` (a state-changing request that only sets a
  simulated GPIO line: the origin, credential and body checks are much of it).

Prints the median round trip of each and the ratio token / open.

    python robot_server/bench/bench_access.py [--requests 500] [--rounds 5]     (make bench)
"""
from __future__ import annotations

import argparse
import tempfile
import urllib.parse
from pathlib import Path

from bench_api import start_local, stop_all
from update_server.benchutil import open_vs_token, print_open_vs_token
from update_server.tokens import TokenStore, tokens_path

LIGHTS = b'{"on": true}'
JSON = {"Content-Type": "application/json", "Opentrons-Version": "*"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory(prefix="bench-robot-access-") as tmp:
        try:
            ports = {}
            for mode in ("open", "token"):
                work = Path(tmp) / mode
                work.mkdir()
                url, _, _, started = start_local(
                    work, f"trusted_interfaces = []\nopen_access = {'true' if mode == 'open' else 'false'}\n")
                procs += started
                ports[mode] = urllib.parse.urlparse(url).port
            token, _ = TokenStore(tokens_path(Path(tmp) / "token")).issue("bench", "button")
            results = open_vs_token({
                ("health", "open"): (ports["open"], "GET", "/health", {}, None),
                ("health", "token"): (ports["token"], "GET", "/health", {}, None),
                ("post", "open"): (ports["open"], "POST", "/robot/lights", JSON, LIGHTS),
                ("post", "token"): (ports["token"], "POST", "/robot/lights",
                                    {**JSON, "Authorization": f"Bearer {token}"}, LIGHTS),
            }, args.rounds, args.requests)
        finally:
            stop_all(procs)
    print_open_vs_token(f"robot-server access checks, {args.rounds} rounds x {args.requests} round trips "
                        "on loopback (median):",
                        {"health": "GET /health", "post": "authorised POST /robot/lights"}, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
