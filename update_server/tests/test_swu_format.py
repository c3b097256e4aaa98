"""The bundle format against the real tools: OpenSSL's CMS (``openssl cms``) in both
directions, the cpio layout SWUpdate reads (https://github.com/sbabic/swupdate,
doc/source/signed_images.rst), and Debian's SWUpdate itself (``ci/swupdate.sh``) checking
our bundles: a bundle written here verifies there and the reverse."""

from __future__ import annotations

import asyncio
import io
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

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


@pytest.fixture(scope="module")
def swupdate():
    """Debian's SWUpdate, unpacked into the cache by ci/swupdate.sh: its directory."""
    script = Path(__file__).resolve().parents[2] / "ci" / "swupdate.sh"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def swupdate_check(root: Path, swu: Path, cert: Path, hardware: str, tmp_path) -> str:
    """``swupdate -c`` (check a bundle, install nothing) on ``swu`` with ``cert`` to verify
    its signature and ``hardware`` (``board:revision``); its log. SWUpdate stays up
    waiting for requests after the check, so it is ended once it logged the outcome."""
    env = dict(os.environ, TMPDIR=f"{tmp_path}/",
               LD_LIBRARY_PATH=":".join(str(d) for d in (root / "usr" / "lib").glob("*-linux-gnu*")))
    proc = subprocess.Popen([str(root / "usr" / "bin" / "swupdate"), "-c", "-i", str(swu), "-k", str(cert),
                             "-H", hardware, "-l", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    log, deadline = b"", time.monotonic() + 60
    try:
        while b"SWUpdate was successful" not in log and b"SWUpdate *failed*" not in log:
            assert time.monotonic() < deadline, log.decode(errors="replace")[-2000:]
            if select.select([proc.stdout], [], [], 1)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log += chunk
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.decode(errors="replace")


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "rsa"])
def test_swupdate_checks_our_bundles(tmp_path, swupdate, algorithm):
    key, cert, _ = signer(tmp_path, algorithm)
    image = tmp_path / "rootfs.squashfs"
    image.write_bytes(bytes(range(256)) * 4099)
    swu = tmp_path / "update.swu"
    with open(swu, "wb") as out:
        bundle.write_bundle(out, key, cert, "ot2-rpi3", ["1.0"], "2.0.0", {"rootfs": image})
    log = swupdate_check(swupdate, swu, tmp_path / "cert.pem", "ot2-rpi3:1.0", tmp_path)
    assert "SWUpdate was successful" in log and "[ERROR]" not in log, log
    assert "Hardware compatibility verified" in log and "Found file" in log, log

    refused = swupdate_check(swupdate, swu, tmp_path / "cert.pem", "ot2-rpi3:2.0", tmp_path)
    assert "SWUpdate *failed*" in refused and "SW not compatible with hardware" in refused, refused
    (tmp_path / "other").mkdir()
    signer(tmp_path / "other", algorithm)     # a certificate of another key
    refused = swupdate_check(swupdate, swu, tmp_path / "other" / "cert.pem", "ot2-rpi3:1.0", tmp_path)
    assert "SWUpdate *failed*" in refused and "SWUpdate was successful" not in refused, refused
    flipped = bytearray(swu.read_bytes())
    flipped[-image.stat().st_size // 2 - 2048] ^= 1
    (tmp_path / "flipped.swu").write_bytes(bytes(flipped))
    refused = swupdate_check(swupdate, tmp_path / "flipped.swu", tmp_path / "cert.pem", "ot2-rpi3:1.0", tmp_path)
    assert "HASH mismatch" in refused and "SWUpdate was successful" not in refused, refused
