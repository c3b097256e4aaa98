"""GET /usb/drives over real HTTP: the reports the image's USB drive service leaves in
/run/ot2/usbdrive (here a temporary directory), only for drives still present."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from robot_server import usb_drives
from robot_server.api import error_middleware


@pytest.fixture
def server(tmp_path):
    """The routes on a loopback port; yields (base URL, state dir, sysfs block dir)."""
    state, sys_block = tmp_path / "state", tmp_path / "sys-block"
    state.mkdir()
    sys_block.mkdir()
    app = web.Application(middlewares=[error_middleware])
    usb_drives.add_routes(app, state, sys_block)
    loop = asyncio.new_event_loop()
    sock = socket.create_server(("127.0.0.1", 0))
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.SockSite(runner, sock).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", state, sys_block
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def plug(state, sys_block, name: str, report: dict | str) -> None:
    (sys_block / name).mkdir()
    (state / f"{name}.json").write_text(report if isinstance(report, str) else json.dumps(report))


def test_lists_the_mounted_drive_and_the_one_that_could_not_be_mounted(server):
    url, state, sys_block = server
    assert get(f"{url}/usb/drives") == (200, {"drives": []})
    plug(state, sys_block, "sda1", {"device": "sda1", "fstype": "vfat", "label": "STICK", "uuid": "1234-ABCD",
                                    "size": 64 << 20, "mountpoint": "/mnt/usbdrive", "error": None})
    plug(state, sys_block, "sdb", {"device": "sdb", "fstype": None, "label": None, "uuid": None,
                                   "size": 8 << 20, "mountpoint": None,
                                   "error": "no filesystem found (unformatted or corrupt)"})
    status, body = get(f"{url}/usb/drives")
    assert status == 200
    assert [d["device"] for d in body["drives"]] == ["sda1", "sdb"]
    assert body["drives"][0]["mountpoint"] == "/mnt/usbdrive" and body["drives"][0]["size"] == 64 << 20
    assert body["drives"][1]["mountpoint"] is None and "corrupt" in body["drives"][1]["error"]
    assert get(f"{url}/usb/drives/sdb")[1]["error"].startswith("no filesystem")


def test_a_pulled_drive_is_no_longer_listed(server):
    url, state, sys_block = server
    plug(state, sys_block, "sda1", {"device": "sda1", "mountpoint": "/mnt/usbdrive", "error": None})
    (sys_block / "sda1").rmdir()          # pulled: the kernel's device is gone, the report left behind
    assert get(f"{url}/usb/drives") == (200, {"drives": []})
    status, body = get(f"{url}/usb/drives/sda1")
    assert status == 404 and body["error"] == "drive-not-found" and "sda1" in body["message"]


def test_an_unreadable_report_is_listed_with_its_error(server):
    url, state, sys_block = server
    plug(state, sys_block, "sdc1", "{not json")
    (drive,) = get(f"{url}/usb/drives")[1]["drives"]
    assert drive["device"] == "sdc1" and drive["mountpoint"] is None
    assert drive["error"].startswith("unreadable report")
