"""Command line: ``update-server [serve] | bundle ... | boot-check | provision | install``.

``update-server bundle verify`` exit status: 0 valid, 1 rejected (the error code is
printed, e.g. ``bad-signature``), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from .errors import UpdateError

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


# ---------------------------------------------------------------------------------------
# argument parsing


def _config_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    p.add_argument("--config", default=S, help=f"TOML config file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--listen", default=S, help="listen address")
    p.add_argument("--port", type=int, default=S, help="TCP port")
    p.add_argument("--data-dir", dest="data_dir", default=S)
    p.add_argument("--compatible", default=S, help="board compatible string")
    p.add_argument("--keyring", default=S, help="directory of trusted *.pem public keys")
    p.add_argument("--boot-backend", dest="boot_backend", choices=["uboot", "grub"], default=S)
    p.add_argument("--fw-env-config", dest="fw_env_config", action="append", default=S,
                   help="libubootenv config (primary first; repeat for backups)")
    p.add_argument("--grubenv", action="append", default=S, help="GRUB env file (primary first; repeat)")
    p.add_argument("--cmdline", default=S, help="kernel command line file")
    p.add_argument("--version-file", dest="version_file", default=S)
    p.add_argument("--slot", action="append", default=S, metavar="A=DEVICE", help="slot device (repeat)")
    p.add_argument("--chunk-size", dest="chunk_size", type=int, default=S, help="bytes")
    p.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=S)
    p.add_argument("--apply-hostname", dest="apply_hostname", action=argparse.BooleanOptionalAction, default=S)
    p.add_argument("--log-level", dest="log_level", default=S, choices=["debug", "info", "warning", "error"])
    return p


def _parser() -> argparse.ArgumentParser:
    flags = _config_flags()
    parser = argparse.ArgumentParser(
        prog="update-server", parents=[flags],
        description="OT-2 update server: signed bundles into A/B slots, SSH keys, robot name.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[flags], help="serve the HTTP API (the default)")

    check = sub.add_parser("boot-check", parents=[flags], help="mark the booted slot good once healthy")
    check.add_argument("--timeout", dest="boot_check_timeout", type=float, default=argparse.SUPPRESS,
                       help="seconds to wait for health")

    prov = sub.add_parser("provision", parents=[flags],
                          help="import robot.toml from the boot partition into the data dir (always exits 0)")
    prov.add_argument("--boot-dir", dest="boot_dir", default="/boot/firmware",
                      help="directory holding robot.toml (default /boot/firmware)")

    inst = sub.add_parser("install", parents=[flags],
                          help="install a local bundle file through the running update server")
    inst.add_argument("bundle", help="bundle file (a USB drive's, or on /data)")
    inst.add_argument("--allow-downgrade", dest="allow_downgrade", action="store_true",
                      help="accept a bundle older than the booted system")
    inst.add_argument("--no-commit", dest="commit", action="store_false",
                      help="write the inactive slot but do not select it for the next boot")

    b = sub.add_parser("bundle", help="make and check bundles").add_subparsers(dest="bundle_command")
    keygen = b.add_parser("keygen", help="make a signing key pair")
    keygen.add_argument("--out", required=True,
                        help="private key file; the public key (.pem) and its certificate (.crt) go next to it")
    keygen.add_argument("--algorithm", choices=["ecdsa-p256", "rsa"], default="ecdsa-p256")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")

    create = b.add_parser("create", help="build a signed bundle")
    create.add_argument("--key", required=True, help="private key (PEM)")
    create.add_argument("--cert", help="the key's certificate, carried in the signature (PEM; default: the "
                                       "key's .crt if there is one, else one made now)")
    create.add_argument("--compatible", required=True, help="the board's compatible string")
    create.add_argument("--revision", dest="revisions", action="append",
                        help="a board revision the bundle runs on (repeatable; default 1.0)")
    create.add_argument("--version", dest="bundle_version", required=True)
    create.add_argument("--image", action="append", required=True, metavar="rootfs=PATH")
    create.add_argument("--build-time", dest="build_time", help="ISO 8601 (default: now)")
    create.add_argument("-o", "--output", required=True, help="bundle file ('-' for stdout)")

    verify = b.add_parser("verify", help="check a bundle's signature and image hashes")
    verify.add_argument("--keyring", required=True, help="directory of trusted *.pem public keys")
    verify.add_argument("--compatible", help="also require this compatible string")
    verify.add_argument("bundle")

    info = b.add_parser("info", help="print a bundle's manifest (not verified)")
    info.add_argument("--json", action="store_true")
    info.add_argument("bundle")
    return parser


def _overrides(args) -> dict:
    keys = ("listen", "port", "data_dir", "compatible", "keyring", "boot_backend", "fw_env_config",
            "grubenv", "cmdline", "version_file", "chunk_size", "mdns", "apply_hostname",
            "log_level", "boot_check_timeout")
    overrides = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    if hasattr(args, "slot"):
        slots = {}
        for item in args.slot:
            name, sep, device = item.partition("=")
            if not sep or name not in ("A", "B") or not device:
                raise ConfigError(f"--slot expects A=DEVICE or B=DEVICE, not {item!r}")
            slots[name] = device
        overrides["slots"] = slots
    return overrides


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )


# ---------------------------------------------------------------------------------------
# bundle commands


def _keygen(args) -> int:
    from . import bundle

    out = Path(args.out)
    public, certificate = _key_sibling(out, ".pem"), _key_sibling(out, ".crt")
    for path in (out, public, certificate):
        if path.exists() and not args.force:
            print(f"{path} exists (use --force to overwrite)", file=sys.stderr)
            return EXIT_USAGE
    key = bundle.generate_private_key(args.algorithm)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bundle.private_key_pem(key))
    public.write_bytes(bundle.public_key_pem(key.public_key()))
    certificate.write_bytes(bundle.certificate_pem(bundle.make_certificate(key)))
    print(f"private key: {out}\npublic key:  {public}\ncertificate: {certificate}\n"
          f"key id:      {bundle.key_id(key.public_key())}")
    return EXIT_OK


def _key_sibling(key: Path, suffix: str) -> Path:
    """The file next to a private key with ``suffix`` (its public key, its certificate)."""
    sibling = key.with_suffix(suffix)
    return key.with_name(key.name + suffix) if sibling == key else sibling


@contextlib.contextmanager
def _rich_progress(enabled: bool):
    """rich's progress bar on stderr (the ``progress`` extra), or ``None`` when not
    ``enabled`` or rich is not installed."""
    if enabled:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
        except ImportError:
            pass
        else:
            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), console=Console(stderr=True)) as bar:
                yield bar
            return
    yield None


def _create(args) -> int:
    from . import bundle

    images = {}
    for item in args.image:
        slot_class, sep, path = item.partition("=")
        if not sep or slot_class not in bundle.SLOT_CLASSES or not path:
            print(f"--image expects rootfs=PATH, not {item!r}", file=sys.stderr)
            return EXIT_USAGE
        images[slot_class] = path
    try:
        key = bundle.load_private_key(args.key)
        cert = args.cert or _key_sibling(Path(args.key), ".crt")
        certificate = (bundle.load_certificate(cert, key) if args.cert or Path(cert).exists()
                       else bundle.make_certificate(key))
        total = sum(os.path.getsize(p) for p in images.values())
    except (OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    to_stdout = args.output == "-"
    try:
        out = sys.stdout.buffer if to_stdout else open(args.output + ".part", "wb")
        with _rich_progress(sys.stderr.isatty()) as bar:
            tasks = {phase: bar.add_task(label, total=total)
                     for phase, label in (("hash", "hashing"), ("write", "writing"))} if bar else {}
            manifest = bundle.write_bundle(
                out, key, certificate, args.compatible, args.revisions or ["1.0"], args.bundle_version, images,
                build_time=args.build_time,
                progress=(lambda phase, n: bar.advance(tasks[phase], n)) if bar else None)
        out.flush()
        if not to_stdout:
            os.fsync(out.fileno())
            out.close()
            os.replace(args.output + ".part", args.output)
    except (OSError, UpdateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not to_stdout:
        print(f"{args.output}: {manifest.compatible} {manifest.version}, "
              f"{manifest.rootfs.size} bytes, sha256 {manifest.rootfs.sha256}")
    return EXIT_OK


def _run_on_bundle(path: str, read):
    """``asyncio.run(read(f))`` on the bundle file at ``path``: ``(result, None)``, or
    ``(None, exit status)`` after printing the I/O error or the rejection."""
    try:
        with open(path, "rb") as f:
            return asyncio.run(read(f)), None
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return None, EXIT_USAGE
    except UpdateError as e:
        print(f"REJECTED {e.code}: {e.message}", file=sys.stderr)
        return None, EXIT_REJECTED


def _verify(args) -> int:
    from . import bundle

    keyring = bundle.load_keyring(args.keyring)
    head, status = _run_on_bundle(args.bundle, lambda f: bundle.verify_stream(f, keyring, args.compatible))
    if head is None:
        return status
    m = head.manifest
    print(f"OK {m.compatible} {m.version}: signed by {head.key_id}, "
          f"{head.image.filename} {head.image.size} bytes sha256 {head.image.sha256}")
    return EXIT_OK


async def _read_unverified(f) -> tuple:
    """``(manifest, raw signature)`` of a bundle, nothing verified."""
    from . import bundle

    raw, signature = await bundle.read_signed_manifest(bundle.file_source(f, 64 * 1024))
    return bundle.parse_manifest(raw), signature


def _info(args) -> int:
    from . import bundle

    result, status = _run_on_bundle(args.bundle, _read_unverified)
    if result is None:
        return status
    manifest, signature = result
    signers = bundle.signer_key_ids(signature)
    if args.json:
        print(json.dumps({"manifest": manifest.as_dict(), "signers": signers}, indent=2))
        return EXIT_OK
    print(f"compatible: {manifest.compatible} (revisions {', '.join(manifest.revisions)})\n"
          f"version:    {manifest.version}\nbuild time: {manifest.build_time}")
    for image in manifest.images:
        print(f"image:      {image.slot_class} {image.filename} {image.size} bytes sha256 {image.sha256}")
    print(f"signed by:  {', '.join(signers) or 'no key'} (not verified)")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# install


def _install(args, config) -> int:
    """``update-server install BUNDLE``: exit 0 installed (and selected unless
    ``--no-commit``), 1 refused or failed (the booted slot and the boot order unchanged),
    2 unreadable file."""
    from . import local_install

    try:
        with _install_progress(Path(args.bundle).name) as show:
            session = asyncio.run(local_install.install(config, args.bundle, args.allow_downgrade,
                                                        args.commit, show))
    except UpdateError as e:
        print(f"update-server install: refused: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_REJECTED
    except OSError as e:
        print(f"update-server install: {e}", file=sys.stderr)
        return EXIT_USAGE
    slot, version = session.progress.target_slot, session.progress.version
    if args.commit:
        print(f"installed {version} in slot {slot}, selected for the next boot: restart to use it")
    else:
        print(f"installed {version} in slot {slot}, not selected (--no-commit)")
    return EXIT_OK


@contextlib.contextmanager
def _install_progress(name: str):
    """A callback showing an install's :class:`~update_server.install.Progress`: rich's
    bar where rich is installed, else a line on stderr per stage and every 10 % written."""
    with _rich_progress(True) as bar:
        if bar:
            task = bar.add_task(name, total=None)
            yield lambda p: bar.update(task, description=f"{name}: {p.stage}",
                                       completed=p.bytes_written, total=p.total_bytes or None)
            return
        shown = [None]

        def plain(p) -> None:
            step = (p.stage, p.bytes_written * 10 // max(p.total_bytes, 1))
            if step != shown[0]:
                shown[0] = step
                print(f"{name}: {p.stage} {p.bytes_written * 100 // max(p.total_bytes, 1)} %",
                      file=sys.stderr)
        yield plain


# ---------------------------------------------------------------------------------------


def main(argv: list | None = None) -> int:
    """Entry point of ``update-server``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bundle":
        _setup_logging("warning")
        commands = {"keygen": _keygen, "create": _create, "verify": _verify, "info": _info}
        if args.bundle_command not in commands:
            parser.parse_args(["bundle", "--help"])
        return commands[args.bundle_command](args)

    try:
        config = load_config(getattr(args, "config", None), _overrides(args))
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(config.log_level)
    if args.command == "provision":
        from . import provision

        try:
            provision.run(config, args.boot_dir)
        except Exception:  # provisioning must never fail the boot
            logging.getLogger(__name__).exception("provisioning failed")
        return EXIT_OK
    if args.command == "boot-check":
        from . import bootcheck

        return bootcheck.run(config)
    if args.command == "install":
        return _install(args, config)
    from . import api

    api.run(config)
    return EXIT_OK
