"""End-to-end fixtures: real images of the QEMU board, booted under software emulation.

One guest is booted for the whole session and walked through the scenarios in order
(tests/e2e/test_system.py); each scenario adds a row to the table printed at the end,
and the benchmark figures are printed beside it (`make test-e2e`, `make bench-e2e`).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ci"))
import ot2qemu

VERSION_1 = "1.0.0-e2e"
VERSION_2 = "2.0.0-e2e"
VERSION_BAD = "3.0.0-e2e-unhealthy"

ROWS: list[dict] = []
FIGURES: dict[str, str] = {}
RESULTS = ot2qemu.ROOT / "build" / "e2e" / "results.json"


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
    for tool in ("qemu-system-x86_64", "mmdebstrap", "genimage", "grub-mkimage", "ssh"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run `make deps`")
    return {
        "v1": ot2qemu.build_image(VERSION_1),
        "v2": ot2qemu.build_image(VERSION_2),
        "bad": ot2qemu.build_image(VERSION_BAD, fault="robot-server"),
    }


@pytest.fixture(scope="session")
def guest(images):
    """A robot booted from a fresh copy of the v1 disk image."""
    workdir = ot2qemu.ROOT / "build" / "e2e" / "guest"
    shutil.rmtree(workdir, ignore_errors=True)
    disk = ot2qemu.copy_disk(images["v1"] / "disk.img", workdir / "disk.img")
    robot = ot2qemu.Guest(disk, workdir)
    yield robot
    robot.stop()


def pytest_terminal_summary(terminalreporter):
    if not ROWS and not FIGURES:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"scenarios": ROWS, "figures": FIGURES}, indent=2))
    write = terminalreporter.write_line
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
