"""Test rig: file-backed slots, real boot env files, real keys, the real app on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from update_server import bundle
from update_server.api import UpdateServer
from update_server.bootctl import BootControl, from_config
from update_server.bootmodel import BootEnv, simulate_boot
from update_server.config import load_config
from update_server.connlimit import GuardedSite
from update_server.netlab import enter_netns

COMPATIBLE = "ot2-test"
SLOT_SIZE = 32 << 20
MARKER = b"slot A: the running system\n" * 4096


# ---------------------------------------------------------------------------------------
# keys and bundles


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """A trusted ECDSA P-256 key, a trusted RSA key, an untrusted key, and the keyring dir."""
    d = tmp_path_factory.mktemp("keys")
    trusted = bundle.generate_private_key("ecdsa-p256")
    trusted_rsa = bundle.generate_private_key("rsa")
    untrusted = bundle.generate_private_key("ecdsa-p256")
    keyring = bundle.write_keyring(d / "keyring", {"release": trusted, "release-rsa": trusted_rsa})
    (keyring / "README").write_text("not a key\n")
    return {"trusted": trusted, "trusted_rsa": trusted_rsa, "untrusted": untrusted, "keyring": keyring}


def make_image(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible-looking image bytes."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def make_bundle(key, image: bytes, compatible: str = COMPATIBLE, version: str = "2.0.0",
                revisions=("1.0",)) -> bytes:
    """A valid bundle (bytes) built with the library's writer."""
    with io.BytesIO() as out:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"img-{uuid.uuid4().hex}"
        tmp.write_bytes(image)
        try:
            bundle.write_bundle(out, key, bundle.make_certificate(key), compatible, revisions, version,
                                {"rootfs": str(tmp)})
        finally:
            tmp.unlink()
        return out.getvalue()


def raw_bundle(members: list, end: bool = True) -> bytes:
    """A cpio stream from ``[(name, bytes)]`` exactly as given (for malformed bundles),
    with the trailer when ``end``."""
    out = bytearray()
    for inode, (name, data) in enumerate(members, 1):
        out += bundle.cpio_header(name, len(data), 0, inode) + data + bytes(bundle.padding(len(data)))
    if end:
        out += bundle.cpio_header(bundle.TRAILER_NAME, 0, 0, 0)
    return bytes(out)


def sign(key, manifest: bytes) -> bytes:
    """The ``sw-description.sig`` of ``manifest`` by ``key`` (a certificate made for it)."""
    return bundle.sign_manifest(key, bundle.make_certificate(key), manifest)


def manifest_for(image: bytes, compatible: str = COMPATIBLE, version: str = "2.0.0", size=None) -> bytes:
    img = bundle.Image("rootfs", "rootfs.img", len(image) if size is None else size,
                       hashlib.sha256(image).hexdigest())
    return bundle.make_manifest(compatible, ["1.0"], version, [img])


# ---------------------------------------------------------------------------------------
# HTTP


@dataclass
class Response:
    status: int
    body: object
    raw: bytes


class Client:
    """Minimal HTTP/1.1 client (stdlib) talking to host:port (127.0.0.1 by default);
    ``token`` is sent as ``Authorization: Bearer``, ``source`` is the local address."""

    def __init__(self, port: int, host: str = "127.0.0.1", token: str | None = None,
                 source: str | None = None):
        self.port = port
        self.host = host
        self.token = token
        self.source = source

    def request(self, method, path, body=None, json_body=None, headers=None, timeout=60) -> Response:
        headers = dict(headers or {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout,
                                          source_address=(self.source, 0) if self.source else None)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        return Response(resp.status, data, raw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def begin(self) -> str:
        r = self.post("/server/update/begin")
        assert r.status == 201, r.body
        return r.body["token"]

    def upload(self, token, data: bytes, content_type="application/octet-stream") -> Response:
        return self.post(f"/server/update/{token}/file", body=data,
                         headers={"Content-Type": content_type})

    def start_upload(self, token, data: bytes) -> socket.socket:
        """A raw connection that has sent the headers and the first half of the streamed
        upload of ``data``; the caller sends the rest (or not) and reads the answer."""
        sock = socket.create_connection((self.host, self.port))
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        sock.sendall(
            f"POST /server/update/{token}/file HTTP/1.1\r\nHost: robot\r\n{auth}"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data[: len(data) // 2]
        )
        return sock


class ServerThread:
    """The real aiohttp app (with its connection guard) on an ephemeral port of
    ``config.listen``, in a thread with its own loop; in network namespace ``netns`` if given."""

    def __init__(self, config, netns: str | None = None):
        self.server = UpdateServer(config)
        self.loop = asyncio.new_event_loop()

        def run():
            if netns:
                enter_netns(netns)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(config.listen), self.loop).result(30)

    async def _start(self, host) -> int:
        self.runner = self.server.guard.runner(self.server.make_app(), access_log=None)
        await self.runner.setup()
        await GuardedSite(self.runner, host, 0, self.server.guard).start()
        return self.runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------------------------------
# the machine


def make_uboot_env(directory: Path, redundant: bool = False, text: str | None = None) -> Path:
    """U-Boot env file(s) made by mkenvimage and a fw_env.config naming them."""
    if text is None:
        text = "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n"
    src = directory / "env.txt"
    src.write_text(text)
    names = ["uboot.env", "uboot-redund.env"] if redundant else ["uboot.env"]
    lines = []
    for name in names:
        args = ["mkenvimage", "-s", "0x4000", "-o", str(directory / name), str(src)]
        if redundant:
            args.insert(1, "-r")
        subprocess.run(args, check=True)
        lines.append(f"{directory / name} 0x0 0x4000\n")
    config = directory / "fw_env.config"
    config.write_text("".join(lines))
    return config


def make_uboot_env_with_backup(directory: Path) -> list:
    """Primary and backup single-copy env files, each named by its own fw_env config."""
    configs = []
    for name in ("primary", "backup"):
        d = directory / name
        d.mkdir()
        configs.append(str(make_uboot_env(d)))
    return configs


def make_grub_env(directory: Path) -> list:
    files = [directory / "grubenv", directory / "grubenv.bak"]
    for f in files:
        subprocess.run(["grub-editenv", str(f), "set", "BOOT_ORDER=A B",
                        "BOOT_A_LEFT=3", "BOOT_B_LEFT=3"], check=True)
    return [str(f) for f in files]


def bootloader_boots(boot: BootControl, loadable: frozenset[str] = frozenset("AB")) -> str | None:
    """Play the bootloader once on ``boot``'s env: :func:`~update_server.bootmodel.simulate_boot`
    on the copies as the real storage reads them (primary, backup), its writes stored
    back through that storage.  Returns the slot booted (the caller sets the cmdline)."""
    copies = [*boot.storage.load(), None][:2]
    outcome = simulate_boot(*copies, loadable=loadable)
    boot.storage.store(outcome.saved)
    return outcome.slot


class Rig:
    """A robot in a directory: slots, boot env, cmdline, boot id, data dir, server."""

    def __init__(self, root: Path, keyring: Path, backend: str = "uboot", **config):
        self.root = root
        root.joinpath("boot").mkdir()
        self.slots = {}
        for slot in "AB":
            path = root / f"slot-{slot}.img"
            with open(path, "wb") as f:
                f.truncate(SLOT_SIZE)
            self.slots[slot] = path
        with open(self.slots["A"], "r+b") as f:
            f.write(MARKER)
        self.cmdline = root / "cmdline"
        self.boot_id_file = root / "boot_id"
        self.reboot_marker = root / "rebooted"
        self.set_boot("A")
        self.version_file = root / "version.json"
        self.set_version("1.0.0")
        (root / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
        overrides = {
            "listen": "127.0.0.1",
            "data_dir": str(root / "data"),
            "keyring": str(keyring),
            "boot_backend": backend,
            "cmdline": str(self.cmdline),
            "boot_id_file": str(self.boot_id_file),
            "machine_id_file": str(root / "machine-id"),
            "version_file": str(self.version_file),
            "reboot_command": ["touch", str(self.reboot_marker)],
            "chunk_size": 64 * 1024,
            "slots": {"A": str(self.slots["A"]), "B": str(self.slots["B"])},
        }
        if backend == "uboot":
            overrides["fw_env_config"] = str(make_uboot_env(root / "boot"))
        elif backend == "uboot-backup":
            overrides["fw_env_config"] = make_uboot_env_with_backup(root / "boot")
            overrides["boot_backend"] = "uboot"
        else:
            overrides["grubenv"] = make_grub_env(root / "boot")
        overrides["revision"] = "1.0"    # as the image's board.conf says (BOARD_REVISION)
        overrides.update(config)
        self.config = load_config(None, overrides)
        self.boot = from_config(self.config)
        self.server = None
        self.client = None

    def set_version(self, version: str) -> None:
        """The booted rootfs' /etc/ot2/version.json (each slot carries its own)."""
        self.version_file.write_text(json.dumps(
            {"version": version, "compatible": COMPATIBLE, "build_time": "2024-01-01T00:00:00Z",
             "board": "test"}))

    def set_boot(self, slot: str) -> None:
        """Simulate a (re)boot into ``slot``: new cmdline, new boot id."""
        self.cmdline.write_text(f"console=ttyS0 root=/dev/vda{2 if slot == 'A' else 3} ot2.slot={slot} ot2.serial=rig-0001 quiet\n")
        self.boot_id_file.write_text(str(uuid.uuid4()) + "\n")

    def start(self) -> Client:
        self.server = ServerThread(self.config)
        self.client = Client(self.server.port)
        return self.client

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None

    def restart(self) -> Client:
        self.stop()
        return self.start()

    def env(self) -> BootEnv:
        return self.boot.read()

    def bootloader_boots(self, version: str | None = None,
                         loadable: frozenset[str] = frozenset("AB")) -> str | None:
        """A (re)boot through the bootloader model (:func:`bootloader_boots`): the slot it
        boots is on the cmdline (new boot id) and carries ``version`` (unchanged when None).
        Returns that slot."""
        slot = bootloader_boots(self.boot, loadable)
        if slot:
            self.set_boot(slot)
        if version:
            self.set_version(version)
        return slot

    def slot_a_intact(self) -> bool:
        with open(self.slots["A"], "rb") as f:
            return f.read(len(MARKER)) == MARKER

    def slot_bytes(self, slot: str, size: int) -> bytes:
        with open(self.slots[slot], "rb") as f:
            return f.read(size)


@pytest.fixture
def rig(tmp_path, keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    r = Rig(tmp_path, keys["keyring"])
    r.start()
    yield r
    r.stop()


@pytest.fixture(params=["uboot", "uboot-backup", "grub"])
def any_rig(request, tmp_path, keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    r = Rig(tmp_path, keys["keyring"], backend=request.param)
    r.start()
    yield r
    r.stop()
