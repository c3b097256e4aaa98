"""The bundle format against the real tools: OpenSSL's CMS (``openssl cms``) in both
directions, and the cpio layout SWUpdate reads (https://github.com/sbabic/swupdate,
doc/source/signed_images.rst): a bundle written here verifies there and the reverse."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from update_server import bundle
from update_server.errors import UpdateError

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def signer(tmp_path, algorithm):
    key = bundle.generate_private_key(algorithm)
    cert = bundle.make_certificate(key)
    (tmp_path / "key.pem").write_bytes(bundle.private_key_pem(key))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, {bundle.key_id(key.public_key()): key.public_key()}


def manifest(version="2.0.0"):
    return bundle.make_manifest("ot2-rpi3", ["1.0"], version, [bundle.Image("rootfs", "rootfs.img", 1, "0" * 64)])


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "rsa"])
def test_openssl_verifies_our_signature(tmp_path, algorithm):
    key, cert, _ = signer(tmp_path, algorithm)
    raw = manifest()
    (tmp_path / "swd").write_bytes(raw)
    (tmp_path / "swd.sig").write_bytes(bundle.sign_manifest(key, cert, raw))
    done = subprocess.run(["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", "swd.sig",
                           "-content", "swd", "-CAfile", "cert.pem", "-purpose", "any", "-out", "/dev/null"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("algorithm,options", [("ecdsa-p256", []), ("ecdsa-p256", ["-noattr"]),
                                               ("rsa", []), ("rsa", ["-keyopt", "rsa_padding_mode:pss"])])
def test_we_verify_openssl_signatures(tmp_path, algorithm, options):
    key, _, keyring = signer(tmp_path, algorithm)
    raw = manifest()
    (tmp_path / "swd").write_bytes(raw)
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-in", "swd", "-signer", "cert.pem", "-inkey", "key.pem",
                    "-outform", "DER", "-nosmimecap", *options, "-out", "swd.sig"], cwd=tmp_path, check=True)
    signature = (tmp_path / "swd.sig").read_bytes()
    assert bundle.verify_manifest(raw, signature, keyring) == bundle.key_id(key.public_key())
    with pytest.raises(UpdateError) as refused:
        bundle.verify_manifest(manifest("2.0.1"), signature, keyring)
    assert refused.value.code == "bad-signature"


def test_signatures_we_do_not_trust(tmp_path):
    key, cert, keyring = signer(tmp_path, "ecdsa-p256")
    other = bundle.generate_private_key("ecdsa-p256")
    raw = manifest()
    cases = {"untrusted-key": (bundle.sign_manifest(other, bundle.make_certificate(other), raw), keyring),
             "bad-signature": (b"\x30\x03\x02\x01\x00", keyring)}
    for code, (signature, ring) in cases.items():
        with pytest.raises(UpdateError) as refused:
            bundle.verify_manifest(raw, signature, ring)
        assert refused.value.code == code
    with pytest.raises(UpdateError) as refused:
        bundle.verify_manifest(raw, bundle.sign_manifest(key, cert, raw), {})
    assert refused.value.code == "untrusted-key"


def test_round_trip_and_cpio_layout(tmp_path):
    key, cert, keyring = signer(tmp_path, "ecdsa-p256")
    image = tmp_path / "rootfs.squashfs"
    image.write_bytes(bytes(range(256)) * 4099)
    out = io.BytesIO()
    written = bundle.write_bundle(out, key, cert, "ot2-rpi3", ["1.0"], "2.0.0", {"rootfs": image})
    data = out.getvalue()
    assert len(data) % 512 == 0
    names = [data[i + 110:data.index(b"\0", i + 110)] for i in range(len(data)) if data.startswith(b"070701", i)
             and data[i + 6:i + 110].isalnum()]
    assert names[:2] == [b"sw-description", b"sw-description.sig"] and names[-1] == b"TRAILER!!!"
    head = asyncio.run(bundle.verify_stream(io.BytesIO(data), keyring, "ot2-rpi3"))
    assert head.manifest == written and head.image.size == image.stat().st_size
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    with pytest.raises(UpdateError) as refused:
        asyncio.run(bundle.verify_stream(io.BytesIO(bytes(flipped)), keyring, "ot2-rpi3"))
    assert refused.value.code == "hash-mismatch"
    with pytest.raises(UpdateError) as refused:
        asyncio.run(bundle.verify_stream(io.BytesIO(data), keyring, "ot2-qemu-x86_64"))
    assert refused.value.code == "incompatible"
