"""``update-server install BUNDLE``: install a bundle from a local file (a USB drive, a file
on ``/data``) on a robot without a network, as ``rauc install`` or ``mender-update install``
do: the update session of :mod:`update_server.session` run in this process, so the checks,
the slot writing and the boot selection are those of an upload over the network.  The
session lock keeps it and the running server from writing the inactive slot at once: while
one has a session, the other's is refused (``session-already-active``).

Needs what the server needs: root, and the configuration (slots, keyring, boot env).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from . import bootctl, bundle
from . import state as state_mod
from .install import Progress
from .session import Session, Sessions

READ_SIZE = 1 << 20      # bytes read from the file at a time
REPORT_EVERY = 0.2       # s between two calls of the progress callback


async def install(config, path: str, allow_downgrade: bool = False, commit: bool = True,
                  on_progress: Callable[[Progress], None] | None = None) -> Session:
    """Install the bundle file ``path``: begin a session, stream the file into the inactive
    slot, and unless ``commit`` is false select that slot for the next boot.
    ``on_progress(progress)`` is called every ``REPORT_EVERY`` seconds while it runs and
    once at the end.

    Returns the session (stage ``ready-for-restart``, or ``done`` without ``commit``).
    Raises UpdateError when the bundle is refused or the install fails (the booted slot
    and the boot selection are then unchanged; ``session-already-active`` while the
    server has a session), ``OSError`` when the file cannot be opened.
    """
    report = on_progress or (lambda progress: None)
    with open(path, "rb") as f:
        async def open_source() -> bundle.ChunkSource:
            return bundle.file_source(f, READ_SIZE)

        sessions = Sessions(config, bootctl.from_config(config), state_mod.StateStore(config.state_dir),
                            lambda: state_mod.read_boot_id(config.boot_id_file))
        try:
            session = sessions.begin(allow_downgrade)
            reporter = asyncio.ensure_future(_report(session.progress, report))
            try:
                await sessions.upload(session.token, open_source)
                if commit:
                    await sessions.commit(session.token)
            finally:
                reporter.cancel()
                report(session.progress)
        finally:
            sessions.close()
    return session


async def _report(progress: Progress, report: Callable[[Progress], None]) -> None:
    while True:
        report(progress)
        await asyncio.sleep(REPORT_EVERY)
