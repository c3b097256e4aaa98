"""API tokens of paired clients: one file in ``/data`` that both servers read.

The file is ``<data_dir>/ot2/tokens.json`` (:func:`tokens_path`; on the robot
``/data/ot2/tokens.json``), mode 0640 in a 0750 directory, written atomically (temporary
file, fsync, rename) under an exclusive ``flock`` on ``tokens.lock`` next to it::

    {"format": 1,
     "tokens": [{"id": "3f9c0a1b2c3d4e5f",           # 16 hex digits, public, names the token
                 "sha256": "<64 lowercase hex>",     # SHA-256 of the token's UTF-8 bytes
                 "client": "ot2 on lab-pc-3",        # label the client gave when pairing
                 "created": "2026-12-01T17:00:00+00:00",
                 "via": "button" | "trusted-interface"}]}

Only hashes are stored: reading the file (a backup, a copied SD card) gives no usable
token.  A token is ``ot2_`` followed by 43 URL-safe base64 characters (256 random bits)
and is sent as ``Authorization: Bearer <token>``.  The robot server issues tokens when a
pairing is approved with the front button; the update server issues them only to callers
on a trusted interface, lists and revokes them.  Any process that holds the same
``data_dir`` uses this module (:class:`TokenStore`) and nothing else to read or change it.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path

from .state import atomic_write

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "ot2_"
MAX_TOKENS = 64
MAX_CLIENT_LABEL = 100  # characters


def tokens_path(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/ot2/tokens.json``, the one place tokens are kept."""
    return Path(data_dir) / "ot2" / "tokens.json"


def hash_token(token: str) -> str:
    """SHA-256 (lowercase hex) of the token's UTF-8 bytes, as stored in the file."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 200:
        return None
    return value


class TokenError(Exception):
    """A token request that cannot be done (``code``: ``too-many-tokens``, ``bad-request``)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class TokenStore:
    """The token file at ``path`` (see the module docstring). Thread- and process-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._cache: tuple | None = None  # (mtime_ns, size, records)

    def _load(self) -> list:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache and self._cache[0] == key:
            return self._cache[1]
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            log.error("token file %s unreadable, no token is valid: %s", self.path, e)
            return []
        records = [r for r in data.get("tokens", []) if isinstance(r, dict)
                   and isinstance(r.get("id"), str) and isinstance(r.get("sha256"), str)] \
            if isinstance(data, dict) else []
        self._cache = (key, records)
        return records

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        with open(self.path.parent / "tokens.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = None
            records = list(self._load())
            yield records
            body = json.dumps({"format": FORMAT, "tokens": records}, indent=2, sort_keys=True)
            atomic_write(self.path, (body + "\n").encode(), mode=0o640)
            self._cache = None

    def verify(self, token: str | None) -> dict | None:
        """The record (``{id, client, created, via}``) of a valid ``token``, else ``None``.

        Compares hashes in constant time; re-reads the file only when it changed.
        """
        if not token:
            return None
        digest = hash_token(token)
        match = None
        for record in self._load():
            if hmac.compare_digest(record["sha256"], digest):
                match = record
        return public(match) if match else None

    def list(self) -> list:
        """Every token's public record ``{id, client, created, via}`` (never the hash)."""
        return [public(r) for r in self._load()]

    def issue(self, client: str, via: str) -> tuple:
        """A new token for ``client`` (a label); returns ``(token, public record)``.

        The token itself is returned only here and is never stored.  Raises
        :class:`TokenError` ``bad-request`` (label) or ``too-many-tokens`` (``MAX_TOKENS``).
        """
        if not isinstance(client, str) or not client.strip() or len(client) > MAX_CLIENT_LABEL \
                or not client.isprintable():
            raise TokenError("bad-request", f"'client' must be a printable label of 1..{MAX_CLIENT_LABEL} characters")
        token = PREFIX + secrets.token_urlsafe(32)
        record = {
            "id": secrets.token_hex(8),
            "sha256": hash_token(token),
            "client": client.strip(),
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "via": via,
        }
        with self._locked() as records:
            if len(records) >= MAX_TOKENS:
                raise TokenError("too-many-tokens", f"at most {MAX_TOKENS} tokens; revoke one first")
            records.append(record)
        log.info("token %s issued to %r (%s)", record["id"], record["client"], via)
        return token, public(record)

    def revoke(self, token_id: str) -> bool:
        """Remove the token with this ``id``; ``False`` if there is none."""
        with self._locked() as records:
            kept = [r for r in records if r["id"] != token_id]
            found = len(kept) != len(records)
            records[:] = kept
        if found:
            log.info("token %s revoked", token_id)
        return found


def public(record: dict) -> dict:
    """A token record without its hash: ``{id, client, created, via}``."""
    return {k: record.get(k) for k in ("id", "client", "created", "via")}
