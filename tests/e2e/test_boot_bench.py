"""`make bench-boot`: what each board's boot chain costs under emulation.

For each board, the v1 image's cold boot to both servers healthy through its firmware and
bootloader (QEMU board: OVMF, GRUB and grub.cfg; Pi 3: U-Boot and boot.scr), next to a bare
direct-kernel boot of the same root on the same machine type: QEMU loads the slot's own
kernel and initramfs (read out of rootfs.squashfs) with the command line the bootloader
gave (the guest's /proc/cmdline), so only the boot chain differs. Each boot starts
from a fresh copy of the disk image. The figures and their ratio are printed at the end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

import ot2qemu
from conftest import VERSION_1, figure

pytestmark = pytest.mark.timeout(3600)

CHAIN = {"qemu": "OVMF + GRUB", "ot2": "U-Boot + boot.scr"}


def cold_boot(image, workdir, board: str, qemu_env: dict[str, str] | None = None,
              cmdline: str | None = None) -> tuple[float, str]:
    """Boots a fresh copy of the image; seconds to both servers healthy, and the kernel
    command line the guest booted with (its /proc/cmdline, over SSH). `cmdline`'s ot2.serial= is made this guest's.
    A boot in which QEMU's DWC2 lost the Pi's USB link (ot2qemu.Guest) is not a figure:
    it is done again, up to three times."""
    for _ in range(3):
        seconds, shown, lost = _boot_once(image, workdir, board, qemu_env, cmdline)
        if not lost:
            return seconds, shown
    pytest.fail("QEMU's DWC2 lost the USB link on three boots in a row")


def _boot_once(image, workdir, board, qemu_env, cmdline) -> tuple[float, str, bool]:
    shutil.rmtree(workdir, ignore_errors=True)
    disk = ot2qemu.copy_disk(image, workdir, board)
    guest = ot2qemu.Guest(disk, workdir, board=board, firmware=image, qemu_env=dict(qemu_env or {}))
    if cmdline is not None:
        guest.qemu_env["OT2_APPEND"] = re.sub(r"ot2\.serial=\S*", f"ot2.serial={guest.serial}", cmdline)
    try:
        started = time.monotonic()
        guest.boot()
        guest.wait_healthy(timeout=1200)
        seconds = time.monotonic() - started
        guest.request("update", "POST", "/server/ssh_keys", {"key": guest.ensure_ssh_key()})
        return seconds, guest.ssh("cat /proc/cmdline").stdout.strip(), guest.usb_link_retries > 0
    finally:
        guest.stop()


@pytest.mark.parametrize("board", ["qemu", "ot2"])
def test_cold_boot_next_to_direct_kernel_boot(board):
    image = ot2qemu.build_image(VERSION_1, board=board)
    workdir = ot2qemu.ROOT / "build" / "bench-boot" / board
    chained, cmdline = cold_boot(image, workdir / "chain", board)

    slot = workdir / "slot"
    shutil.rmtree(slot, ignore_errors=True)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(slot), str(image / "rootfs.squashfs"), "boot"],
                   check=True, capture_output=True)
    direct_env = {"OT2_KERNEL": str((slot / "boot" / "vmlinuz").resolve()),
                  "OT2_INITRD": str((slot / "boot" / "initrd.img").resolve())}
    direct, direct_cmdline = cold_boot(image, workdir / "direct", board, direct_env, cmdline)
    assert direct_cmdline.split("ot2.serial=")[0] == cmdline.split("ot2.serial=")[0]

    figure(f"{board}: cold boot to healthy through {CHAIN[board]}", f"{chained:.1f} s")
    figure(f"{board}: cold boot to healthy, direct kernel boot", f"{direct:.1f} s")
    figure(f"{board}: boot chain / direct kernel boot", f"{chained / direct:.2f}")
