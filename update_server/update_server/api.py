"""The HTTP API (aiohttp).  ``GET /openapi.json`` describes every endpoint.

Every error answer is a 4xx (or, for a broken machine, 5xx) with the JSON body
``{"error": code, "message": str}``; the codes are listed in
:data:`update_server.errors.HTTP_STATUS`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from . import __version__, bootctl, openapi, provision
from . import state as state_mod
from .bundle import ChunkSource
from .errors import UpdateError
from .install import (
    AWAITING_FILE,
    DONE,
    ERROR,
    READY_FOR_RESTART,
    VALIDATING,
    Installer,
    Progress,
)
from .name import Advertiser, NameStore, apply_hostname, hostname_for
from .sshkeys import KeyStore, peer_allowed

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024  # bytes
SESSION_IDLE_TIMEOUT = 600.0  # seconds an awaiting-file session may sit unused
RECENT_SESSIONS = 8
UPLOAD_READ_SIZE = 256 * 1024  # bytes per multipart read


@dataclass
class Session:
    """One update session (``token``) and its install progress."""

    token: str
    progress: Progress = field(default_factory=Progress)
    task: asyncio.Future | None = None
    created: float = field(default_factory=time.monotonic)

    @property
    def active(self) -> bool:
        return self.progress.stage != ERROR


def _error(code: str, message: str) -> web.Response:
    err = UpdateError(code, message)
    return web.json_response(err.as_dict(), status=err.status)


_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


@web.middleware
async def _errors_as_json(request, handler):
    try:
        return await handler(request)
    except UpdateError as e:
        return web.json_response(e.as_dict(), status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "bad-request" if e.status < 500 else "internal-error")
        return web.json_response({"error": code, "message": e.reason}, status=e.status)
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - last line of defence, logged
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error("internal-error", "internal error (see the server log)")


async def _json_body(request) -> dict:
    """The request body as a JSON object; UpdateError ``bad-request`` otherwise."""
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise UpdateError("payload-too-large", f"JSON bodies are limited to {MAX_JSON_BODY} bytes")
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UpdateError("bad-request", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise UpdateError("bad-request", "the body must be a JSON object")
    return data


class UpdateServer:
    """The update server: state, boot control, sessions and the aiohttp handlers."""

    def __init__(self, config):
        self.config = config
        self.boot = bootctl.from_config(config)
        self.store = state_mod.StateStore(config.state_dir)
        self.installer = Installer(config, self.boot, self.store)
        self.keys = KeyStore(config.ssh_dir)
        self.names = NameStore(config.state_dir, config.machine_id_file)
        self.networks = config.allowed_networks()
        self.advertiser = (
            Advertiser(config.mdns_port, config.robot_model, config.mdns_interfaces or None)
            if config.mdns else None
        )
        self.session: Session | None = None
        self.sessions: OrderedDict = OrderedDict()
        self._background: set = set()

    # ---- application ------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application with every route, start-up and shutdown hooks."""
        app = web.Application(middlewares=[_errors_as_json], client_max_size=MAX_JSON_BODY)
        app.router.add_routes([
            web.get("/health", self.health),
            web.get("/server/update/health", self.health),
            web.get("/openapi.json", self.openapi),
            web.post("/server/update/begin", self.begin),
            web.post("/server/update/cancel", self.cancel),
            web.post("/server/update/mark-good", self.mark_good),
            web.post("/server/update/{token}/file", self.upload),
            web.get("/server/update/{token}/status", self.status),
            web.post("/server/update/{token}/commit", self.commit),
            web.post("/server/restart", self.restart),
            web.get("/server/ssh_keys", self.list_keys),
            web.post("/server/ssh_keys", self.add_key),
            web.delete("/server/ssh_keys", self.clear_keys),
            web.delete("/server/ssh_keys/{fingerprint:.+}", self.remove_key),
            web.get("/server/name", self.get_name),
            web.post("/server/name", self.set_name),
        ])
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _blocking(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def boot_id(self) -> str:
        return state_mod.read_boot_id(self.config.boot_id_file)

    async def _startup(self, app) -> None:
        try:
            record = await self._blocking(state_mod.reconcile, self.store, self.boot, self.boot_id())
            if record:
                log.error("rolled back: %s", record)
            await self._blocking(state_mod.record_booted_version, self.store, self.boot.booted_slot(),
                                 self.config.system_version().get("version"))
        except UpdateError as e:
            log.error("rollback detection failed: %s", e)
        name = self.names.get()
        if self.config.apply_hostname:
            apply_hostname(name)
        if self.advertiser:
            await self.advertiser.advertise(name)

    async def _cleanup(self, app) -> None:
        if self.advertiser:
            await self.advertiser.close()
        for task in list(self._background):
            task.cancel()
        self.installer.close()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- health -----------------------------------------------------------------------

    async def health(self, request) -> web.Response:
        """``GET /health``: name, versions, boot slots, last rollback, capabilities."""
        env = await self._blocking(self.boot.read)
        state = self.store.load()
        booted = self.boot.booted_slot()
        system = self.config.system_version()
        version = system.get("version") if isinstance(system.get("version"), str) else None
        boot_id = self.boot_id()
        slots = state_mod.slot_report(state, env, booted, boot_id, self.config.slots, version)
        name = self.names.get()
        return web.json_response({
            "name": name,
            "hostname": hostname_for(name),
            "version": version,
            "update_server_version": __version__,
            "compatible": self.config.effective_compatible(),
            "bootId": boot_id,
            "serialNumber": self.boot.serial(),
            "booted_slot": booted,
            "boot_order": env["BOOT_ORDER"],
            "slots": slots,
            "rollback": state["rollbacks"][-1] if state["rollbacks"] else None,
            "capabilities": {
                "systemUpdate": "/server/update/begin",
                "restart": "/server/restart",
                "markGood": "/server/update/mark-good",
                "sshKeys": "/server/ssh_keys",
                "name": "/server/name",
                "openapi": "/openapi.json",
            },
            "robotModel": self.config.robot_model,
            "provisioning": provision.health_summary(self.config),
        })

    async def openapi(self, request) -> web.Response:
        """``GET /openapi.json``: the OpenAPI 3 description of this API."""
        return web.json_response(openapi.document(__version__))

    # ---- update sessions --------------------------------------------------------------

    def _lookup(self, token: str) -> Session:
        session = self.sessions.get(token)
        if session is None:
            raise UpdateError("bad-token", "no such update session")
        return session

    async def begin(self, request) -> web.Response:
        """``POST /server/update/begin`` -> 201 ``{token}``; 409 if a session is active."""
        current = self.session
        if current is not None and current.active:
            idle = time.monotonic() - current.created
            if not (current.progress.stage == AWAITING_FILE and idle > SESSION_IDLE_TIMEOUT):
                raise UpdateError(
                    "session-already-active",
                    f"an update session is already {current.progress.stage}",
                )
            current.progress.fail("cancelled", "session expired")
        self.boot.inactive_slot()  # unknown-boot-slot before anything starts
        session = Session(secrets.token_hex(16))
        self.session = session
        self.sessions[session.token] = session
        while len(self.sessions) > RECENT_SESSIONS:
            self.sessions.popitem(last=False)
        return web.json_response({"token": session.token, **session.progress.as_dict()}, status=201)

    async def _upload_source(self, request) -> ChunkSource:
        if request.content_type.startswith("multipart/"):
            try:
                reader = await request.multipart()
                part = await reader.next()
            except Exception as e:  # noqa: BLE001 - malformed multipart of any kind
                raise UpdateError("bad-request", f"malformed multipart body: {e}") from None
            if part is None or not hasattr(part, "read_chunk"):
                raise UpdateError("bad-request", "the multipart body has no file part")
            return ChunkSource(lambda: part.read_chunk(UPLOAD_READ_SIZE))
        return ChunkSource(request.content.readany)

    async def upload(self, request) -> web.Response:
        """``POST /server/update/{token}/file``: the body is the bundle, streamed.

        Answers when the install has finished (200, status body) or failed (4xx error).
        """
        session = self._lookup(request.match_info["token"])
        if session.progress.stage != AWAITING_FILE:
            raise UpdateError("file-already-sent", f"session is {session.progress.stage}")
        session.progress.stage = VALIDATING
        session.progress.message = "receiving the bundle"
        try:
            source = await self._upload_source(request)
        except UpdateError as e:
            session.progress.fail(e.code, e.message)
            raise
        if session.progress.cancel_requested:
            return _error("cancelled", "install cancelled")
        task = asyncio.ensure_future(self.installer.install(source, session.progress))
        session.task = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the connection went away; the install task was cancelled too
            return _error("cancelled", "install cancelled")
        finally:
            session.task = None
        return web.json_response({"token": session.token, **session.progress.as_dict()})

    async def status(self, request) -> web.Response:
        """``GET /server/update/{token}/status`` -> ``{stage, progress, ...}``."""
        session = self._lookup(request.match_info["token"])
        return web.json_response({"token": session.token, **session.progress.as_dict()})

    async def commit(self, request) -> web.Response:
        """``POST /server/update/{token}/commit``: select the written slot for next boot."""
        session = self._lookup(request.match_info["token"])
        progress = session.progress
        if progress.stage == DONE:
            env = await self._blocking(
                state_mod.commit, self.store, self.boot, progress.target_slot,
                progress.version, self.boot_id(),
            )
            progress.stage = READY_FOR_RESTART
            progress.message = f"slot {progress.target_slot} selected for the next boot; restart to use it"
            log.info("committed slot %s (%s): %s", progress.target_slot, progress.version, env)
        elif progress.stage != READY_FOR_RESTART:
            raise UpdateError("not-ready", f"nothing to commit: session is {progress.stage}")
        env = await self._blocking(self.boot.read)
        return web.json_response(
            {"token": session.token, **progress.as_dict(), "boot_order": env["BOOT_ORDER"]}
        )

    async def cancel(self, request) -> web.Response:
        """``POST /server/update/cancel``: stop the active session (even mid-write)."""
        session = self.session
        if session is None or not session.active:
            return web.json_response({"cancelled": False, "message": "no active update session"})
        progress = session.progress
        progress.cancel_requested = True
        if session.task is not None and not session.task.done():
            session.task.cancel()
            await asyncio.wait({session.task}, timeout=30)
        elif progress.stage == READY_FOR_RESTART:
            await self._blocking(state_mod.cancel_commit, self.store, self.boot, progress.target_slot)
        if progress.stage != ERROR:
            progress.fail("cancelled", "install cancelled")
        self.session = None
        return web.json_response({"cancelled": True, "token": session.token, **progress.as_dict()})

    async def mark_good(self, request) -> web.Response:
        """``POST /server/update/mark-good``: the booted slot is good; confirms a trial."""
        result = await self._blocking(state_mod.mark_good, self.store, self.boot, self.boot_id())
        return web.json_response({
            "booted_slot": result["booted_slot"],
            "confirmed": result["confirmed"],
            "boot_order": result["boot"]["BOOT_ORDER"],
            "tries_left": {s: result["boot"][s] for s in bootctl.SLOTS},
        })

    async def restart(self, request) -> web.Response:
        """``POST /server/restart``: answers, then runs ``reboot_command`` after 1 s."""
        self._spawn(self._reboot_later(1.0))
        return web.json_response({"message": "restarting in 1 second"})

    async def _reboot_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        log.warning("restarting: %s", " ".join(self.config.reboot_command))
        try:
            proc = await asyncio.create_subprocess_exec(*self.config.reboot_command)
            await proc.wait()
        except OSError as e:
            log.error("restart failed: %s", e)

    # ---- SSH keys ---------------------------------------------------------------------

    def _check_peer(self, request) -> None:
        if not peer_allowed(request.remote, self.networks):
            raise UpdateError(
                "bad-interface",
                "SSH keys can only be changed from "
                + ", ".join(self.config.ssh_keys_allowed_from),
            )

    async def list_keys(self, request) -> web.Response:
        """``GET /server/ssh_keys`` -> ``{public_keys: [{fingerprint, type, bits, comment, key}]}``."""
        keys = await self._blocking(self.keys.list)
        return web.json_response({"public_keys": [k.as_dict() for k in keys]})

    async def add_key(self, request) -> web.Response:
        """``POST /server/ssh_keys`` ``{key}`` -> 201 (added) or 200 (already present)."""
        self._check_peer(request)
        body = await _json_body(request)
        key, added = await self._blocking(self.keys.add, body.get("key"))
        return web.json_response(
            {**key.as_dict(), "message": "key added" if added else "key already present"},
            status=201 if added else 200,
        )

    async def clear_keys(self, request) -> web.Response:
        """``DELETE /server/ssh_keys``: remove every key -> ``{removed: count}``."""
        self._check_peer(request)
        count = await self._blocking(self.keys.clear)
        return web.json_response({"removed": count, "message": f"{count} keys removed"})

    async def remove_key(self, request) -> web.Response:
        """``DELETE /server/ssh_keys/{fingerprint}``; 404 ``key-not-found``."""
        self._check_peer(request)
        key = await self._blocking(self.keys.remove, request.match_info["fingerprint"])
        if key is None:
            raise UpdateError("key-not-found", "no key with this fingerprint")
        return web.json_response({"removed": key.fingerprint, "message": "key removed"})

    # ---- name -------------------------------------------------------------------------

    async def get_name(self, request) -> web.Response:
        """``GET /server/name`` -> ``{name, hostname}``."""
        name = self.names.get()
        return web.json_response({"name": name, "hostname": hostname_for(name)})

    async def set_name(self, request) -> web.Response:
        """``POST /server/name`` ``{name}`` -> ``{name, hostname}``; 400 ``bad-name``."""
        body = await _json_body(request)
        name = await self._blocking(self.names.set, body.get("name"))
        if self.config.apply_hostname:
            apply_hostname(name)
        if self.advertiser:
            await self.advertiser.advertise(name)
        return web.json_response({"name": name, "hostname": hostname_for(name)})


def run(config) -> None:
    """Serve the API on ``config.listen``:``config.port`` until stopped."""
    server = UpdateServer(config)
    access_log = log if config.log_level == "debug" else None
    web.run_app(
        server.make_app(), host=config.listen, port=config.port,
        print=None, access_log=access_log, handle_signals=True,
    )
