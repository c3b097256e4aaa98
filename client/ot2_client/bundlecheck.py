"""Local verification of a bundle before anything is sent, with the update server's code.

With a keyring (``--keyring DIR``, ``$OT2_KEYRING`` or ``~/.config/ot2/keyring``) the
bundle gets exactly the robot's check (``update-server bundle verify``): signature by a
trusted key, manifest, image size and SHA-256, archive end.  Without one, everything but
the trust decision is checked (the signature member must be present and well-formed;
the robot checks it against its own keyring).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path

from update_server import bundle
from update_server.errors import UpdateError

from .errors import UsageError

DEFAULT_KEYRING = Path("~/.config/ot2/keyring").expanduser()


@dataclass
class BundleInfo:
    path: str
    size: int  # bytes of the bundle file
    compatible: str
    version: str
    image_size: int
    image_sha256: str
    key_id: str
    signature_checked: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def default_keyring() -> str | None:
    env = os.environ.get("OT2_KEYRING")
    if env:
        return env
    return str(DEFAULT_KEYRING) if DEFAULT_KEYRING.is_dir() else None


async def _check_without_keyring(f) -> tuple:
    """Manifest, signature member shape, image size and hash, archive end (no trust)."""
    source = bundle.file_source(f)
    info = await bundle.read_header(source, bundle.MANIFEST_NAME)
    if info is None or info.name != bundle.MANIFEST_NAME or info.size > bundle.MAX_MANIFEST_SIZE:
        raise UpdateError("bad-manifest", f"the bundle does not start with {bundle.MANIFEST_NAME}")
    raw = await source.read_exactly(info.size, bundle.MANIFEST_NAME)
    await source.skip(bundle.padding(info.size), bundle.MANIFEST_NAME)
    info = await bundle.read_header(source, bundle.SIGNATURE_NAME)
    if info is None or info.name != bundle.SIGNATURE_NAME:
        raise UpdateError("unsigned", f"{bundle.MANIFEST_NAME} is not followed by {bundle.SIGNATURE_NAME}")
    if info.size > bundle.MAX_SIGNATURE_SIZE:
        raise UpdateError("bad-signature", "signature member too large")
    sig_raw = await source.read_exactly(info.size, bundle.SIGNATURE_NAME)
    await source.skip(bundle.padding(info.size), bundle.SIGNATURE_NAME)
    try:
        sig = json.loads(sig_raw)
        kid = sig["key_id"]
        if not isinstance(kid, str) or sig.get("algorithm") not in (bundle.ALG_ED25519, bundle.ALG_ECDSA_P256):
            raise ValueError("bad key id or algorithm")
    except (ValueError, KeyError, TypeError) as e:
        raise UpdateError("bad-signature", f"malformed {bundle.SIGNATURE_NAME}: {e}") from None
    manifest = bundle.parse_manifest(raw)
    image = manifest.rootfs
    info = await bundle.read_header(source, image.filename)
    if info is None or info.name != image.filename or info.size != image.size:
        raise UpdateError("bad-bundle", f"member {image.filename} missing or of the wrong size")
    digest = await bundle.read_image_sha256(source, image)
    if digest != image.sha256:
        raise UpdateError("hash-mismatch", f"{image.filename}: sha256 {digest}, manifest says {image.sha256}")
    await bundle.read_tail(source, image)
    return manifest, kid.lower()


def verify_bundle(path: str, keyring_dir: str | None) -> BundleInfo:
    """Verify the bundle at ``path``; :class:`UsageError` (code = the API's) if it fails."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if keyring_dir:
                keyring = bundle.load_keyring(keyring_dir)
                head = asyncio.run(bundle.verify_stream(f, keyring, None))  # the robot's own check
                manifest, kid, checked = head.manifest, head.key_id, True
            else:
                manifest, kid = asyncio.run(_check_without_keyring(f))
                checked = False
    except OSError as e:
        raise UsageError("unreadable", f"{path}: {e.strerror or e}") from None
    except UpdateError as e:
        raise UsageError(e.code, f"{path}: {e.message}") from None
    image = manifest.rootfs
    return BundleInfo(path, size, manifest.compatible, manifest.version, image.size,
                      image.sha256, kid, checked)
