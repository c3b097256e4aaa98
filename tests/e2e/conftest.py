"""End-to-end fixtures: real images of a board, booted under software emulation.

The board is the QEMU board (x86_64 PC, GRUB), or with OT2_BOARD=ot2 the Raspberry Pi 3
(QEMU raspi3b, U-Boot; `make test-e2e-pi`). One guest is booted for the whole session
and walked through the scenarios in order (tests/e2e/test_system.py); each scenario adds a
row to the table printed at the end, and the benchmark figures are printed beside it
(`make test-e2e`, `make test-e2e-pi`, `make bench-e2e`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ci"))
import ot2qemu

VERSION_1 = "1.0.0-e2e"
VERSION_2 = "2.0.0-e2e"
VERSION_BAD = "3.0.0-e2e-unhealthy"

BOARD = os.environ.get("OT2_BOARD", "qemu")
# What differs between the boards, for the scenarios, from the board's meta: the disk
# image's name, the slots' block devices, the bootloader environment, the tools a run needs.
META = ot2qemu.board_meta(BOARD)
DISK = META["IMAGE_NAME"]
SLOT_DEVICES = {"A": META["SLOT_A_DEVICE"], "B": META["SLOT_B_DEVICE"]}
BOOT_ENV = f"/boot/firmware/{META['BOOT_ENV']}"
BOOT_ENV_BACKUP = META["BOOT_ENV_BACKUP"]
BOOT_ENV_LIST = {"grub": f"grub-editenv {BOOT_ENV} list", "uboot": "fw_printenv -c /etc/fw_env.config"}[META["BOOTLOADER"]]
TOOLS = {"qemu": ("qemu-system-x86_64", "grub-mkimage"),
         "ot2": ("qemu-system-aarch64", "aarch64-linux-gnu-gcc", "mkimage", "fdtput")}[BOARD]
COMPATIBLE = META["BOARD_COMPATIBLE"]

ROWS: list[dict] = []
FIGURES: dict[str, str] = {}
WORKDIR = ot2qemu.ROOT / "build" / ("e2e" if BOARD == "qemu" else f"e2e-{BOARD}")
RESULTS = WORKDIR / "results.json"


def record(scenario: str, expected: str, booted: str, data_intact: bool, seconds: float) -> None:
    """Adds a row to the end-of-run table (slots are "A"/"B")."""
    ROWS.append({"scenario": scenario, "expected slot": expected, "booted slot": booted,
                 "/data intact": "yes" if data_intact else "NO", "seconds": f"{seconds:.0f}"})


def figure(name: str, value: str) -> None:
    """Adds a benchmark figure to the end-of-run report."""
    FIGURES[name] = value


@pytest.fixture(scope="session")
def images() -> dict[str, Path]:
    """The three images of the run: the one flashed, an update, and one that never gets healthy."""
    for tool in ("mmdebstrap", "genimage", "ssh", *TOOLS):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run `make deps`")
    return {
        "v1": ot2qemu.build_image(VERSION_1, board=BOARD),
        "v2": ot2qemu.build_image(VERSION_2, board=BOARD),
        "bad": ot2qemu.build_image(VERSION_BAD, fault="robot-server", board=BOARD),
    }


@pytest.fixture(scope="session")
def guest(images):
    """A robot booted from a fresh copy of the v1 disk image."""
    workdir = WORKDIR / "guest"
    shutil.rmtree(workdir, ignore_errors=True)
    disk = ot2qemu.copy_disk(images["v1"], workdir, BOARD)
    robot = ot2qemu.Guest(disk, workdir, board=BOARD, firmware=images["v1"])
    yield robot
    robot.stop()
    if BOARD == "ot2":
        figure("power cycles for a USB link QEMU's DWC2 lost", str(robot.usb_link_retries))


def pytest_terminal_summary(terminalreporter):
    if not ROWS and not FIGURES:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"scenarios": ROWS, "figures": FIGURES}, indent=2))
    write = terminalreporter.write_line
    write("")
    write(f"board: {BOARD}")
    if ROWS:
        columns = list(ROWS[0])
        widths = {c: max(len(c), *(len(r[c]) for r in ROWS)) for c in columns}
        write("")
        write("  ".join(c.ljust(widths[c]) for c in columns))
        for row in ROWS:
            write("  ".join(row[c].ljust(widths[c]) for c in columns))
    if FIGURES:
        write("")
        width = max(len(k) for k in FIGURES)
        for name, value in FIGURES.items():
            write(f"{name.ljust(width)}  {value}")
