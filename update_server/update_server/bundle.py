"""Bundle format: keys, manifest, signatures, and a streaming reader and writer.

A bundle is a POSIX (ustar) tar stream whose members come in this order:

1. ``manifest.json`` -- UTF-8 JSON (at most 64 KiB)::

       {"format": 1, "compatible": "ot2-rpi3", "version": "1.2.0",
        "build_time": "2024-05-01T12:00:00+00:00",
        "images": [{"slot_class": "rootfs", "filename": "rootfs.img",
                    "size": 123456789, "sha256": "<64 hex digits>"}]}

2. ``manifest.sig`` -- JSON (at most 4 KiB) signing the exact bytes of ``manifest.json``::

       {"key_id": "<sha256 hex of the public key's DER SubjectPublicKeyInfo>",
        "algorithm": "ed25519" | "ecdsa-p256-sha256",
        "signature": "<base64; raw Ed25519 signature or DER ECDSA signature>"}

3. one regular member per image, named by its ``filename``, in manifest order.

then the tar end-of-archive marker (zero blocks; only zero padding may follow).
Nothing is trusted before the signature has been checked against the keyring; an empty
keyring refuses every bundle.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import UpdateError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_MANIFEST_SIZE = 64 * 1024
MAX_SIGNATURE_SIZE = 4 * 1024
MAX_TRAILING_ZEROS = 1 << 20
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
ALG_ED25519 = "ed25519"
ALG_ECDSA_P256 = "ecdsa-p256-sha256"
SLOT_CLASSES = ("rootfs",)
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------
# keys


def generate_private_key(algorithm: str = ALG_ED25519):
    """A new private key: ``"ed25519"`` or ``"ecdsa-p256"``/``"ecdsa-p256-sha256"``."""
    if algorithm == ALG_ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm in ("ecdsa-p256", ALG_ECDSA_P256):
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def private_key_pem(key) -> bytes:
    """PKCS#8 PEM (unencrypted) of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(public_key) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key) -> str:
    """SHA-256 (hex) of the public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def key_algorithm(key) -> str:
    """The bundle algorithm name for a private or public key; ValueError if unsupported."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ALG_ED25519
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return ALG_ECDSA_P256
    raise ValueError("only Ed25519 and ECDSA P-256 keys are supported")


def load_private_key(path: str | os.PathLike):
    """Load an unencrypted PEM private key (Ed25519 or ECDSA P-256)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    key_algorithm(key)
    return key


def load_keyring(directory: str | os.PathLike) -> dict:
    """Trusted public keys: ``{key_id: public_key}`` from ``directory/*.pem``.

    A missing directory gives an empty keyring (which refuses every bundle).  Files that
    are not Ed25519/ECDSA-P256 public keys are skipped with a warning.
    """
    keyring = {}
    try:
        paths = sorted(Path(directory).glob("*.pem"))
    except OSError:
        return keyring
    for path in paths:
        try:
            public_key = serialization.load_pem_public_key(path.read_bytes())
            key_algorithm(public_key)
        except (OSError, ValueError, TypeError) as e:
            log.warning("keyring: skipping %s: %s", path, e)
            continue
        keyring[key_id(public_key)] = public_key
    return keyring


def write_keyring(directory: str | os.PathLike, keys: dict) -> Path:
    """Create the keyring ``directory`` with ``NAME.pem`` for each ``{NAME: key}``.

    The public half of each (private or public) key is written; returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, key in keys.items():
        if hasattr(key, "public_key"):
            key = key.public_key()
        (directory / f"{name}.pem").write_bytes(public_key_pem(key))
    return directory


# ---------------------------------------------------------------------------------------
# signatures


def sign_manifest(private_key, manifest: bytes) -> bytes:
    """The ``manifest.sig`` member (JSON bytes) for the exact bytes ``manifest``."""
    algorithm = key_algorithm(private_key)
    if algorithm == ALG_ED25519:
        signature = private_key.sign(manifest)
    else:
        signature = private_key.sign(manifest, ec.ECDSA(hashes.SHA256()))
    body = {
        "key_id": key_id(private_key.public_key()),
        "algorithm": algorithm,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return (json.dumps(body, indent=2) + "\n").encode()


def verify_manifest(manifest: bytes, signature: bytes, keyring: dict) -> str:
    """Check ``signature`` (``manifest.sig`` bytes) over ``manifest``; returns the key id.

    Raises UpdateError ``untrusted-key`` (empty keyring, unknown key id) or
    ``bad-signature`` (malformed signature member, wrong algorithm, invalid signature).
    """
    if not keyring:
        raise UpdateError(
            "untrusted-key", "no trusted keys are installed; every bundle is refused"
        )
    try:
        sig = json.loads(signature.decode("utf-8"))
        kid = sig["key_id"]
        algorithm = sig["algorithm"]
        raw = base64.b64decode(sig["signature"], validate=True)
        if not (isinstance(kid, str) and isinstance(algorithm, str)):
            raise TypeError("key_id and algorithm must be strings")
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as e:
        raise UpdateError("bad-signature", f"malformed {SIGNATURE_NAME}: {e}") from e
    public_key = keyring.get(kid.lower())
    if public_key is None:
        raise UpdateError("untrusted-key", f"bundle signed by unknown key {kid[:64]}")
    if key_algorithm(public_key) != algorithm:
        raise UpdateError("bad-signature", f"algorithm {algorithm[:40]!r} does not match the key")
    try:
        if algorithm == ALG_ED25519:
            public_key.verify(raw, manifest)
        else:
            public_key.verify(raw, manifest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise UpdateError("bad-signature", "manifest signature does not verify") from None
    return kid.lower()


# ---------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True)
class Image:
    """One image of a bundle (``size`` in bytes, ``sha256`` lowercase hex)."""

    slot_class: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed and validated ``manifest.json``; ``raw`` holds the signed bytes."""

    compatible: str
    version: str
    build_time: str
    images: tuple
    raw: bytes

    def as_dict(self) -> dict:
        return json.loads(self.raw)

    @property
    def rootfs(self) -> Image:
        return next(i for i in self.images if i.slot_class == "rootfs")


def make_manifest(compatible: str, version: str, images: list, build_time: str | None = None) -> bytes:
    """Serialise a manifest. ``images``: list of :class:`Image`. Returns UTF-8 JSON bytes."""
    if build_time is None:
        build_time = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    body = {
        "format": FORMAT_VERSION,
        "compatible": compatible,
        "version": version,
        "build_time": build_time,
        "images": [
            {"slot_class": i.slot_class, "filename": i.filename, "size": i.size, "sha256": i.sha256}
            for i in images
        ],
    }
    raw = (json.dumps(body, indent=2) + "\n").encode()
    parse_manifest(raw)  # never write what we would refuse to read
    return raw


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate manifest bytes; raises UpdateError ``bad-manifest``."""

    def bad(message):
        return UpdateError("bad-manifest", message)

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"manifest is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad("manifest must be a JSON object")
    if data.get("format") != FORMAT_VERSION or not _is_int(data.get("format")):
        raise bad(f"unsupported manifest format {str(data.get('format'))[:20]!r}")
    for key in ("compatible", "version", "build_time"):
        value = data.get(key)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise bad(f"{key!r} must be a non-empty string")
    try:
        _dt.datetime.fromisoformat(data["build_time"].replace("Z", "+00:00"))
    except ValueError:
        raise bad("'build_time' is not an ISO 8601 time") from None
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise bad("'images' must be a non-empty list")
    parsed = []
    for entry in images:
        if not isinstance(entry, dict):
            raise bad("every image must be an object")
        slot_class = entry.get("slot_class")
        filename = entry.get("filename")
        size = entry.get("size")
        digest = entry.get("sha256")
        if slot_class not in SLOT_CLASSES:
            raise bad(f"unsupported slot class {str(slot_class)[:40]!r}")
        if (
            not isinstance(filename, str)
            or not _FILENAME_RE.match(filename)
            or filename in (MANIFEST_NAME, SIGNATURE_NAME)
        ):
            raise bad(f"bad image filename {str(filename)[:100]!r}")
        if not _is_int(size) or size < 0:
            raise bad("image 'size' must be a non-negative integer")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise bad("image 'sha256' must be 64 lowercase hex digits")
        parsed.append(Image(slot_class, filename, size, digest))
    if len(parsed) != 1:
        raise bad("exactly one rootfs image is supported")
    return Manifest(data["compatible"], data["version"], data["build_time"], tuple(parsed), raw)


# ---------------------------------------------------------------------------------------
# streaming reader


class ChunkSource:
    """Adapts "give me the next chunk" (``async () -> bytes``, ``b""`` at the end) to reads.

    Used with ``aiohttp``'s ``request.content.readany`` or a multipart part's
    ``read_chunk``, and with files.  Any exception of the underlying reader becomes
    UpdateError ``truncated``.  ``consumed`` counts bytes handed out.
    """

    def __init__(self, next_chunk):
        self._next_chunk = next_chunk
        self._rest = memoryview(b"")
        self._eof = False
        self.consumed = 0

    async def _pull(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await self._next_chunk()
        except UpdateError:
            raise
        except Exception as e:  # connection errors of any kind
            raise UpdateError("truncated", f"upload interrupted: {e or type(e).__name__}") from e
        if not chunk:
            self._eof = True
            return False
        self._rest = memoryview(chunk)
        return True

    async def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` completely unless the stream ends; returns the count (bytes)."""
        filled = 0
        wanted = len(buffer)
        while filled < wanted:
            if not self._rest and not await self._pull():
                break
            n = min(len(self._rest), wanted - filled)
            buffer[filled : filled + n] = self._rest[:n]
            self._rest = self._rest[n:]
            filled += n
        self.consumed += filled
        return filled

    async def read_exactly(self, size: int, what: str) -> bytes:
        """Exactly ``size`` bytes; UpdateError ``truncated`` naming ``what`` otherwise."""
        buffer = bytearray(size)
        if await self.readinto(memoryview(buffer)) != size:
            raise UpdateError("truncated", f"bundle ends inside {what}")
        return bytes(buffer)

    async def skip(self, size: int, what: str) -> None:
        """Discard ``size`` bytes (used for padding); ``truncated`` if they are missing."""
        if size:
            await self.read_exactly(size, what)


def file_source(f, chunk_size: int = 1 << 20) -> ChunkSource:
    """A :class:`ChunkSource` over a binary file object (blocking reads)."""

    async def next_chunk():
        return f.read(chunk_size)

    return ChunkSource(next_chunk)


def padding(size: int) -> int:
    """Bytes of zero padding after a member of ``size`` bytes."""
    return -size % BLOCK


async def read_header(source: ChunkSource, what: str) -> tarfile.TarInfo | None:
    """The next tar header, or ``None`` at the end-of-archive marker (or clean EOF).

    Raises ``truncated`` for a partial header and ``bad-bundle`` for anything that is
    not a plain ustar/GNU regular file header.
    """
    block = bytearray(BLOCK)
    n = await source.readinto(memoryview(block))
    if n == 0:
        return None
    if n != BLOCK:
        raise UpdateError("truncated", f"bundle ends inside the header of {what}")
    if block == ZERO_BLOCK:
        return None
    try:
        info = tarfile.TarInfo.frombuf(bytes(block), "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        raise UpdateError("bad-bundle", f"not a tar header where {what} was expected: {e}") from None
    if info.size < 0:  # base-256 size fields can be negative
        raise UpdateError("bad-bundle", f"member {info.name[:100]!r} has a negative size")
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise UpdateError(
            "bad-bundle", f"member {info.name[:100]!r} is not a regular file (pax/GNU extensions are not supported)"
        )
    return info


@dataclass
class BundleHead:
    """Everything before the image data: the manifest, the signer and the image header."""

    manifest: Manifest
    key_id: str
    image: Image
    image_member: tarfile.TarInfo


async def read_head(source: ChunkSource, keyring: dict, compatible: str | None) -> BundleHead:
    """Read and check manifest, signature and the image header from ``source``.

    Order of checks: the manifest member comes first (``bad-bundle``/``bad-manifest``),
    the signature member follows (``unsigned``), the signature verifies against the
    keyring (``untrusted-key``/``bad-signature``), then the manifest is parsed
    (``bad-manifest``) and ``compatible`` compared (``incompatible``; ``None`` skips it),
    then the image member's header must match the manifest (``bad-bundle``).
    On return the source is positioned at the first byte of the image.
    """
    info = await read_header(source, MANIFEST_NAME)
    if info is None:
        raise UpdateError("bad-bundle", "empty bundle")
    if info.name != MANIFEST_NAME:
        raise UpdateError("bad-manifest", f"first member is {info.name[:100]!r}, not {MANIFEST_NAME}")
    if info.size > MAX_MANIFEST_SIZE:
        raise UpdateError("bad-manifest", f"manifest larger than {MAX_MANIFEST_SIZE} bytes")
    manifest_raw = await source.read_exactly(info.size, MANIFEST_NAME)
    await source.skip(padding(info.size), MANIFEST_NAME)

    info = await read_header(source, SIGNATURE_NAME)
    if info is None or info.name != SIGNATURE_NAME:
        raise UpdateError("unsigned", f"{MANIFEST_NAME} is not followed by {SIGNATURE_NAME}")
    if info.size > MAX_SIGNATURE_SIZE:
        raise UpdateError("bad-signature", f"signature larger than {MAX_SIGNATURE_SIZE} bytes")
    signature = await source.read_exactly(info.size, SIGNATURE_NAME)
    await source.skip(padding(info.size), SIGNATURE_NAME)

    kid = verify_manifest(manifest_raw, signature, keyring)
    manifest = parse_manifest(manifest_raw)
    if compatible is not None and manifest.compatible != compatible:
        raise UpdateError(
            "incompatible",
            f"bundle is for {manifest.compatible[:100]!r}, this system is {compatible!r}",
        )
    image = manifest.rootfs
    info = await read_header(source, image.filename)
    if info is None:
        raise UpdateError("truncated", f"bundle ends before the image {image.filename}")
    if info.name != image.filename:
        raise UpdateError("bad-bundle", f"expected member {image.filename}, found {info.name[:100]!r}")
    if info.size != image.size:
        raise UpdateError(
            "bad-bundle", f"member {image.filename} has {info.size} bytes, manifest says {image.size}"
        )
    return BundleHead(manifest, kid, image, info)


async def read_tail(source: ChunkSource, image: Image) -> None:
    """After the image data: its padding, the end-of-archive marker, zero padding only.

    Raises ``truncated`` or ``extra-data``.
    """
    await source.skip(padding(image.size), image.filename)
    info = await read_header(source, "the end of the archive")
    if info is not None:
        raise UpdateError("extra-data", f"unexpected member {info.name[:100]!r} after the image")
    block = bytearray(64 * 1024)
    view = memoryview(block)
    seen = 0
    while True:
        n = await source.readinto(view)
        if n == 0:
            return
        if block.count(0, 0, n) != n:
            raise UpdateError("extra-data", "non-zero data after the end of the archive")
        seen += n
        if seen > MAX_TRAILING_ZEROS:
            raise UpdateError("extra-data", "too much padding after the end of the archive")


async def read_image_sha256(source: ChunkSource, image: Image) -> str:
    """Read the ``image.size`` bytes of image data from ``source``; their SHA-256 (hex).

    Raises ``truncated`` if the stream ends first; the digest is not compared here.
    """
    hasher = hashlib.sha256()
    buffer = bytearray(1 << 20)
    remaining = image.size
    while remaining:
        view = memoryview(buffer)[: min(len(buffer), remaining)]
        n = await source.readinto(view)
        hasher.update(view[:n])
        remaining -= n
        if n < len(view):
            raise UpdateError("truncated", f"bundle ends {remaining} bytes before the image end")
    return hasher.hexdigest()


async def verify_stream(f, keyring: dict, compatible: str | None) -> BundleHead:
    """Check a whole bundle read from the binary file ``f``, as the robot checks an upload.

    :func:`read_head` (signature against ``keyring``, manifest, ``compatible``; ``None``
    skips that), then the image's SHA-256 against the manifest (``hash-mismatch``) and
    :func:`read_tail`.  Returns the :class:`BundleHead`; raises UpdateError.  Used by
    ``update-server bundle verify`` and by the client's local check.
    """
    source = file_source(f)
    head = await read_head(source, keyring, compatible)
    digest = await read_image_sha256(source, head.image)
    if digest != head.image.sha256:
        raise UpdateError("hash-mismatch", f"{head.image.filename}: sha256 {digest}")
    await read_tail(source, head.image)
    return head


# ---------------------------------------------------------------------------------------
# writer


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """A ustar header block for a regular file ``name`` of ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def hash_file(path: str | os.PathLike, chunk_size: int = 1 << 20, progress=None) -> tuple:
    """``(size_bytes, sha256_hex)`` of a file; ``progress(n)`` is called per chunk."""
    h = hashlib.sha256()
    size = 0
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            h.update(view[:n])
            size += n
            if progress:
                progress(n)
    return size, h.hexdigest()


def write_bundle(out, private_key, compatible: str, version: str, images: dict,
                 build_time: str | None = None, progress=None, chunk_size: int = 1 << 20) -> Manifest:
    """Write a bundle to the binary file object ``out``.

    ``images``: ``{slot_class: path}`` (only ``rootfs``).  Each image is read twice
    (hash, then copy); nothing is held in memory.  ``progress(phase, n)`` is called with
    ``phase`` "hash" or "write" and a byte count.  Returns the manifest written.
    """
    entries = []
    for slot_class, path in images.items():
        size, digest = hash_file(path, chunk_size, progress and (lambda n: progress("hash", n)))
        entries.append((Image(slot_class, f"{slot_class}.img", size, digest), path))
    manifest_raw = make_manifest(compatible, version, [e for e, _ in entries], build_time)
    manifest = parse_manifest(manifest_raw)
    mtime = int(_dt.datetime.fromisoformat(manifest.build_time.replace("Z", "+00:00")).timestamp())
    signature = sign_manifest(private_key, manifest_raw)
    for name, data in ((MANIFEST_NAME, manifest_raw), (SIGNATURE_NAME, signature)):
        out.write(tar_header(name, len(data), mtime))
        out.write(data)
        out.write(bytes(padding(len(data))))
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    for image, path in entries:
        out.write(tar_header(image.filename, image.size, mtime))
        h = hashlib.sha256()
        written = 0
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                h.update(view[:n])
                out.write(view[:n])
                written += n
                if progress:
                    progress("write", n)
        if written != image.size or h.hexdigest() != image.sha256:
            raise UpdateError("hash-mismatch", f"{path} changed while the bundle was written")
        out.write(bytes(padding(image.size)))
    out.write(ZERO_BLOCK * 2)
    return manifest
