"""What Jupyter costs: the image without it (`--no-jupyter`), its squashfs size and cold
boot time, printed beside test_system's cold boot of the default image (`make bench-boot`)."""

from __future__ import annotations

import shutil
import time

import pytest

import ot2qemu
from conftest import VERSION_1, figure

pytestmark = pytest.mark.timeout(1800)


def test_cold_boot_without_jupyter():
    image = ot2qemu.build_image(VERSION_1 + "-nojupyter", jupyter=False)
    squashfs = (image / "rootfs.squashfs").stat().st_size
    figure("image without Jupyter: rootfs.squashfs", f"{squashfs / 2**20:.1f} MiB")
    workdir = ot2qemu.ROOT / "build" / "e2e" / "no-jupyter"
    shutil.rmtree(workdir, ignore_errors=True)
    guest = ot2qemu.Guest(ot2qemu.copy_disk(image, workdir), workdir)
    try:
        started = time.monotonic()
        guest.boot()
        health = guest.wait_healthy(timeout=600)
        figure("cold boot without Jupyter to both servers healthy", f"{time.monotonic() - started:.1f} s")
        assert health["version"] == VERSION_1 + "-nojupyter"
    finally:
        guest.stop()
