"""Mounts a USB drive's filesystem at /mnt/usbdrive and reports what happened.

Run by ot2-usbdrive@<kernel name>.service, which udev starts for each filesystem of a USB
mass-storage device (/usr/lib/udev/rules.d/80-ot2-usbdrive.rules) and which stops, and so
unmounts, when the device goes away:

    python3 -I ot2_usbdrive.py mount sdb1
    python3 -I ot2_usbdrive.py unmount sdb1

FAT, exFAT and ext2/3/4 are mounted ``nodev,nosuid,noatime`` (FAT with ``flush``: writes
reach the stick when a file is closed). One drive at a time is mounted; others are reported.
Every attempt leaves a report in ``/run/ot2/usbdrive/<name>.json`` (read by the robot
server's ``GET /usb/drives``): ``{"device", "fstype", "label", "uuid", "size",
"mountpoint", "error"}``, ``size`` in bytes, ``mountpoint`` null and ``error`` a sentence
when the drive is not mounted. A drive that cannot be mounted (no filesystem, an unknown
one, a corrupt one) exits with status 1 and touches nothing else.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MOUNTPOINT = "/mnt/usbdrive"
STATE_DIR = "/run/ot2/usbdrive"
# Filesystem type (blkid's name) -> mount options besides the common ones.
FILESYSTEMS = {
    "vfat": "flush,utf8,uid=0,gid=0,fmask=0022,dmask=0022",
    "exfat": "uid=0,gid=0,fmask=0022,dmask=0022",
    "ext4": "errors=remount-ro",
    "ext3": "errors=remount-ro",
    "ext2": "errors=remount-ro",
}
COMMON_OPTIONS = "nodev,nosuid,noatime"


class NotMountable(Exception):
    """The device holds no filesystem we mount, or mounting it failed; the message says why."""


def probe(device: str) -> dict[str, str]:
    """The filesystem on ``device`` (a block device or an image file) as blkid's low-level
    probe sees it: ``{"TYPE": "vfat", "LABEL": ..., "UUID": ...}``; ``{}`` when none is found."""
    out = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True)
    if out.returncode == 2:     # nothing found
        return {}
    if out.returncode != 0:
        raise NotMountable(f"cannot read {device}: {out.stderr.strip() or 'blkid failed'}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def mounted_source(mountpoint: str = MOUNTPOINT, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The device mounted at ``mountpoint`` ("/dev/sdb1"), or None."""
    for line in Path(mountinfo).read_text().splitlines():
        fields = line.split()
        if fields[4] == mountpoint:
            return fields[fields.index("-") + 2]
    return None


def size_of(name: str) -> int | None:
    """The size of block device ``name`` in bytes (sysfs counts 512-byte sectors)."""
    try:
        return int(Path(f"/sys/class/block/{name}/size").read_text()) * 512
    except (OSError, ValueError):
        return None


def write_report(state_dir: Path, name: str, report: dict) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{name}.json"
    tmp.write_text(json.dumps(report) + "\n")
    tmp.replace(state_dir / f"{name}.json")


def mount(name: str, device: str, mountpoint: str = MOUNTPOINT) -> dict:
    """Mounts ``device`` at ``mountpoint`` and returns the report (see the module's docstring).

    Raises NotMountable (with the report as ``args[1]``) when it is not mounted.
    """
    report = {"device": name, "fstype": None, "label": None, "uuid": None,
              "size": size_of(name), "mountpoint": None, "error": None}
    try:
        fs = probe(device)
        report.update(fstype=fs.get("TYPE"), label=fs.get("LABEL"), uuid=fs.get("UUID"))
        if not fs.get("TYPE"):
            raise NotMountable("no filesystem found (unformatted or corrupt)")
        if fs["TYPE"] not in FILESYSTEMS:
            raise NotMountable(f"filesystem {fs['TYPE']} is not supported "
                               f"(supported: {', '.join(sorted(FILESYSTEMS))})")
        holder = mounted_source(mountpoint)
        if holder:
            raise NotMountable(f"{mountpoint} already holds {holder}; remove it first")
        options = f"{COMMON_OPTIONS},{FILESYSTEMS[fs['TYPE']]}"
        done = subprocess.run(["mount", "-t", fs["TYPE"], "-o", options, device, mountpoint],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise NotMountable(f"mounting failed (corrupt filesystem?): "
                               f"{done.stderr.strip() or f'mount exit {done.returncode}'}")
    except NotMountable as exc:
        report["error"] = str(exc)
        raise NotMountable(str(exc), report) from None
    report["mountpoint"] = mountpoint
    return report


def unmount(name: str, device: str, mountpoint: str = MOUNTPOINT) -> None:
    """Unmounts ``mountpoint`` if ``device`` is what it holds. A drive that was pulled, or
    files still open on it, get a lazy unmount: the mount goes away at once, the kernel
    lets go of it when the last file is closed."""
    if mounted_source(mountpoint) != device:
        return
    if subprocess.run(["umount", mountpoint], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", mountpoint], check=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("mount", "unmount") or "/" in argv[1]:
        print("usage: ot2_usbdrive.py mount|unmount KERNEL_NAME", file=sys.stderr)
        return 2
    action, name = argv
    device, state_dir = f"/dev/{name}", Path(STATE_DIR)
    if action == "unmount":
        unmount(name, device)
        (state_dir / f"{name}.json").unlink(missing_ok=True)
        print(f"{device}: unmounted")
        return 0
    try:
        report = mount(name, device)
    except NotMountable as exc:
        write_report(state_dir, name, exc.args[1])
        print(f"{device}: not mounted: {exc.args[0]}", file=sys.stderr)
        return 1
    write_report(state_dir, name, report)
    print(f"{device}: {report['fstype']} {report['label'] or ''} mounted at {report['mountpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
