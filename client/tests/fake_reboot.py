#!/usr/bin/env python3
"""A robot "reboot" for the test rig: the bootloader's slot choice, then a new boot.

Usage: fake_reboot.py ROOT.  Runs the contract's algorithm (docs/architecture.md) on the
real grubenv files with grub-editenv: the first slot of BOOT_ORDER with tries left is
chosen and its count decremented; then the "kernel" of that slot starts: a new boot id,
``ot2.slot=X`` on the command line, and ``version.json`` read from the first line of the
slot's image (what the rootfs of that slot would carry).
"""

import json
import subprocess
import sys
import uuid
from pathlib import Path

root = Path(sys.argv[1])
envs = [root / "boot" / "grubenv", root / "boot" / "grubenv.bak"]
out = subprocess.run(["grub-editenv", str(envs[0]), "list"], check=True, capture_output=True, text=True).stdout
env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
order = env.get("BOOT_ORDER", "A B").split()
chosen = next((s for s in order if int(env.get(f"BOOT_{s}_LEFT", "3")) > 0), None)
if chosen is None:
    chosen = order[0]
    for s in order:
        env[f"BOOT_{s}_LEFT"] = "3"
env[f"BOOT_{chosen}_LEFT"] = str(int(env.get(f"BOOT_{chosen}_LEFT", "3")) - 1)
for f in envs:
    subprocess.run(["grub-editenv", str(f), "set"] + [f"{k}={env[k]}" for k in env if k.startswith("BOOT_")],
                   check=True)
with open(root / f"slot-{chosen}.img", "rb") as f:
    header = json.loads(f.readline())
(root / "version.json").write_text(json.dumps(header))
(root / "cmdline").write_text(f"root=/dev/vda{2 if chosen == 'A' else 3} ot2.slot={chosen}\n")
(root / "boot_id").write_text(str(uuid.uuid4()) + "\n")
