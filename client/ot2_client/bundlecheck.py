"""Local verification of a bundle before anything is sent, with the update server's code.

With a keyring (``--keyring DIR``, ``$OT2_KEYRING`` or ``~/.config/ot2/keyring``) the
bundle gets exactly the robot's check (``update-server bundle verify``): signature by a
trusted key, manifest, image size and SHA-256, archive end.  Without one, everything but
the trust decision is checked (the signature against the certificate it carries; the
robot checks the key against its own keyring).
"""

from __future__ import annotations

import asyncio
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


def verify_bundle(path: str, keyring_dir: str | None) -> BundleInfo:
    """Verify the bundle at ``path``; :class:`UsageError` (code = the API's) if it fails."""
    try:
        size = os.path.getsize(path)
        keyring = bundle.load_keyring(keyring_dir) if keyring_dir else None
        with open(path, "rb") as f:
            head = asyncio.run(bundle.verify_stream(f, keyring, None))  # the robot's own check
    except OSError as e:
        raise UsageError("unreadable", f"{path}: {e.strerror or e}") from None
    except UpdateError as e:
        raise UsageError(e.code, f"{path}: {e.message}") from None
    manifest, image = head.manifest, head.image
    return BundleInfo(path, size, manifest.compatible, manifest.version, image.size,
                      image.sha256, head.key_id, keyring is not None)
