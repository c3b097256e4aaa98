#!/usr/bin/env python3
"""Flashing an SD-card image: ``ot2 flash`` with the bmap next to a whole-image ``dd``.

Builds a card image with our partition layout and sizes (genimage: 64 MiB FAT boot,
two 512 MiB root slots holding a ``--rootfs-mib`` image each, 128 MiB ext4 data; mostly
empty space, like the real image) and its bmap, then writes it in one run, in turn, to
the same target -- a loop device over a file (``losetup``; a file if there is none) --
with:

* ``ot2 flash`` through ``bmaptool copy`` (mapped blocks only), then its read-back;
* ``ot2 flash --no-bmaptool`` (the built-in bmap writer);
* ``dd if=IMAGE of=TARGET bs=4M conv=fsync`` (the whole image).

The target's cache is dropped before every run; the image stays in the page cache for
all of them.  Prints bytes written, seconds and MB/s of each and the speed-up of the
bmap write over ``dd`` (target >= 3x).

    python client/bench/bench_flash.py [--rootfs-mib 64] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cardimage import make_card_image

from update_server.benchutil import evict, warm

from ot2_client import flash as flash_mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rootfs-mib", type=float, default=64)
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-flash-", dir=args.dir))
    loop = None
    try:
        image = make_card_image(work / "image", rootfs_mib=args.rootfs_mib, slot_mib=512, boot_mib=64,
                                data_mib=128)
        size = image.stat().st_size
        backing = work / "card.bin"
        with open(backing, "wb") as f:
            f.truncate(size + (64 << 20))
        p = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
        if p.returncode == 0:
            loop = p.stdout.strip()
            target, kind = loop, f"loop device {loop} over a file"
        else:
            target, kind = str(backing), "a file"
        warm(image)  # every run reads the image from memory
        print(f"image {size / 1e6:.0f} MB ({image.name}), target: {kind}")
        rows = []
        for label, kw in (("ot2 flash (bmaptool)", {}), ("ot2 flash (built-in)", {"use_bmaptool": False})):
            evict(target)
            r = flash_mod.flash(str(image), target, force=True, **kw)
            rows.append((label, r["bytes_written"], r["write_seconds"]))
            print(f"{label:24} {r['bytes_written'] / 1e6:8.1f} MB written in {r['write_seconds']:6.2f} s "
                  f"({r['write_mb_s']:6.1f} MB/s); read-back verify {r['verify_seconds']:.2f} s")
        evict(target)
        t0 = time.monotonic()
        subprocess.run(["dd", f"if={image}", f"of={target}", "bs=4M", "conv=fsync,notrunc"], check=True,
                       capture_output=True)
        dd_s = time.monotonic() - t0
        print(f"{'dd (whole image)':24} {size / 1e6:8.1f} MB written in {dd_s:6.2f} s ({size / dd_s / 1e6:6.1f} MB/s)")
        best = min(s for _, _, s in rows)
        print(f"bmap write is {dd_s / best:.1f}x faster than dd ({rows[0][1] / size * 100:.0f}% of the image mapped)")
        return 0
    finally:
        if loop:
            subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
