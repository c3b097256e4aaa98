"""SSH public keys in ``data_dir/ssh/authorized_keys`` (dir 0700, file 0600).

Keys are validated as OpenSSH public keys with ``cryptography`` (Ed25519, ECDSA
P-256/384/521, RSA of 2048 to 8192 bits), at most ``MAX_KEYS`` of them, de-duplicated
by key material, and identified by their SHA256 fingerprint as ``ssh-keygen -l`` prints it (``SHA256:<base64, no =>``).
Lines of the file that are not plain keys (e.g. with options) are kept untouched.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from .errors import UpdateError
from .state import atomic_write

KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # larger keys only cost the SSH server CPU per login
MAX_KEYS = 32
MAX_LINE = 16 * 1024
MAX_COMMENT = 1024


@dataclass(frozen=True)
class SshKey:
    """One public key: ``type``, ``data`` (base64 blob), ``comment``, ``bits``."""

    type: str
    data: str
    comment: str
    bits: int

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64 without padding>`` of the key blob."""
        digest = hashlib.sha256(base64.b64decode(self.data)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        return f"{self.type} {self.data} {self.comment}".rstrip()

    def as_dict(self) -> dict:
        """``{fingerprint, type, bits, comment, key}`` as the API lists it."""
        return {
            "fingerprint": self.fingerprint,
            "type": self.type,
            "bits": self.bits,
            "comment": self.comment,
            "key": self.line,
        }


def parse_key(text) -> SshKey:
    """Parse one ``type base64 [comment]`` line; raises UpdateError ``bad-key``."""

    def bad(message):
        return UpdateError("bad-key", message)

    if not isinstance(text, str):
        raise bad("the key must be a string")
    text = text.strip()
    if not text:
        raise bad("empty key")
    if len(text) > MAX_LINE:
        raise bad("key too long")
    if "\n" in text or "\r" in text or "\0" in text:
        raise bad("exactly one key line is accepted")
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise bad("expected '<type> <base64> [comment]'")
    key_type, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if key_type not in KEY_TYPES:
        raise bad(f"unsupported key type {key_type[:40]!r} (allowed: {', '.join(KEY_TYPES)})")
    if len(comment) > MAX_COMMENT or not comment.isprintable():
        raise bad("the comment must be printable and at most 1024 characters")
    try:
        blob = base64.b64decode(data, validate=True)
        public_key = load_ssh_public_key(f"{key_type} {data}".encode("ascii"))
    except (ValueError, binascii.Error, UnsupportedAlgorithm, UnicodeEncodeError) as e:
        raise bad(f"not a valid OpenSSH public key: {e}") from None
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        bits = 256
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        bits = public_key.curve.key_size
    elif isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise bad(f"RSA keys need {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, this one has {bits}")
    else:
        raise bad("unsupported key type")
    canonical = base64.b64encode(blob).decode("ascii")
    return SshKey(key_type, canonical, comment, bits)


def normalise_fingerprint(text: str) -> str:
    """Accept ``SHA256:xxx``, bare ``xxx`` or URL-safe base64; return ``SHA256:xxx``."""
    text = text.strip()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    return "SHA256:" + text.replace("-", "+").replace("_", "/").rstrip("=")


class KeyStore:
    """The ``authorized_keys`` file under ``directory``. Methods are thread-safe."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / "authorized_keys"
        self._lock = threading.Lock()

    def _read(self) -> tuple:
        keys, other = [], []
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        seen = set()
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                other.append(line)
                continue
            try:
                key = parse_key(line)
            except UpdateError:
                other.append(line)
                continue
            if key.data not in seen:
                seen.add(key.data)
                keys.append(key)
        return keys, other

    def _write(self, keys: list, other: list) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        text = "".join(line + "\n" for line in other + [k.line for k in keys])
        atomic_write(self.path, text.encode(), mode=0o600)

    def list(self) -> list:
        """The keys (:class:`SshKey`), in file order."""
        with self._lock:
            return self._read()[0]

    def add(self, text) -> tuple:
        """Add a key line; returns ``(key, added)`` (``added`` False for a duplicate).

        Raises UpdateError ``bad-key``, or ``too-many-keys`` when ``MAX_KEYS`` are there.
        """
        key = parse_key(text)
        with self._lock:
            keys, other = self._read()
            if any(k.data == key.data for k in keys):
                return key, False
            if len(keys) >= MAX_KEYS:
                raise UpdateError("too-many-keys", f"at most {MAX_KEYS} keys; remove one first")
            self._write(keys + [key], other)
            return key, True

    def remove(self, fingerprint: str) -> SshKey | None:
        """Remove the key with this fingerprint; returns it, or ``None`` if absent."""
        wanted = normalise_fingerprint(fingerprint)
        with self._lock:
            keys, other = self._read()
            match = next((k for k in keys if k.fingerprint == wanted), None)
            if match is not None:
                self._write([k for k in keys if k is not match], other)
            return match

    def clear(self) -> int:
        """Remove every key (and every other line); returns how many keys there were."""
        with self._lock:
            keys, other = self._read()
            if keys or any(line.strip() for line in other):
                self._write([], [])
            return len(keys)
