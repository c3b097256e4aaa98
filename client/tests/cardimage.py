"""A small SD-card image laid out like ours (MBR, 4 MiB aligned: FAT boot partition,
two root slots, data), built with genimage as the image build does, plus its bmap
(``bmaptool create``) -- mostly empty space, like a real card image."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

GENIMAGE = """
image boot.vfat {{
	vfat {{ label = "BOOT" file grubenv {{ image = "grubenv" }} }}
	size = {boot}M
}}
image data.ext4 {{
	ext4 {{ label = "data" use-mke2fs = true }}
	empty = true
	size = {data}M
}}
image disk.img {{
	hdimage {{ partition-table-type = "mbr" align = 4M }}
	partition boot {{ partition-type = 0xc bootable = true image = "boot.vfat" }}
	partition rootfs-a {{ partition-type = 0x83 image = "rootfs.squashfs" size = {slot}M }}
	partition rootfs-b {{ partition-type = 0x83 image = "rootfs.squashfs" size = {slot}M }}
	partition data {{ partition-type = 0x83 image = "data.ext4" }}
}}
"""


def have_tools() -> bool:
    return all(shutil.which(t) for t in ("genimage", "bmaptool", "mcopy", "mkfs.vfat", "mke2fs"))


def make_card_image(directory: Path, rootfs_mib: float = 3, slot_mib: int = 16, boot_mib: int = 8,
                    data_mib: int = 8) -> Path:
    """``directory/disk.img`` and ``disk.img.bmap``; returns the image path."""
    directory.mkdir(parents=True, exist_ok=True)
    inp = directory / "in"
    inp.mkdir(exist_ok=True)
    (inp / "grubenv").write_bytes(b"# GRUB Environment Block\n".ljust(1024, b"#"))
    out = bytearray()
    block = b"seed"
    while len(out) < rootfs_mib * (1 << 20):
        block = hashlib.sha256(block).digest()
        out += block * 64
    (inp / "rootfs.squashfs").write_bytes(bytes(out[: int(rootfs_mib * (1 << 20))]))
    cfg = directory / "genimage.cfg"
    cfg.write_text(GENIMAGE.format(boot=boot_mib, data=data_mib, slot=slot_mib))
    root = directory / "root"
    root.mkdir(exist_ok=True)
    shutil.rmtree(directory / "tmp", ignore_errors=True)
    subprocess.run(["genimage", "--rootpath", str(root), "--tmppath", str(directory / "tmp"),
                    "--inputpath", str(inp), "--outputpath", str(directory), "--config", str(cfg)],
                   check=True, capture_output=True)
    image = directory / "disk.img"
    subprocess.run(["bmaptool", "create", "-o", str(image) + ".bmap", str(image)], check=True,
                   capture_output=True)
    return image
