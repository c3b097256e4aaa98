"""``ot2 flash IMAGE DEVICE``: write a card image, read it back, provision the boot partition.

1. Settings for ``robot.toml`` (``--name``, ``--ssh-key``, ``--wifi-*``, ``--timezone``, ``--rollout-*``)
   are validated with the update server's own rules before anything is written.
2. The image and its block map (``IMAGE.bmap``) are checked: the bmap file's own
   checksum, and the image size against the size the bmap gives.
3. The target is inspected: a regular file, a device that is mounted (or under a
   device-mapper/RAID holder), holds the running system, or is not removable is refused
   unless ``--force``.  A partition, a too-small device, or a character device never.
4. Writing: with a bmap, only the mapped blocks, through ``bmaptool copy`` when it is
   installed (it checks every range's checksum as it copies), else by the built-in
   writer (same checks); without a bmap the whole image.  Then fsync.
5. The page cache of the target is dropped (fsync, ``POSIX_FADV_DONTNEED``, ``BLKFLSBUF``)
   and what was written is read back and compared with the image byte for byte; the
   differing byte ranges are reported.
6. ``robot.toml`` is copied onto the first FAT partition with mtools
   (``mcopy -i DEVICE@@OFFSET``, no mount needed), flushed, and read back.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from . import bmap as bmap_mod
from .errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, ClientError, UsageError

CHUNK = 4 << 20  # bytes per read/write
BLKFLSBUF = 0x1261
BLKGETSIZE64 = 0x80081272
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr", "/var", "/etc", "/home", "/opt")


class Refused(ClientError):
    """The target is refused without ``--force`` (exit 4)."""

    @property
    def exit_status(self) -> int:
        return EXIT_REFUSED


class FlashError(ClientError):
    """Writing or read-back failed (exit 1); ``bad_ranges``: ``[(start, end)]`` bytes."""

    def __init__(self, code: str, message: str, bad_ranges=()):
        super().__init__(code, message)
        self.bad_ranges = list(bad_ranges)

    @property
    def exit_status(self) -> int:
        return EXIT_FAILED

    def as_dict(self) -> dict:
        d = super().as_dict()
        if self.bad_ranges:
            d["bad_ranges"] = [{"start": s, "end": e} for s, e in self.bad_ranges]
        return d


def before_verify(device: str) -> None:
    """Called between writing and read-back (a seam for tests; does nothing)."""


# ---------------------------------------------------------------------------------------
# the target


@dataclass
class TargetInfo:
    path: str
    kind: str  # block | file | new
    size: int | None = None  # bytes (None for a file: it grows)
    disk: str | None = None
    reasons: list = field(default_factory=list)  # why it is refused without --force


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _dev(text: str) -> tuple | None:
    try:
        major, minor = text.split(":")
        return int(major), int(minor)
    except ValueError:
        return None


def _below(dev: tuple, seen=None) -> set:
    """``dev`` and every device it is built on (device-mapper, RAID: ``slaves``)."""
    seen = seen if seen is not None else set()
    if dev in seen:
        return seen
    seen.add(dev)
    slaves = f"/sys/dev/block/{dev[0]}:{dev[1]}/slaves"
    try:
        for name in os.listdir(slaves):
            d = _dev(_read(os.path.join(slaves, name, "dev")))
            if d:
                _below(d, seen)
    except OSError:
        pass
    return seen


def _mounts() -> list:
    """``[(dev, mount point, source)]`` from mountinfo, plus swap devices."""
    out = []
    for line in _read("/proc/self/mountinfo").splitlines():
        parts = line.split()
        if len(parts) < 10:
            continue
        dev = _dev(parts[2])
        sep = parts.index("-") if "-" in parts else len(parts) - 3
        source = parts[sep + 2] if len(parts) > sep + 2 else ""
        if dev:
            out.append((dev, parts[4].replace("\\040", " "), source))
    for line in _read("/proc/swaps").splitlines()[1:]:
        name = line.split()[0] if line.split() else ""
        try:
            st = os.stat(name)
            if stat.S_ISBLK(st.st_mode):
                out.append(((os.major(st.st_rdev), os.minor(st.st_rdev)), "[swap]", name))
        except OSError:
            pass
    return out


def inspect_target(path: str) -> TargetInfo:
    """What ``path`` is and why it would be refused (nothing is opened for writing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return TargetInfo(path, "new", reasons=[f"{path} does not exist (with --force it is created as a file)"])
    except OSError as e:
        raise UsageError("bad-target", f"{path}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode):
        return TargetInfo(path, "file", reasons=[f"{path} is a regular file, not a device"])
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError("bad-target", f"{path} is neither a block device nor a regular file")
    dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    sysdir = os.path.realpath(f"/sys/dev/block/{dev[0]}:{dev[1]}")
    if os.path.exists(os.path.join(sysdir, "partition")):
        parent = os.path.basename(os.path.dirname(sysdir))
        raise UsageError("bad-target", f"{path} is a partition; give the whole device (/dev/{parent})")
    disk = os.path.basename(sysdir)
    info = TargetInfo(path, "block", disk=disk)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            info.size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        finally:
            os.close(fd)
    except OSError:
        info.size = int(_read(os.path.join(sysdir, "size")) or 0) * 512
    ours = {dev}
    for name in os.listdir(sysdir):
        if os.path.exists(os.path.join(sysdir, name, "partition")):
            d = _dev(_read(os.path.join(sysdir, name, "dev")))
            if d:
                ours.add(d)
    for d in sorted(ours):
        holders = f"/sys/dev/block/{d[0]}:{d[1]}/holders"
        try:
            held = os.listdir(holders)
        except OSError:
            held = []
        if held:
            info.reasons.append(f"/dev/{disk} is in use by {', '.join(held)} (device-mapper/RAID)")
    for mdev, mountpoint, source in _mounts():
        if ours & _below(mdev):
            if mountpoint in SYSTEM_MOUNTS:
                info.reasons.append(f"/dev/{disk} holds the running system ({source} on {mountpoint})")
            else:
                info.reasons.append(f"/dev/{disk} is mounted ({source} on {mountpoint})")
    removable = _read(os.path.join(sysdir, "removable")) == "1"
    if not removable and not disk.startswith("mmcblk") and "/usb" not in sysdir:
        info.reasons.append(f"/dev/{disk} is not a removable device (not USB, SD/MMC or removable media)")
    return info


# ---------------------------------------------------------------------------------------
# writing and reading back


def _progress_factory(enabled: bool, console):
    """``(context manager, start(label, total) -> advance(n))``."""
    if not enabled:
        class Null:
            def __enter__(self):
                return self

            def __exit__(self, *e):
                pass

        return Null(), (lambda label, total: (lambda n: None))
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=console)

    def start(label, total):
        task = bar.add_task(label, total=total)
        return lambda n: bar.advance(task, n)

    return bar, start


def _flush(fd: int, is_block: bool) -> None:
    """fsync, then drop the cached pages so that the next read comes from the medium."""
    os.fsync(fd)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    if is_block:
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        except OSError:
            pass


def _extents(bm, image_size: int) -> list:
    """``[(start, end, checksum, label)]`` byte ranges to write and compare."""
    if bm is None:
        return [(0, image_size, None, "the whole image")]
    out = []
    for r in bm.ranges:
        start, end = bm.byte_range(r)
        out.append((start, end, r.checksum, f"blocks {r.first}-{r.last}"))
    return out


def _range_text(start: int, end: int) -> str:
    return (f"bytes {start}-{end - 1} ({start / 1048576:.2f}-{end / 1048576:.2f} MiB, "
            f"512-byte sectors {start // 512}-{(end - 1) // 512})")


def write_builtin(image: str, device: str, extents: list, checksum_type: str | None,
                  truncate_to: int | None, advance) -> int:
    """Copy the extents of ``image`` to ``device`` at the same offsets; returns bytes written.

    A range whose checksum does not match raises :class:`FlashError` naming it.
    """
    import hashlib

    flags = os.O_WRONLY | (os.O_CREAT if truncate_to is not None else 0)
    written = 0
    with open(image, "rb", buffering=0) as src:
        fd = os.open(device, flags, 0o644)
        try:
            if truncate_to is not None:  # a file target: the unmapped parts read as zeros
                os.ftruncate(fd, 0)
                os.ftruncate(fd, truncate_to)
            for start, end, checksum, label in extents:
                h = hashlib.new(checksum_type) if checksum and checksum_type else None
                pos = start
                while pos < end:
                    data = os.pread(src.fileno(), min(CHUNK, end - pos), pos)
                    if not data:
                        raise UsageError("image-too-short", f"{image} ends at byte {pos}, inside {label}")
                    if h:
                        h.update(data)
                    view = memoryview(data)
                    while view:
                        n = os.pwrite(fd, view, pos)
                        view = view[n:]
                        pos += n
                        written += n
                        advance(n)
                if h and h.hexdigest() != checksum:
                    raise FlashError("image-checksum-mismatch",
                                     f"image {label} ({_range_text(start, end)}) do not match the bmap's "
                                     f"checksum: the image is damaged or not the one the bmap was made for; "
                                     f"the card holds a partial image", [(start, end)])
            _flush(fd, stat.S_ISBLK(os.fstat(fd).st_mode))
        finally:
            os.close(fd)
    return written


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def write_bmaptool(image: str, device: str, bm, advance) -> int:
    """``bmaptool copy`` with a progress bar fed from the process' write counter."""
    proc = subprocess.Popen(["bmaptool", "-q", "copy", "--bmap", bm.path, image, device],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    total = bm.mapped_bytes
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    reported = 0
    while proc.poll() is None:
        try:
            m = re.search(r"^wchar:\s*(\d+)", _read(f"/proc/{proc.pid}/io"), re.M)
            done = min(int(m.group(1)), total) if m else reported
        except ValueError:
            done = reported
        if done > reported:
            advance(done - reported)
            reported = done
        time.sleep(0.1)
    reader.join(10)
    text = _ANSI.sub("", (stderr[0] if stderr else b"").decode(errors="replace"))
    if proc.returncode != 0:
        errors = [line.split("ERROR:", 1)[1].strip() for line in text.splitlines() if "ERROR:" in line]
        errors = [e for e in errors if not e.startswith("An error occurred")] or [text.strip()[-300:]]
        m = re.search(r"checksum mismatch for blocks range (\d+)-(\d+)", text)
        if m:
            first, last = int(m.group(1)), int(m.group(2))
            start, end = first * bm.block_size, min((last + 1) * bm.block_size, bm.image_size)
            raise FlashError("image-checksum-mismatch",
                             f"image blocks {first}-{last} ({_range_text(start, end)}) do not "
                             f"match the bmap's checksum: the image is damaged or not the one the bmap was made "
                             f"for; the card holds a partial image", [(start, end)])
        raise FlashError("write-failed", f"bmaptool copy failed: {errors[-1]}")
    advance(max(0, total - reported))
    fd = os.open(device, os.O_RDONLY)
    try:
        _flush(fd, stat.S_ISBLK(os.fstat(fd).st_mode))
    finally:
        os.close(fd)
    return total


def verify(image: str, device: str, extents: list, advance, block: int = 4096) -> list:
    """Read ``extents`` back from ``device`` and compare with ``image``; the differing
    ``[(start, end)]`` byte ranges (``block``-aligned, merged)."""
    bad = []
    fd = os.open(device, os.O_RDONLY)
    try:
        _flush(fd, stat.S_ISBLK(os.fstat(fd).st_mode))
        with open(image, "rb", buffering=0) as src:
            for start, end, _, _ in extents:
                pos = start
                while pos < end:
                    n = min(CHUNK, end - pos)
                    want = os.pread(src.fileno(), n, pos)
                    got = os.pread(fd, n, pos)
                    if got != want:
                        for off in range(0, n, block):
                            if got[off:off + block] != want[off:off + block]:
                                s, e = pos + off, min(pos + off + block, end)
                                if bad and bad[-1][1] == s:
                                    bad[-1] = (bad[-1][0], e)
                                else:
                                    bad.append((s, e))
                    pos += n
                    advance(n)
    finally:
        os.close(fd)
    return bad


# ---------------------------------------------------------------------------------------
# the boot partition


def boot_partition_offset(device: str) -> int:
    """Byte offset of the first FAT partition in the MBR of ``device``."""
    with open(device, "rb") as f:
        mbr = f.read(512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        raise FlashError("no-boot-partition", f"{device} has no MBR partition table after writing")
    for i in range(4):
        entry = mbr[446 + 16 * i: 462 + 16 * i]
        ptype = entry[4]
        start, sectors = struct.unpack("<II", entry[8:16])
        if ptype in FAT_TYPES and sectors:
            return start * 512
    raise FlashError("no-boot-partition", f"{device} has no FAT partition to hold robot.toml")


def _mtools(args: list, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLS_NO_VFAT="0")
    try:
        return subprocess.run(args, env=env, capture_output=True, timeout=60, **kw)
    except FileNotFoundError:
        raise UsageError("missing-tool", "mtools (mcopy, mtype) is needed to write robot.toml") from None


def write_provisioning(device: str, text: str) -> int:
    """Copy ``text`` as ``robot.toml`` onto the card's boot partition, then read it back."""
    offset = boot_partition_offset(device)
    image_spec = f"{device}@@{offset}"
    with tempfile.TemporaryDirectory(prefix="ot2-flash-") as tmp:  # mode 0700: the PSK
        src = os.path.join(tmp, "robot.toml")
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        p = _mtools(["mcopy", "-o", "-i", image_spec, src, "::robot.toml"])
        if p.returncode != 0:
            raise FlashError("provisioning-failed",
                             f"mcopy could not write robot.toml: {p.stderr.decode(errors='replace').strip()}")
    fd = os.open(device, os.O_RDONLY)
    try:
        _flush(fd, stat.S_ISBLK(os.fstat(fd).st_mode))
    finally:
        os.close(fd)
    p = _mtools(["mtype", "-i", image_spec, "::robot.toml"])
    if p.returncode != 0 or p.stdout.decode("utf-8", "replace") != text:
        raise FlashError("provisioning-failed", "robot.toml reads back differently from the card")
    return offset


def provisioning_text(args) -> str | None:
    """``robot.toml`` from the command line options (None if none given); UsageError if a
    value would be refused by the robot."""
    from update_server import provision
    from update_server.errors import UpdateError

    keys = []
    for path in args.ssh_key or []:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                keys += [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError("bad-key", f"{path}: {getattr(e, 'strerror', None) or e}") from None
        if not keys:
            raise UsageError("bad-key", f"{path}: no key in the file")
    wifi = None
    if args.wifi_ssid is not None or args.wifi_psk is not None or args.wifi_country is not None:
        if args.wifi_ssid is None:
            raise UsageError("bad-field", "--wifi-psk/--wifi-country need --wifi-ssid")
        wifi = {"ssid": args.wifi_ssid, "psk": args.wifi_psk, "country": args.wifi_country}
    rollout = None
    if args.rollout_server or args.rollout_tenant or args.rollout_id or args.rollout_token:
        if not args.rollout_server:
            raise UsageError("bad-field", "--rollout-tenant/--rollout-id/--rollout-token need --rollout-server")
        rollout = {"server": args.rollout_server, "tenant": args.rollout_tenant, "controller_id": args.rollout_id,
                   "target_token": args.rollout_token}
    if args.name is None and not keys and wifi is None and args.timezone is None and rollout is None:
        return None
    try:
        return provision.render(name=args.name, ssh_keys=keys, wifi=wifi, timezone=args.timezone, rollout=rollout)
    except UpdateError as e:
        raise UsageError(e.code, e.message) from None


# ---------------------------------------------------------------------------------------
# the whole operation


def flash(image: str, device: str, *, bmap_path: str | None = None, use_bmap: bool = True,
          use_bmaptool: bool = True, force: bool = False, verify_after: bool = True,
          provisioning: str | None = None, progress=None, warn=None) -> dict:
    """Flash ``image`` to ``device``; returns the result dict.  Raises UsageError (2),
    Refused (4) or FlashError (1)."""
    progress = progress or (lambda label, total: (lambda n: None))
    warn = warn or (lambda text: None)
    try:
        image_size = os.path.getsize(image)
    except OSError as e:
        raise UsageError("bad-image", f"{image}: {e.strerror or e}") from None
    bm = None
    if use_bmap:
        bmap_path = bmap_path or bmap_mod.find_bmap(image)
        if bmap_path:
            bm = bmap_mod.parse(bmap_path)
            if image_size < bm.image_size:
                raise UsageError("image-too-short", f"{image} has {image_size} bytes, its bmap "
                                 f"{bmap_path} says {bm.image_size}: the image is truncated")
            if image_size != bm.image_size:
                raise UsageError("image-size-mismatch", f"{image} has {image_size} bytes, its bmap "
                                 f"{bmap_path} says {bm.image_size}: not the image the bmap was made for")
    target = inspect_target(device)
    if target.reasons:
        if not force:
            raise Refused("refused", "; ".join(target.reasons) + " (use --force to write anyway)")
        for reason in target.reasons:
            warn(f"--force: {reason}")
    if target.size is not None and target.size < image_size:
        raise UsageError("device-too-small", f"{device} has {target.size} bytes, the image needs {image_size}")
    extents = _extents(bm, image_size)
    to_write = sum(e - s for s, e, _, _ in extents)
    method = "bmaptool" if (bm and use_bmaptool and shutil.which("bmaptool")) else (
        "bmap" if bm else "whole-image")
    result = {"ok": False, "image": image, "device": device, "bmap": bm.path if bm else None,
              "method": method, "image_size": image_size, "bytes_written": 0, "write_seconds": 0.0,
              "write_mb_s": 0.0, "verified": False, "verify_seconds": 0.0, "bad_ranges": [],
              "provisioned": False, "forced": target.reasons if force else []}
    t0 = time.monotonic()
    advance = progress("writing", to_write)
    if method == "bmaptool":
        written = write_bmaptool(image, device, bm, advance)
    else:
        truncate_to = image_size if target.kind in ("file", "new") else None
        written = write_builtin(image, device, extents, bm.checksum_type if bm else None, truncate_to, advance)
    result["write_seconds"] = time.monotonic() - t0
    result["bytes_written"] = written
    result["write_mb_s"] = written / result["write_seconds"] / 1e6 if result["write_seconds"] > 0 else 0.0
    if verify_after:
        before_verify(device)
        t0 = time.monotonic()
        bad = verify(image, device, extents, progress("verifying", to_write))
        result["verify_seconds"] = time.monotonic() - t0
        if bad:
            shown = "; ".join(_range_text(s, e) for s, e in bad[:8])
            more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
            raise FlashError("verify-mismatch",
                             f"{device} returned different data than was written at {shown}{more}: "
                             f"the card is bad (or was changed while flashing)", bad)
        result["verified"] = True
    if provisioning is not None:
        result["boot_partition_offset"] = write_provisioning(device, provisioning)
        result["provisioned"] = True
    result["ok"] = True
    return result


def flash_command(args, out) -> int:
    """``ot2 flash`` (arguments from :mod:`ot2_client.cli`)."""
    try:
        text = provisioning_text(args)
        bar_cm, start = _progress_factory(out.progress, out.err)
        with bar_cm:
            result = flash(args.image, args.device, bmap_path=args.bmap, use_bmap=not args.no_bmap,
                           use_bmaptool=not args.no_bmaptool, force=args.force,
                           verify_after=not args.no_verify, provisioning=text, progress=start,
                           warn=out.note)
    except ClientError as e:
        if out.json:
            out.emit({"ok": False, "image": args.image, "device": args.device, **e.as_dict()})
        else:
            out.error(f"{e.code}: {e.message}")
        return e.exit_status
    if text is not None:
        import tomllib

        result["provisioned_fields"] = sorted(tomllib.loads(text))
    if out.json:
        out.emit(result)
        return EXIT_OK
    mb = result["bytes_written"] / 1e6
    out.console.print(
        f"{args.device}: wrote {mb:.1f} MB of {result['image_size'] / 1e6:.1f} MB "
        f"({result['method']}) in {result['write_seconds']:.1f} s, {result['write_mb_s']:.1f} MB/s", markup=False)
    if result["verified"]:
        out.console.print(f"{args.device}: read back and verified in {result['verify_seconds']:.1f} s", markup=False)
    else:
        out.console.print(f"{args.device}: NOT verified (--no-verify)", markup=False)
    if result["provisioned"]:
        out.console.print(f"{args.device}: robot.toml ({', '.join(result['provisioned_fields'])}) written to "
                          f"the boot partition; the robot imports it on its first boot", markup=False)
    return EXIT_OK
