"""Install engine: a bundle stream into the inactive slot, verified before and after.

Order of work (nothing is written, and the boot environment is not touched, until the
bundle has passed every check that can be made before the image data arrives):

1. ``validating``: manifest, signature against the keyring, ``compatible``, image size
   against the slot's capacity (size of the block device or file), image header.
2. The target slot is marked bad (removed from BOOT_ORDER, 0 tries).
3. ``writing``: the image goes to the slot device at offset 0 in ``chunk_size`` chunks
   while being hashed; two buffers alternate so that reading the next chunk from the
   network overlaps hashing and writing the previous one in a worker thread.  Then fsync.
4. The SHA-256 and size must match the manifest and only zero padding may follow.
5. ``done``: the slot may be committed (selected for the next boot) by the caller.

Any failure leaves the target slot marked bad and the booted slot and the first entry of
BOOT_ORDER unchanged, and ends the install in stage ``error`` with the stage it failed in
(``failed_stage``), a code and a message -- an unexpected exception too (``internal-error``;
``write-failed`` for an I/O error such as a full ``/data``): an install is never left
``validating`` or ``writing``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field

from . import bundle
from . import state as state_mod
from .versions import is_downgrade
from .bootctl import BootControl
from .errors import UpdateError

log = logging.getLogger(__name__)

AWAITING_FILE = "awaiting-file"
VALIDATING = "validating"
WRITING = "writing"
DONE = "done"
READY_FOR_RESTART = "ready-for-restart"
ERROR = "error"
STAGES = (AWAITING_FILE, VALIDATING, WRITING, DONE, READY_FOR_RESTART, ERROR)


@dataclass
class Progress:
    """Observable state of one install (sizes in bytes)."""

    stage: str = AWAITING_FILE
    bytes_written: int = 0
    total_bytes: int = 0
    message: str = "waiting for the bundle"
    error: str | None = None
    target_slot: str | None = None
    version: str | None = None
    sha256: str | None = None
    cancel_requested: bool = False
    failed_stage: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def fraction(self) -> float:
        """0..1: 1 once done; while writing, the share of image bytes written."""
        if self.stage in (DONE, READY_FOR_RESTART):
            return 1.0
        if self.total_bytes:
            return min(1.0, self.bytes_written / self.total_bytes)
        return 0.0

    def fail(self, code: str, message: str) -> None:
        if self.stage != ERROR:
            self.failed_stage = self.stage
        self.stage = ERROR
        self.error = code
        self.message = message

    def as_dict(self) -> dict:
        """``{stage, progress, bytes_written, total_bytes, message, error?, ...}``."""
        body = {
            "stage": self.stage,
            "progress": round(self.fraction, 4),
            "bytes_written": self.bytes_written,
            "total_bytes": self.total_bytes,
            "message": self.message,
            "target_slot": self.target_slot,
            "version": self.version,
        }
        if self.error:
            body["error"] = self.error
            body["failed_stage"] = self.failed_stage
        return body


def slot_capacity(device: str) -> int:
    """Bytes a slot can hold: a block device's size or a regular file's size.

    Raises UpdateError ``slot-unavailable`` if the device cannot be opened.
    """
    try:
        st = os.stat(device)
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError as e:
        raise UpdateError("slot-unavailable", f"slot device {device}: {e.strerror}") from e


def _write_all(fd: int, hasher, view: memoryview) -> None:
    """Hash and write ``view`` (runs in a worker thread; both release the GIL)."""
    hasher.update(view)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Installer:
    """Installs bundles into the inactive slot of ``boot`` (see the module docstring).

    ``config`` supplies ``keyring``, ``effective_compatible()``, ``slot_device()``,
    ``chunk_size``; ``store`` is the :class:`~update_server.state.StateStore`.
    """

    def __init__(self, config, boot: BootControl, store: state_mod.StateStore):
        self.config = config
        self.boot = boot
        self.store = store
        # One worker thread for hashing and writing: chunks are strictly sequential, and
        # a single thread keeps the memory footprint (stacks, malloc arenas) small.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="slot-writer")

    def close(self) -> None:
        """Stop the writer thread (after the last install)."""
        self._writer.shutdown(wait=False)

    async def install(self, source: bundle.ChunkSource, progress: Progress,
                      allow_downgrade: bool = False) -> Progress:
        """Run one install from ``source``, updating ``progress``.

        A bundle whose version is lower than the running system's is refused
        (``downgrade``) unless ``allow_downgrade``.  Returns ``progress`` (stage ``done``).
        Raises UpdateError (stage ``error``; any other exception becomes ``internal-error``
        or, for an OSError, ``write-failed``) or ``asyncio.CancelledError`` (stage
        ``error``, ``cancelled``/``truncated``).
        """
        try:
            await self._install(source, progress, allow_downgrade)
        except UpdateError as e:
            log.warning("install failed: %s", e)
            progress.fail(e.code, e.message)
            raise
        except OSError as e:
            log.exception("install failed")
            progress.fail("write-failed", f"{progress.stage}: {e.strerror or e}")
            raise UpdateError("write-failed", progress.message) from e
        except Exception as e:  # the session must end, whatever broke
            log.exception("install failed")
            progress.fail("internal-error", f"{progress.stage}: unexpected {type(e).__name__}")
            raise UpdateError("internal-error", progress.message) from e
        except asyncio.CancelledError:
            if progress.cancel_requested:
                progress.fail("cancelled", "install cancelled")
            else:
                progress.fail("truncated", "upload interrupted")
            log.warning("install stopped: %s", progress.message)
            raise
        return progress

    async def _install(self, source: bundle.ChunkSource, progress: Progress, allow_downgrade: bool) -> None:
        loop = asyncio.get_running_loop()
        progress.stage = VALIDATING
        progress.message = "checking the bundle"
        keyring = bundle.load_keyring(self.config.keyring)
        head = await bundle.read_head(source, keyring, self.config.effective_compatible(),
                                      self.config.revision)
        image = head.image
        running = self.config.system_version().get("version")
        if not allow_downgrade and is_downgrade(head.manifest.version, running):
            raise UpdateError("downgrade", f"bundle {head.manifest.version} is older than the running "
                                           f"{running}; ask for it explicitly (allow_downgrade)")
        target = self.boot.inactive_slot()
        device = self.config.slot_device(target)
        capacity = slot_capacity(device)
        if image.size > capacity:
            raise UpdateError(
                "image-too-large",
                f"image has {image.size} bytes, slot {target} holds {capacity}",
            )
        progress.target_slot = target
        progress.version = head.manifest.version
        progress.total_bytes = image.size
        self._check_cancel(progress)
        try:
            fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise UpdateError("slot-unavailable", f"cannot open {device}: {e.strerror}") from e
        try:
            # Past this point the slot is no longer bootable until it is committed.
            await loop.run_in_executor(None, state_mod.begin_install, self.store, self.boot, target)
            progress.stage = WRITING
            progress.message = f"writing {head.manifest.version} to slot {target}"
            log.info("installing %s (%d bytes) into slot %s (%s)",
                     head.manifest.version, image.size, target, device)
            digest = await self._stream(source, fd, image.size, progress)
        finally:
            os.close(fd)
        if digest != image.sha256:
            raise UpdateError("hash-mismatch", f"image SHA-256 is {digest}, manifest says {image.sha256}")
        await bundle.read_tail(source, image)
        self._check_cancel(progress)
        await loop.run_in_executor(
            None, state_mod.record_installed, self.store, target, head.manifest.version, digest
        )
        progress.sha256 = digest
        progress.stage = DONE
        progress.message = f"{head.manifest.version} written to slot {target}; ready to commit"
        log.info("slot %s verified (%s)", target, digest)

    @staticmethod
    def _check_cancel(progress: Progress) -> None:
        if progress.cancel_requested:
            raise UpdateError("cancelled", "install cancelled")

    async def _stream(self, source: bundle.ChunkSource, fd: int, size: int, progress: Progress) -> str:
        """Copy ``size`` bytes from ``source`` to ``fd`` (offset 0); returns the sha256 hex."""
        loop = asyncio.get_running_loop()
        hasher = hashlib.sha256()
        chunk = min(self.config.chunk_size, max(size, 1))
        buffers = [bytearray(chunk), bytearray(chunk)]
        in_flight: asyncio.Future | None = None
        in_flight_size = 0
        remaining = size
        index = 0
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            while remaining:
                want = min(chunk, remaining)
                view = memoryview(buffers[index])[:want]
                got = await source.readinto(view)
                self._check_cancel(progress)
                if in_flight is not None:
                    await in_flight
                    progress.bytes_written += in_flight_size
                    in_flight = None
                if got != want:
                    raise UpdateError(
                        "truncated",
                        f"bundle ends after {progress.bytes_written + got} of {size} image bytes",
                    )
                in_flight = loop.run_in_executor(self._writer, _write_all, fd, hasher, view)
                in_flight_size = want
                remaining -= want
                index ^= 1
            if in_flight is not None:
                await in_flight
                progress.bytes_written += in_flight_size
                in_flight = None
            progress.message = "flushing to storage"
            await loop.run_in_executor(self._writer, os.fsync, fd)
        except OSError as e:
            raise UpdateError("write-failed", f"writing the slot failed: {e.strerror}") from e
        finally:
            if in_flight is not None and not in_flight.done():
                # Never close the fd under the worker thread: let the chunk finish.
                await asyncio.wait({in_flight})
        return hasher.hexdigest()
