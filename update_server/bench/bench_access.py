#!/usr/bin/env python3
"""The cost of the access checks (docs/security.md), side by side in one run.

Starts two ``update-server`` processes on loopback, neither trusting loopback
(``trusted_interfaces = []``): one in the OT-2's open mode (``open_access = true``, no
token), one checking tokens (``Authorization: Bearer``, hashed token file).  Alternating
between them, each round times ``--requests`` round trips on one keep-alive connection of

* ``GET /health`` (open in both: reads the boot environment), and
* ``POST /server/update/cancel`` (a state-changing request that does no work when no
  session is active: the origin, credential and body checks are most of it).

Prints the median round trip of each and the ratio token / open (target <= 1.1).

    python update_server/bench/bench_access.py [--requests 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from update_server.benchutil import boot_files, free_port, open_vs_token, print_open_vs_token, start_update_server
from update_server.tokens import TokenStore, tokens_path


def make_robot(work: Path, open_access: bool) -> tuple:
    """A config for a robot in ``work``; returns ``(config path, port)``."""
    fw_env_config = boot_files(work)
    for slot in "AB":
        with open(work / f"slot-{slot}.img", "wb") as f:
            f.truncate(1 << 20)
    port = free_port()
    (work / "update-server.toml").write_text(
        f'listen = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\n'
        f'compatible = "ot2-bench"\nkeyring = "{work / "keyring"}"\n'
        f'fw_env_config = "{fw_env_config}"\ncmdline = "{work / "cmdline"}"\n'
        f'version_file = "{work / "version.json"}"\nreboot_command = ["true"]\nlog_level = "warning"\n'
        f'trusted_interfaces = []\nopen_access = {"true" if open_access else "false"}\n'
        f'[slots.A]\ndevice = "{work / "slot-A.img"}"\n[slots.B]\ndevice = "{work / "slot-B.img"}"\n'
    )
    return work / "update-server.toml", port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        work = Path(tmp)
        open_config, open_port = make_robot(work / "open", open_access=True)
        token_config, token_port = make_robot(work / "token", open_access=False)
        token, _ = TokenStore(tokens_path(work / "token" / "data")).issue("bench", "button")
        servers = [start_update_server(open_config, open_port, work / "open"),
                   start_update_server(token_config, token_port, work / "token")]
        try:
            results = open_vs_token({
                ("health", "open"): (open_port, "GET", "/health", {}, None),
                ("health", "token"): (token_port, "GET", "/health", {}, None),
                ("post", "open"): (open_port, "POST", "/server/update/cancel", {}, None),
                ("post", "token"): (token_port, "POST", "/server/update/cancel",
                                    {"Authorization": f"Bearer {token}"}, None),
            }, args.rounds, args.requests)
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)
    print_open_vs_token(f"access checks, {args.rounds} rounds x {args.requests} round trips on loopback (median):",
                        {"health": "GET /health", "post": "authorised POST /server/update/cancel"}, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
