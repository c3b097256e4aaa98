"""Test rig: real update servers (the ``update_server`` app) on loopback, file-backed
slots, real grubenv files (grub-editenv), a real bundle signed by a trusted key, a
"reboot" that runs the bootloader's algorithm, and a TCP proxy that cuts uploads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from aiohttp import web

from update_server import bundle
from update_server.api import UpdateServer
from update_server.config import load_config

COMPATIBLE = "ot2-test"
SLOT_SIZE = 16 << 20
HERE = Path(__file__).parent


def image_bytes(version: str, size: int) -> bytes:
    """A rootfs stand-in: a JSON header line (what fake_reboot reads), then noise."""
    header = json.dumps({"version": version, "compatible": COMPATIBLE, "board": "test",
                         "build_time": "2024-01-01T00:00:00Z"}).encode() + b"\n"
    out = bytearray(header)
    block = hashlib.sha256(version.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 128
    return bytes(out[:size])


class Loop:
    """One asyncio loop in a thread for every server and proxy of a test."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Robot:
    """A robot in a directory: slots, grubenv, cmdline, boot id, /data, its server."""

    def __init__(self, root: Path, keyring: Path, loop: Loop, **config):
        self.root = root
        self.loop = loop
        (root / "boot").mkdir(parents=True)
        for slot in "AB":
            with open(root / f"slot-{slot}.img", "wb") as f:
                f.truncate(SLOT_SIZE)
        with open(root / "slot-A.img", "r+b") as f:
            f.write(image_bytes("1.0.0", 1 << 20))
        for name in ("grubenv", "grubenv.bak"):
            subprocess.run(["grub-editenv", str(root / "boot" / name), "set", "BOOT_ORDER=A B",
                            "BOOT_A_LEFT=3", "BOOT_B_LEFT=3"], check=True)
        (root / "cmdline").write_text("root=/dev/vda2 ot2.slot=A\n")
        (root / "boot_id").write_text(str(uuid.uuid4()) + "\n")
        (root / "version.json").write_text(json.dumps({"version": "1.0.0", "compatible": COMPATIBLE}))
        (root / "machine-id").write_text(uuid.uuid4().hex + "\n")
        overrides = {
            "listen": "127.0.0.1",
            "data_dir": str(root / "data"),
            "keyring": str(keyring),
            "boot_backend": "grub",
            "grubenv": [str(root / "boot" / "grubenv"), str(root / "boot" / "grubenv.bak")],
            "cmdline": str(root / "cmdline"),
            "boot_id_file": str(root / "boot_id"),
            "machine_id_file": str(root / "machine-id"),
            "version_file": str(root / "version.json"),
            "reboot_command": [sys.executable, str(HERE / "fake_reboot.py"), str(root)],
            "chunk_size": 256 * 1024,
            "slots": {"A": str(root / "slot-A.img"), "B": str(root / "slot-B.img")},
        }
        overrides.update(config)
        self.config = load_config(None, overrides)
        self.server = UpdateServer(self.config)
        self.port = loop.run(self._start())
        self.address = f"127.0.0.1:{self.port}"

    async def _start(self) -> int:
        self.runner = web.AppRunner(self.server.make_app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.listen, 0)
        await site.start()
        return self.runner.addresses[0][1]

    def stop(self):
        self.loop.run(self.runner.cleanup())

    def health(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"http://{self.address}/health", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict | None = None) -> tuple:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://{self.address}{path}", method="POST",
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


class CuttingProxy:
    """TCP proxy to ``port`` that closes both sides once ``limit`` bytes went upstream
    on one connection (a robot dropping the connection mid-upload)."""

    def __init__(self, loop: Loop, port: int, limit: int):
        self.loop, self.upstream, self.limit = loop, port, limit
        self.cuts = 0
        self.port = loop.run(self._start())
        self.address = f"127.0.0.1:{self.port}"

    async def _start(self):
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        sent = 0

        async def down():
            try:
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        task = asyncio.ensure_future(down())
        try:
            while data := await reader.read(65536):
                sent += len(data)
                if sent > self.limit:
                    self.cuts += 1
                    break
                up_writer.write(data)
                await up_writer.drain()
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
            task.cancel()

    def stop(self):
        self.server.close()


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    trusted = bundle.generate_private_key()
    untrusted = bundle.generate_private_key()
    keyring = bundle.write_keyring(d / "keyring", {"release": trusted})
    (d / "dev.key").write_bytes(bundle.private_key_pem(trusted))
    return {"trusted": trusted, "untrusted": untrusted, "keyring": keyring, "dir": d}


def write_bundle(path: Path, key, version: str, size: int = 4 << 20, compatible: str = COMPATIBLE) -> Path:
    img = path.with_suffix(".rootfs")
    img.write_bytes(image_bytes(version, size))
    with open(path, "wb") as out:
        bundle.write_bundle(out, key, bundle.make_certificate(key), compatible, ["1.0"], version, {"rootfs": str(img)})
    img.unlink()
    return path


@pytest.fixture(scope="session")
def good_bundle(keys, tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("bundles") / "system-2.0.0.ot2", keys["trusted"], "2.0.0")


@pytest.fixture(autouse=True)
def own_config_dir(tmp_path, monkeypatch):
    """``ot2``'s token file in the test's directory, never the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("OT2_TOKEN", raising=False)
    return tmp_path / "config"


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture
def fleet(tmp_path, keys, loop, monkeypatch):
    """``fleet(n)`` -> n running robots."""
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    robots = []

    def make(n=1, **config):
        for _ in range(n):
            robots.append(Robot(tmp_path / f"robot{len(robots)}", keys["keyring"], loop, **config))
        return robots[-n:]

    yield make
    for r in robots:
        r.stop()


@pytest.fixture
def robot(fleet):
    return fleet(1)[0]
