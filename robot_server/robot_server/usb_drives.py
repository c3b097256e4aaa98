"""``GET /usb/drives``: the USB drives plugged into the robot, mounted at /mnt/usbdrive or not.

Our extra, not an OT-2 endpoint. The image mounts drives itself (udev starts
ot2-usbdrive@<kernel name>.service, overlay/usr/lib/ot2/python/ot2_usbdrive.py), which
leaves one JSON report per drive in ``/run/ot2/usbdrive/<name>.json``; this module only
reads them, so the server needs no privilege for it and a bad drive cannot stall it.
Reports of drives that are gone (no ``/sys/class/block/<name>``) are not listed.
"""
from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from .errors import ApiError

STATE_DIR = "/run/ot2/usbdrive"
SYS_BLOCK = "/sys/class/block"
FIELDS = ("device", "fstype", "label", "uuid", "size", "mountpoint", "error")


def list_drives(state_dir: str | Path = STATE_DIR, sys_block: str | Path = SYS_BLOCK) -> list[dict]:
    """The reports of the drives present, sorted by device name.

    Each: ``{"device": "sdb1", "fstype": "vfat", "label": "STICK", "uuid": "1234-ABCD",
    "size": 67108864 (bytes), "mountpoint": "/mnt/usbdrive" or None, "error": None or why
    it is not mounted}``. A report that cannot be read or parsed is listed with its error.
    """
    drives = []
    for path in sorted(Path(state_dir).glob("*.json")):
        name = path.stem
        if not (Path(sys_block) / name).exists():
            continue
        try:
            raw = json.loads(path.read_text())
            drive = {key: raw.get(key) for key in FIELDS}
        except (OSError, ValueError, AttributeError) as exc:
            drive = dict.fromkeys(FIELDS)
            drive["error"] = f"unreadable report: {exc}"
        drive["device"] = name
        drives.append(drive)
    return drives


def add_routes(app: web.Application, state_dir: str | Path = STATE_DIR,
               sys_block: str | Path = SYS_BLOCK) -> None:
    """Adds ``GET /usb/drives`` -> ``{"drives": [...]}`` (see :func:`list_drives`) and
    ``GET /usb/drives/{device}`` -> one drive, or 404 ``drive-not-found`` (:mod:`.errors`;
    ``api.error_middleware`` answers it)."""

    async def drives(request: web.Request) -> web.Response:
        return web.json_response({"drives": list_drives(state_dir, sys_block)})

    async def drive(request: web.Request) -> web.Response:
        name = request.match_info["device"]
        for found in list_drives(state_dir, sys_block):
            if found["device"] == name:
                return web.json_response(found)
        raise ApiError("drive-not-found", f"no USB drive {name!r} is plugged in")

    app.router.add_get("/usb/drives", drives)
    app.router.add_get("/usb/drives/{device}", drive)
