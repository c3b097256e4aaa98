"""The update session: begin, receive the bundle, commit, cancel, status, expiry.

A session is the life of one update, named by a secret ``token``; its stage is the
:class:`~update_server.install.Progress` of its install.  At most one session is active
(not in stage ``error``) at a time, across processes too: the active session holds an
exclusive ``flock`` on ``session.lock`` in the state directory, so the server and
``update-server install`` (:mod:`update_server.local_install`) never write the inactive
slot at once.  :class:`Sessions` is the only code that changes a session's stage, but for
the install engine it calls (:class:`~update_server.install.Installer`, which moves an
upload through validating, writing and done); the HTTP handlers of
:mod:`update_server.api` (the ``/server/update`` endpoints of ``update_server/README.md``)
parse a request, call one method here and answer with what it returns.

Stages (``docs/architecture.md`` has the slot contract behind them)::

    begin -> awaiting-file -> upload: validating -> writing -> done -> commit: ready-for-restart
                     any failure, cancel, or idle expiry -> error (with failed_stage)

A session idle in ``awaiting-file`` or ``done`` for more than ``session_idle_timeout``
seconds ends as ``session-expired`` (checked when a session is looked up or begun, and by
a timer, so that the lock is freed for another process).
A rejected or cancelled bundle never touches the booted slot or the first entry of
BOOT_ORDER; a cancel after the commit makes the written slot bad again.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from . import state as state_mod
from .bundle import ChunkSource
from .errors import UpdateError
from .install import AWAITING_FILE, DONE, ERROR, READY_FOR_RESTART, VALIDATING, Installer, Progress

log = logging.getLogger(__name__)

RECENT_SESSIONS = 8  # ended sessions whose status can still be read
EXPIRY_SLACK = 1.0   # s after the idle timeout the expiry timer runs (timers may fire a tick early)


@dataclass
class Session:
    """One update session (``token``) and its install progress."""

    token: str
    progress: Progress = field(default_factory=Progress)
    task: asyncio.Future | None = None
    touched: float = field(default_factory=time.monotonic)  # begin, or the end of the upload
    allow_downgrade: bool = False

    def as_dict(self) -> dict:
        """``{token, stage, progress, ...}``: :meth:`Progress.as_dict` with the token."""
        return {"token": self.token, **self.progress.as_dict()}


class _ProcessLock:
    """An exclusive, non-blocking ``flock`` on ``path``; the kernel drops it when the
    process ends, however it ends."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False if another open file (another process) holds it."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Sessions:
    """The update sessions of one server: the active one and the recent ones.

    ``config`` supplies ``session_idle_timeout`` and what :class:`Installer` needs;
    ``boot`` is the :class:`~update_server.bootctl.BootControl`, ``store`` the
    :class:`~update_server.state.StateStore`, ``boot_id()`` the kernel's boot id.
    """

    def __init__(self, config, boot, store: state_mod.StateStore, boot_id: Callable[[], str]):
        self.config = config
        self.boot = boot
        self.store = store
        self.boot_id = boot_id
        self.installer = Installer(config, boot, store)
        self.current: Session | None = None
        self.recent: OrderedDict[str, Session] = OrderedDict()
        self._lock = _ProcessLock(store.directory / "session.lock")

    def close(self) -> None:
        """At shutdown: stop the installer's writer thread and free the session lock."""
        self.installer.close()
        self._lock.release()

    def _end(self, session: Session) -> None:
        """``session`` is no longer the active one: another may begin."""
        if self.current is session:
            self.current = None
            self._lock.release()

    def _expire_later(self) -> None:
        asyncio.get_running_loop().call_later(self.config.session_idle_timeout + EXPIRY_SLACK,
                                              self._expire_idle)

    def _expire_idle(self) -> None:
        """End the active session if it waited for its file, or for its commit, for more
        than ``session_idle_timeout`` seconds (stage ``error``, ``session-expired``)."""
        current = self.current
        if current is None or current.task is not None \
                or current.progress.stage not in (AWAITING_FILE, DONE):
            return
        if time.monotonic() - current.touched > self.config.session_idle_timeout:
            log.warning("update session expired in stage %s", current.progress.stage)
            current.progress.fail("session-expired", "the session was idle for too long")
            self._end(current)

    def get(self, token: str) -> Session:
        """The session named ``token`` (active or recent); UpdateError ``bad-token``."""
        self._expire_idle()
        session = self.recent.get(token)
        if session is None:
            raise UpdateError("bad-token", "no such update session")
        return session

    def awaiting_file(self, token: str) -> Session:
        """The session ``token`` if it still waits for its bundle; UpdateError
        ``bad-token`` or ``file-already-sent`` (409)."""
        session = self.get(token)
        if session.progress.stage != AWAITING_FILE:
            raise UpdateError("file-already-sent", f"session is {session.progress.stage}")
        return session

    def begin(self, allow_downgrade: bool = False) -> Session:
        """A new session in stage ``awaiting-file``; ``allow_downgrade`` lets it install a
        bundle older than the running system.  UpdateError ``session-already-active``
        (409) while another session is active, here or in another process;
        ``unknown-boot-slot`` (409) when the booted slot is unknown (nothing could be
        installed).  Must be called in a running event loop (the expiry timer)."""
        self._expire_idle()
        current = self.current
        if current is not None:
            raise UpdateError("session-already-active",
                              f"an update session is already {current.progress.stage}")
        self.boot.inactive_slot()  # unknown-boot-slot before anything starts
        if not self._lock.acquire():
            raise UpdateError("session-already-active",
                              "an update session is active in another process")
        session = Session(secrets.token_hex(16), allow_downgrade=allow_downgrade)
        self.current = session
        self._expire_later()
        self.recent[session.token] = session
        while len(self.recent) > RECENT_SESSIONS:
            self.recent.popitem(last=False)
        return session

    async def upload(self, token: str, open_source: Callable[[], Awaitable[ChunkSource]],
                     allow_downgrade: bool = False) -> Session:
        """Install the bundle that ``open_source()`` streams into session ``token``; returns
        the session in stage ``done``.

        ``open_source`` may raise UpdateError (a malformed body): the session then fails
        with its code.  ``allow_downgrade`` adds to the session's own.  Raises UpdateError
        (``bad-token``, ``file-already-sent``, ``cancelled``, or the install's error; the
        session is then in stage ``error``), or ``asyncio.CancelledError`` when the calling
        task itself is cancelled (the caller went away; the install is stopped too).
        """
        session = self.awaiting_file(token)
        progress = session.progress
        progress.stage = VALIDATING
        progress.message = "receiving the bundle"
        try:
            try:
                source = await open_source()
            except UpdateError as e:
                progress.fail(e.code, e.message)
                raise
            if progress.cancel_requested:
                raise UpdateError("cancelled", "install cancelled")
            session.task = asyncio.ensure_future(self.installer.install(
                source, progress, session.allow_downgrade or allow_downgrade))
            try:
                await session.task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the caller went away; the install task was cancelled with it
                raise UpdateError("cancelled", "install cancelled") from None
        finally:
            session.task = None
            session.touched = time.monotonic()
            if progress.stage not in (DONE, ERROR):  # the caller went away before the install began
                progress.fail("truncated", "upload interrupted")
            if progress.stage == ERROR:
                self._end(session)
            else:
                self._expire_later()
        return session

    async def commit(self, token: str) -> Session:
        """Select the slot written by session ``token`` for the next boot (stage
        ``ready-for-restart``); again is a no-op.  UpdateError ``bad-token``, ``not-ready``
        (409: nothing written yet, or the session failed)."""
        session = self.get(token)
        progress = session.progress
        if progress.stage == DONE:
            env = await asyncio.to_thread(state_mod.commit, self.store, self.boot, progress.target_slot,
                                        progress.version, self.boot_id())
            progress.stage = READY_FOR_RESTART
            progress.message = f"slot {progress.target_slot} selected for the next boot; restart to use it"
            log.info("committed slot %s (%s): %s", progress.target_slot, progress.version, env)
        elif progress.stage != READY_FOR_RESTART:
            raise UpdateError("not-ready", f"nothing to commit: session is {progress.stage}")
        return session

    async def cancel(self, token: str | None, trusted: bool) -> Session | None:
        """Stop the active session, even mid-write (waits up to 30 s for the writer), and
        undo its commit if it had one; returns it (stage ``error``, ``cancelled``), or
        ``None`` when no session is active.  Unless the caller is ``trusted`` (a trusted
        interface), ``token`` must name the active session: UpdateError ``bad-token``."""
        self._expire_idle()
        session = self.current
        if session is None:
            return None
        if not trusted and not (isinstance(token, str) and secrets.compare_digest(token, session.token)):
            raise UpdateError("bad-token", "name the session's token to cancel it")
        progress = session.progress
        progress.cancel_requested = True
        if session.task is not None and not session.task.done():
            session.task.cancel()
            await asyncio.wait({session.task}, timeout=30)
        elif progress.stage == READY_FOR_RESTART:
            await asyncio.to_thread(state_mod.cancel_commit, self.store, self.boot, progress.target_slot)
        if progress.stage != ERROR:
            progress.fail("cancelled", "install cancelled")
        self._end(session)
        return session
