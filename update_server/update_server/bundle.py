"""Bundle format: SWUpdate's `.swu`, streamed and checked before anything is written.

A bundle is a cpio archive in the "new ASCII" format (magic ``070701``; ``070702``, whose
checksum the image's SHA-256 makes redundant, is read too), the layout SWUpdate defines
("Update images", https://sbabic.github.io/swupdate/swupdate.html; ``doc/source/
sw-description.rst`` and ``signed_images.rst`` in https://github.com/sbabic/swupdate):

1. ``sw-description`` -- the manifest, libconfig syntax (https://hyperrealm.github.io/
   libconfig/libconfig_manual.html), at most 64 KiB::

       software =
       {
           version = "1.2.0";
           build-time = "2026-05-01T12:00:00+00:00";
           ot2-rpi3 =                         // the board's compatible string
           {
               hardware-compatibility = [ "1.0" ];   // the board revisions it runs on
               images = (
                   { name = "rootfs";                // the slot class
                     filename = "rootfs.img"; type = "raw";
                     size = 123456789L;              // bytes, as SWUpdate checks it
                     sha256 = "<64 hex digits>";
                     installed-directly = true; } );
           };
       };

2. ``sw-description.sig`` -- a detached CMS SignedData (RFC 5652, DER, at most 16 KiB)
   over the exact bytes of ``sw-description``, with the signer's certificate in it: what
   ``openssl cms -sign -binary -outform DER`` makes and SWUpdate's CMS verification
   (``CONFIG_SIGALG_CMS``) checks. Keys are ECDSA P-256 or RSA (2048 bits or more); CMS
   has no Ed25519 in OpenSSL.

3. one member per image, named by its ``filename``, in manifest order; then the
   ``TRAILER!!!`` member and zero padding only.

Trust is the key, not the certificate: the signer's public key must be in the keyring
(``*.pem`` public keys), so certificates need no chain and never expire on a robot whose
clock is wrong. Nothing is trusted before the signature verifies; an empty keyring
refuses every bundle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import libconf
from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding as rsa_padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from .errors import UpdateError

log = logging.getLogger(__name__)

MANIFEST_NAME = "sw-description"
SIGNATURE_NAME = "sw-description.sig"
TRAILER_NAME = "TRAILER!!!"
MAX_MANIFEST_SIZE = 64 * 1024
MAX_SIGNATURE_SIZE = 16 * 1024
MAX_TRAILING_ZEROS = 1 << 20
CPIO_MAGICS = (b"070701", b"070702")
CPIO_HEADER = 110
REGULAR_FILE = 0o100000
ALG_ECDSA_P256 = "ecdsa-p256"
ALG_RSA = "rsa"
MIN_RSA_BITS = 2048
SLOT_CLASSES = ("rootfs",)
HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_COMPATIBLE_RE = re.compile(r"^[A-Za-z][-A-Za-z0-9_]{0,99}$")   # a libconfig setting name
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HEX_FIELDS_RE = re.compile(rb"^[0-9A-Fa-f]{104}$")


# ---------------------------------------------------------------------------------------
# keys


def generate_private_key(algorithm: str = ALG_ECDSA_P256):
    """A new private key: ``"ecdsa-p256"`` or ``"rsa"`` (3072 bits)."""
    if algorithm == ALG_ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == ALG_RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def private_key_pem(key) -> bytes:
    """PKCS#8 PEM (unencrypted) of a private key."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(public_key) -> bytes:
    """SubjectPublicKeyInfo PEM of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key) -> str:
    """SHA-256 (hex) of the public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_algorithm(key) -> str:
    """``"ecdsa-p256"`` or ``"rsa"`` for a private or public key; ValueError otherwise."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and isinstance(key.curve, ec.SECP256R1):
        return ALG_ECDSA_P256
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size >= MIN_RSA_BITS:
        return ALG_RSA
    raise ValueError(f"only ECDSA P-256 and RSA keys of {MIN_RSA_BITS} bits or more sign bundles")


def load_private_key(path: str | os.PathLike):
    """Load an unencrypted PEM private key (ECDSA P-256 or RSA); ValueError otherwise."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    key_algorithm(key)
    return key


def load_keyring(directory: str | os.PathLike) -> dict:
    """Trusted public keys: ``{key_id: public_key}`` from ``directory/*.pem``.

    A missing directory gives an empty keyring (which refuses every bundle). Files that
    are not ECDSA P-256 or RSA public keys are skipped with a warning.
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


def make_certificate(private_key, common_name: str = "ot2 bundle signing") -> x509.Certificate:
    """A self-signed certificate for ``private_key``, to carry its public key in signatures.

    Valid from 1970 (a robot without a real-time clock may boot there) to 9999, the
    "no well-defined expiration" date of RFC 5280 section 4.1.2.5; no extended key usage,
    which SWUpdate's default certificate purpose check accepts.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(int(key_id(private_key.public_key())[:30], 16))
            .not_valid_before(_dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc))
            .not_valid_after(_dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_dt.timezone.utc))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .sign(private_key, hashes.SHA256()))


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """PEM of a certificate (what SWUpdate's ``-k`` reads)."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def load_certificate(path: str | os.PathLike, private_key) -> x509.Certificate:
    """The PEM certificate at ``path``; ValueError unless it holds ``private_key``'s public key."""
    certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    if key_id(certificate.public_key()) != key_id(private_key.public_key()):
        raise ValueError(f"{path} is not the certificate of this key")
    return certificate


# ---------------------------------------------------------------------------------------
# signatures


def sign_manifest(private_key, certificate: x509.Certificate, manifest: bytes) -> bytes:
    """The ``sw-description.sig`` member: a detached CMS SignedData (DER) over ``manifest``,
    SHA-256, the signer's ``certificate`` embedded (SWUpdate needs it)."""
    key_algorithm(private_key)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities]
    return (pkcs7.PKCS7SignatureBuilder().set_data(manifest)
            .add_signer(certificate, private_key, hashes.SHA256())
            .sign(serialization.Encoding.DER, options))


def _signer_certificate(signer, certificates):
    """The embedded certificate the SignerInfo names (issuer and serial, or key id)."""
    sid = signer["sid"]
    for certificate in certificates:
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if certificate.issuer == wanted["issuer"] and certificate.serial_number == wanted["serial_number"].native:
                return certificate
        elif certificate.key_identifier == sid.chosen.native:
            return certificate
    return None


def _signers(signature: bytes) -> list:
    """``[(SignerInfo, key id or None)]`` of a detached CMS SignedData (DER), the key id
    that of the embedded certificate the SignerInfo names. Raises ValueError or TypeError."""
    info = cms.ContentInfo.load(signature, strict=True)
    if info["content_type"].native != "signed_data":
        raise ValueError("not a CMS SignedData")
    signed = info["content"]
    if signed["encap_content_info"]["content"].native is not None:
        raise ValueError("the signature is not detached")
    certificates = [c.chosen for c in signed["certificates"] or () if c.name == "certificate"]
    signers = []
    for signer in signed["signer_infos"]:
        certificate = _signer_certificate(signer, certificates)
        signers.append((signer, certificate and hashlib.sha256(certificate.public_key.dump()).hexdigest()))
    return signers


def _embedded_keys(signature: bytes) -> dict:
    """``{key_id: public key}`` of the certificates a CMS SignedData carries."""
    signed = cms.ContentInfo.load(signature, strict=True)["content"]
    keys = {}
    for choice in signed["certificates"] or ():
        if choice.name == "certificate":
            public_key = x509.load_der_x509_certificate(choice.chosen.dump()).public_key()
            keys[key_id(public_key)] = public_key
    return keys


def signer_key_ids(signature: bytes) -> list:
    """The key ids (as :func:`key_id`) of a signature's signers, nothing verified; ``[]``
    for what is not a detached CMS SignedData. For display (``update-server bundle info``)."""
    try:
        return [kid for _, kid in _signers(signature) if kid]
    except (ValueError, TypeError, KeyError):
        return []


def _signed_bytes(signer, manifest: bytes, digest_name: str) -> bytes:
    """What the signature covers: the manifest, or its signed attributes (RFC 5652 5.4)."""
    attributes = signer["signed_attrs"]
    if not isinstance(attributes, cms.CMSAttributes):   # absent: the content itself
        return manifest
    values = {a["type"].native: a["values"] for a in attributes}
    if "content_type" in values and values["content_type"][0].native != "data":
        raise ValueError("the signed content type is not data")
    digest = values.get("message_digest")
    if digest is None or digest[0].native != hashlib.new(digest_name, manifest).digest():
        raise InvalidSignature
    return b"\x31" + attributes.dump()[1:]    # DER of the SET OF, not of the [0] tag


def _verify_signer(signer, public_key, manifest: bytes) -> None:
    """Raises InvalidSignature, or ValueError for what we do not accept."""
    digest_name = signer["digest_algorithm"]["algorithm"].native
    if digest_name not in HASHES:
        raise ValueError(f"digest {digest_name!r} is not accepted")
    data = _signed_bytes(signer, manifest, digest_name)
    signature = signer["signature"].native
    algorithm = signer["signature_algorithm"]
    kind = algorithm.signature_algo
    if kind == "ecdsa" and isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(HASHES[digest_name]()))
    elif kind == "rsassa_pkcs1v15" and isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, rsa_padding.PKCS1v15(), HASHES[digest_name]())
    elif kind == "rsassa_pss" and isinstance(public_key, rsa.RSAPublicKey):
        parameters = algorithm["parameters"]
        mgf_hash = parameters["mask_gen_algorithm"]["parameters"]["algorithm"].native
        if mgf_hash not in HASHES or parameters["hash_algorithm"]["algorithm"].native != digest_name:
            raise ValueError("RSA-PSS parameters are not accepted")
        pss = rsa_padding.PSS(rsa_padding.MGF1(HASHES[mgf_hash]()), parameters["salt_length"].native)
        public_key.verify(signature, data, pss, HASHES[digest_name]())
    else:
        raise ValueError(f"signature algorithm {kind!r} does not fit the key")


def verify_manifest(manifest: bytes, signature: bytes, keyring: dict | None) -> str:
    """Check ``signature`` (``sw-description.sig`` bytes) over ``manifest``; returns the
    key id of the signer found in ``keyring``. With ``keyring`` None the signature is
    checked against the key of the certificate it carries: whole, but not trusted (a
    lab PC's check before it sends a bundle to a robot that decides trust).

    Raises UpdateError ``untrusted-key`` (empty keyring, no signer's key in it) or
    ``bad-signature`` (not a detached CMS SignedData, an algorithm we do not accept, or a
    signature that does not verify).
    """
    if keyring is not None and not keyring:
        raise UpdateError("untrusted-key", "no trusted keys are installed; every bundle is refused")
    try:
        signers = _signers(signature)
        if keyring is None:
            keyring = _embedded_keys(signature)
        trusted = [(signer, kid) for signer, kid in signers if kid in keyring]
        if not trusted:
            raise UpdateError("untrusted-key", f"bundle signed by {len(signers)} key(s), none in the keyring")
        signer, kid = trusted[0]
        _verify_signer(signer, keyring[kid], manifest)
    except InvalidSignature:
        raise UpdateError("bad-signature", f"{MANIFEST_NAME} signature does not verify") from None
    except (ValueError, TypeError, KeyError) as e:
        raise UpdateError("bad-signature", f"malformed {SIGNATURE_NAME}: {str(e)[:200]}") from None
    return kid


# ---------------------------------------------------------------------------------------
# manifest (sw-description)


@dataclass(frozen=True)
class Image:
    """One image of a bundle (``size`` in bytes, ``sha256`` lowercase hex)."""

    slot_class: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed and validated ``sw-description``; ``raw`` holds the signed bytes."""

    compatible: str
    revisions: tuple
    version: str
    build_time: str
    images: tuple
    raw: bytes

    def as_dict(self) -> dict:
        """The manifest as our API shows it (``GET /server/update/{token}/status`` etc.)."""
        return {"compatible": self.compatible, "hardware_compatibility": list(self.revisions),
                "version": self.version, "build_time": self.build_time,
                "images": [{"slot_class": i.slot_class, "filename": i.filename, "size": i.size, "sha256": i.sha256}
                           for i in self.images]}

    @property
    def rootfs(self) -> Image:
        return next(i for i in self.images if i.slot_class == "rootfs")


def make_manifest(compatible: str, revisions, version: str, images: list, build_time: str | None = None) -> bytes:
    """The ``sw-description`` of a bundle for board ``compatible`` (its hardware
    ``revisions``), ``images`` a list of :class:`Image`. Returns UTF-8 libconfig bytes."""
    if build_time is None:
        build_time = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    board = {"hardware-compatibility": list(revisions),
             "images": tuple({"name": i.slot_class, "filename": i.filename, "type": "raw", "size": i.size,
                              "sha256": i.sha256, "installed-directly": True} for i in images)}
    if not _COMPATIBLE_RE.match(compatible):
        raise ValueError(f"compatible {compatible!r} is not a libconfig setting name")
    raw = libconf.dumps({"software": {"version": version, "build-time": build_time, compatible: board}}).encode()
    parse_manifest(raw)  # never write what we would refuse to read
    return raw


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise UpdateError("bad-manifest", f"{what} must be a non-empty string")
    return value


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate ``sw-description`` bytes; raises UpdateError ``bad-manifest``.

    One board section (a group holding ``images``) names the compatible string; it has
    exactly one ``rootfs`` image with ``filename``, ``size`` and ``sha256``.
    """
    try:
        text = raw.decode("utf-8")
        if re.search(r"^\s*@include", text, re.MULTILINE):
            raise ValueError("@include is not allowed")
        software = libconf.loads(text)["software"]
    except (UnicodeDecodeError, ValueError, KeyError, libconf.ConfigParseError) as e:
        raise UpdateError("bad-manifest", f"{MANIFEST_NAME} is not a libconfig software description: "
                                          f"{str(e)[:200]}") from None
    if not isinstance(software, dict):
        raise UpdateError("bad-manifest", "'software' must be a group")
    version = _string(software.get("version"), "software.version")
    build_time = _string(software.get("build-time"), "software.build-time")
    try:
        _dt.datetime.fromisoformat(build_time.replace("Z", "+00:00"))
    except ValueError:
        raise UpdateError("bad-manifest", "'build-time' is not an ISO 8601 time") from None
    boards = [name for name, value in software.items() if isinstance(value, dict) and "images" in value]
    if len(boards) != 1:
        raise UpdateError("bad-manifest", f"expected one board section with images, found {len(boards)}")
    compatible = boards[0]
    board = software[compatible]
    revisions = board.get("hardware-compatibility")
    if not isinstance(revisions, list) or not revisions or not all(isinstance(r, str) for r in revisions):
        raise UpdateError("bad-manifest", "'hardware-compatibility' must be a non-empty array of strings")
    entries = board["images"]
    if not isinstance(entries, tuple) or not entries:
        raise UpdateError("bad-manifest", "'images' must be a non-empty list")
    parsed = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise UpdateError("bad-manifest", "every image must be a group")
        slot_class, filename = entry.get("name"), entry.get("filename")
        size, digest = entry.get("size"), entry.get("sha256")
        if slot_class not in SLOT_CLASSES:
            raise UpdateError("bad-manifest", f"unsupported slot class {str(slot_class)[:40]!r}")
        if (not isinstance(filename, str) or not _FILENAME_RE.match(filename)
                or filename in (MANIFEST_NAME, SIGNATURE_NAME, TRAILER_NAME)):
            raise UpdateError("bad-manifest", f"bad image filename {str(filename)[:100]!r}")
        if entry.get("type") != "raw" or entry.get("installed-directly") is not True:
            raise UpdateError("bad-manifest", f"{filename}: only raw images installed directly are supported")
        if not _is_int(size) or not 0 <= size < 1 << 32:
            raise UpdateError("bad-manifest", "image 'size' must be an integer below 4 GiB (cpio's limit)")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise UpdateError("bad-manifest", "image 'sha256' must be 64 lowercase hex digits")
        parsed.append(Image(slot_class, filename, size, digest))
    if len(parsed) != 1:
        raise UpdateError("bad-manifest", "exactly one rootfs image is supported")
    return Manifest(compatible, tuple(revisions), version, build_time, tuple(parsed), raw)


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


def padding(length: int) -> int:
    """Bytes of zero padding that align cpio data of ``length`` bytes to 4."""
    return -length % 4


@dataclass(frozen=True)
class Member:
    """A cpio member's header: its ``name`` and data ``size`` in bytes."""

    name: str
    size: int


def cpio_header(name: str, size: int, mtime: int, inode: int) -> bytes:
    """A newc header of a regular file ``name`` of ``size`` bytes, with its padded name."""
    encoded = name.encode() + b"\0"
    fields = (inode, REGULAR_FILE | 0o644, 0, 0, 1, mtime, size, 0, 0, 0, 0, len(encoded), 0)
    head = CPIO_MAGICS[0] + b"".join(b"%08X" % field for field in fields) + encoded
    return head + bytes(padding(len(head)))


async def read_member(source: ChunkSource, what: str) -> Member | None:
    """The next cpio member's header, or ``None`` at ``TRAILER!!!``.

    Raises ``truncated`` (the stream ends inside the header) and ``bad-bundle`` (not a
    newc header, or not a regular file). On return the source is at the member's data.
    """
    raw = await source.read_exactly(CPIO_HEADER, f"the header of {what}")
    if raw[:6] not in CPIO_MAGICS:
        raise UpdateError("bad-bundle", f"not a cpio (newc) header where {what} was expected")
    if not _HEX_FIELDS_RE.match(raw[6:]):
        raise UpdateError("bad-bundle", f"the cpio header of {what} has fields that are not 8 hex digits")
    fields = [int(raw[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
    mode, size, name_size = fields[1], fields[6], fields[11]
    if not 1 < name_size <= 256:
        raise UpdateError("bad-bundle", f"the cpio header of {what} has a name of {name_size} bytes")
    name = await source.read_exactly(name_size, f"the name of {what}")
    await source.skip(padding(CPIO_HEADER + name_size), f"the name of {what}")
    if name[-1:] != b"\0":
        raise UpdateError("bad-bundle", f"the cpio name of {what} is not NUL-terminated")
    name = name[:-1].decode("utf-8", "replace")
    if name == TRAILER_NAME:
        return None
    if mode & 0o170000 != REGULAR_FILE:
        raise UpdateError("bad-bundle", f"member {name[:100]!r} is not a regular file")
    return Member(name, size)


async def _read_small_member(source: ChunkSource, name: str, limit: int, missing: str) -> bytes:
    """The data of the next member, which must be ``name`` of at most ``limit`` bytes;
    UpdateError ``missing`` otherwise."""
    member = await read_member(source, name)
    if member is None or member.name != name:
        raise UpdateError(missing, f"{name} is not where the bundle format puts it")
    if member.size > limit:
        raise UpdateError(missing, f"{name} is larger than {limit} bytes")
    data = await source.read_exactly(member.size, name)
    await source.skip(padding(member.size), name)
    return data


async def read_signed_manifest(source: ChunkSource) -> tuple[bytes, bytes]:
    """``(sw-description bytes, sw-description.sig bytes)``, neither checked: the first two
    members. Raises ``bad-manifest`` or ``unsigned``."""
    manifest = await _read_small_member(source, MANIFEST_NAME, MAX_MANIFEST_SIZE, "bad-manifest")
    signature = await _read_small_member(source, SIGNATURE_NAME, MAX_SIGNATURE_SIZE, "unsigned")
    return manifest, signature


@dataclass
class BundleHead:
    """Everything before the image data: the manifest, the signer and the image."""

    manifest: Manifest
    key_id: str
    image: Image


async def read_head(source: ChunkSource, keyring: dict | None, compatible: str | None,
                    revision: str = "") -> BundleHead:
    """Read and check the manifest, its signature and the image's header from ``source``.

    Order of checks: ``sw-description`` first (``bad-bundle``/``bad-manifest``), its
    signature second (``unsigned``), the signature verifies against the keyring
    (``untrusted-key``/``bad-signature``; ``None``: see :func:`verify_manifest`), then the manifest is parsed (``bad-manifest``)
    and ``compatible`` and the board ``revision`` compared (``incompatible``; ``None``
    and ``""`` skip them), then the image
    member's name and size must match the manifest (``bad-bundle``). On return the source
    is at the first byte of the image.
    """
    manifest_raw, signature = await read_signed_manifest(source)
    kid = verify_manifest(manifest_raw, signature, keyring)
    manifest = parse_manifest(manifest_raw)
    if compatible is not None and manifest.compatible != compatible:
        raise UpdateError("incompatible", f"bundle is for {manifest.compatible[:100]!r}, this system is {compatible!r}")
    if revision and revision not in manifest.revisions:
        raise UpdateError("incompatible", f"bundle is for board revisions {', '.join(manifest.revisions)[:100]}, "
                                          f"this board is {revision!r}")
    image = manifest.rootfs
    member = await read_member(source, image.filename)
    if member is None:
        raise UpdateError("truncated", f"bundle ends before the image {image.filename}")
    if member.name != image.filename:
        raise UpdateError("bad-bundle", f"expected member {image.filename}, found {member.name[:100]!r}")
    if member.size != image.size:
        raise UpdateError("bad-bundle", f"member {image.filename} has {member.size} bytes, manifest says {image.size}")
    return BundleHead(manifest, kid, image)


async def read_tail(source: ChunkSource, image: Image) -> None:
    """After the image data: its padding, ``TRAILER!!!``, then zero padding only.

    Raises ``truncated`` or ``extra-data``.
    """
    await source.skip(padding(image.size), image.filename)
    member = await read_member(source, TRAILER_NAME)
    if member is not None:
        raise UpdateError("extra-data", f"unexpected member {member.name[:100]!r} after the image")
    block = bytearray(64 * 1024)
    view = memoryview(block)
    seen = 0
    while n := await source.readinto(view):
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


async def verify_stream(f, keyring: dict | None, compatible: str | None) -> BundleHead:
    """Check a whole bundle read from the binary file ``f``, as the robot checks an upload.

    :func:`read_head` (signature against ``keyring``, manifest, ``compatible``; ``None``
    skips that), then the image's SHA-256 against the manifest (``hash-mismatch``) and
    :func:`read_tail`. Returns the :class:`BundleHead`; raises UpdateError. Used by
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


def write_bundle(out, private_key, certificate: x509.Certificate, compatible: str, revisions, version: str,
                 images: dict, build_time: str | None = None, progress=None, chunk_size: int = 1 << 20) -> Manifest:
    """Write a bundle to the binary file object ``out``, signed by ``private_key`` whose
    ``certificate`` (:func:`make_certificate`) it carries.

    ``images``: ``{slot_class: path}`` (only ``rootfs``). Each image is read twice (hash,
    then copy); nothing is held in memory. ``progress(phase, n)`` is called with ``phase``
    "hash" or "write" and a byte count. Returns the manifest written.
    """
    entries = []
    for slot_class, path in images.items():
        size, digest = hash_file(path, chunk_size, progress and (lambda n: progress("hash", n)))
        entries.append((Image(slot_class, f"{slot_class}.img", size, digest), path))
    manifest = parse_manifest(make_manifest(compatible, revisions, version, [e for e, _ in entries], build_time))
    mtime = int(_dt.datetime.fromisoformat(manifest.build_time.replace("Z", "+00:00")).timestamp())
    written_total = 0

    def put(data) -> None:
        nonlocal written_total
        out.write(data)
        written_total += len(data)

    for inode, (name, data) in enumerate(((MANIFEST_NAME, manifest.raw),
                                          (SIGNATURE_NAME, sign_manifest(private_key, certificate, manifest.raw))), 1):
        put(cpio_header(name, len(data), mtime, inode))
        put(data + bytes(padding(len(data))))
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    for inode, (image, path) in enumerate(entries, 3):
        put(cpio_header(image.filename, image.size, mtime, inode))
        h = hashlib.sha256()
        written = 0
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                h.update(view[:n])
                put(view[:n])
                written += n
                if progress:
                    progress("write", n)
        if written != image.size or h.hexdigest() != image.sha256:
            raise UpdateError("hash-mismatch", f"{path} changed while the bundle was written")
        put(bytes(padding(image.size)))
    put(cpio_header(TRAILER_NAME, 0, 0, 0))
    put(bytes(-written_total % 512))   # cpio's own block size
    return manifest
