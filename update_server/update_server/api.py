"""The HTTP API (aiohttp).  ``GET /openapi.json`` describes every endpoint.

Every error answer is a 4xx (or, for a broken machine, 5xx) with the JSON body
``{"error": code, "message": str}``; the codes are listed in
:data:`update_server.errors.HTTP_STATUS`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from aiohttp import web

from . import __version__, access, bootctl, openapi, provision
from . import state as state_mod
from .bundle import ChunkSource
from .connlimit import ConnectionGuard, GuardedSite
from .ddi import DdiClient
from .errors import UpdateError
from .install import slot_capacity
from .name import Advertiser, NameStore, apply_hostname, hostname_for
from .session import Sessions
from .sshkeys import KeyStore
from .tokens import TokenError, TokenStore

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024  # bytes
BUNDLE_OVERHEAD = 2 << 20  # bytes a bundle may have beyond its image (headers, manifest, padding)
UPLOAD_READ_SIZE = 256 * 1024  # bytes per multipart read
# s an upload's unread body is drained after an early answer (no signature, wrong
# compatible, a downgrade), so the client still sending a slot-sized bundle over a slow link
# reads the 4xx rather than a connection reset
UPLOAD_LINGER = 300.0
UPLOAD_TYPES = ("application/octet-stream", "multipart/form-data")

VIA = web.RequestKey("via", object) if hasattr(web, "RequestKey") else "via"  # see _check

# Who may call an endpoint (docs/security.md has the table and the reasons):
OPEN = "open"          # anyone (read-only status)
CHANGE = "change"      # trusted interface, token, or open_access
LOGIN = "login"        # trusted interface or token (changes who may log in; never open_access)
PRESENT = "present"    # trusted interface only (loopback, the USB link)


def _error(code: str, message: str) -> web.Response:
    return _error_response(UpdateError(code, message))


def _error_response(err: UpdateError) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="ot2"'} if err.status == 401 else None
    return web.json_response(err.as_dict(), status=err.status, headers=headers)


def _on_trusted_interface(request) -> bool:
    """Whether :meth:`UpdateServer._check` let ``request`` in for its interface."""
    return access.is_trusted_interface(request.get(VIA))


def _flag(request, name: str) -> bool:
    """A boolean query parameter (``?allow_downgrade=true``)."""
    return request.query.get(name, "").lower() in ("1", "true", "yes")


_HTTP_CODES = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}


@web.middleware
async def _errors_as_json(request, handler):
    try:
        return await handler(request)
    except UpdateError as e:
        return _error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "bad-request" if e.status < 500 else "internal-error")
        return web.json_response({"error": code, "message": e.reason}, status=e.status)
    except asyncio.CancelledError:
        raise
    except Exception:  # last line of defence, logged
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
        self.sessions = Sessions(config, self.boot, self.store, self.boot_id)
        self.keys = KeyStore(config.ssh_dir)
        self.tokens = TokenStore(config.tokens_file)
        self.names = NameStore(config.state_dir, config.machine_id_file)
        self.guard = ConnectionGuard.from_settings(config, UPLOAD_LINGER)
        self.restarting = False
        self.policies: dict = {}
        self.advertiser = (
            Advertiser(config.mdns_port, config.robot_model, config.mdns_interfaces or None)
            if config.mdns else None
        )
        self._background: set = set()
        self.ddi = DdiClient(self) if config.ddi_url else None

    # ---- application ------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application with every route, start-up and shutdown hooks."""
        app = web.Application(middlewares=[_errors_as_json, self._access],
                              client_max_size=MAX_JSON_BODY)
        for method, path, handler, policy in [
            ("GET", "/health", self.health, OPEN),
            ("GET", "/server/update/health", self.health, OPEN),
            ("GET", "/openapi.json", self.openapi, OPEN),
            ("POST", "/server/update/begin", self.begin, CHANGE),
            ("POST", "/server/update/cancel", self.cancel, CHANGE),
            ("POST", "/server/update/mark-good", self.mark_good, PRESENT),
            ("POST", "/server/update/{token}/file", self.upload, CHANGE),
            ("GET", "/server/update/{token}/status", self.status, OPEN),
            ("POST", "/server/update/{token}/commit", self.commit, CHANGE),
            ("POST", "/server/restart", self.restart, CHANGE),
            ("GET", "/server/ssh_keys", self.list_keys, CHANGE),
            ("POST", "/server/ssh_keys", self.add_key, LOGIN),
            ("DELETE", "/server/ssh_keys", self.clear_keys, LOGIN),
            ("DELETE", "/server/ssh_keys/{fingerprint:.+}", self.remove_key, LOGIN),
            ("GET", "/server/name", self.get_name, OPEN),
            ("POST", "/server/name", self.set_name, CHANGE),
            ("GET", "/server/tokens", self.list_tokens, LOGIN),
            ("POST", "/server/tokens", self.issue_token, PRESENT),
            ("DELETE", "/server/tokens/{id}", self.revoke_token, LOGIN),
        ]:
            if method == "GET":
                route = app.router.add_get(path, handler, expect_handler=self._expect)
            else:
                route = app.router.add_route(method, path, handler, expect_handler=self._expect)
            self.policies[(method, route.resource.canonical)] = policy
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
        if self.ddi:
            self._spawn(self.ddi.run())

    async def _cleanup(self, app) -> None:
        if self.advertiser:
            await self.advertiser.close()
        for task in list(self._background):
            task.cancel()
        self.sessions.close()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- access control (docs/security.md) ----------------------------------------------

    @web.middleware
    async def _access(self, request, handler):
        """Connection bookkeeping, then :meth:`_check` before every handler."""
        self.guard.request_started(request.transport)
        try:
            self._check(request)
            return await handler(request)
        finally:
            self.guard.request_finished(request)

    async def _expect(self, request):
        """``Expect: 100-continue``: answered only once :meth:`_check` has passed, so a
        refused or oversized body is never invited."""
        try:
            self._check(request)
            if request.match_info.route.handler == self.upload:
                self.sessions.awaiting_file(request.match_info["token"])
        except UpdateError as e:
            return _error_response(e)
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _error("bad-request", "unsupported Expect header")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    def _policy(self, request) -> str:
        route = request.match_info.route
        resource = getattr(route, "resource", None)
        if resource is None:
            return OPEN  # 404 / 405: the router answers
        return self.policies.get((request.method, resource.canonical), OPEN)

    def _check(self, request) -> None:
        """Refuse a request its caller may not make; raises UpdateError.

        Order: cross-site (``cross-origin`` 403), credentials (``unauthorized`` 401,
        ``bad-interface`` 403), body type (``unsupported-media-type`` 415), body size
        (``payload-too-large`` 413).  Sets ``request[VIA]``: the trusted interface
        (``"lo"``, ``"usb0"``), ``"token:<id>"``, ``"open"``, or ``None``.
        """
        policy = self._policy(request)
        request[VIA] = None
        if policy == OPEN:
            return
        self._check_origin(request)
        request[VIA] = self._caller(request, policy)
        self._check_body(request)

    def _caller(self, request, policy: str) -> str:
        """How the caller may make a ``policy`` request (see :meth:`_check`); UpdateError if not."""
        return access.caller(request.transport, request.headers.get("Authorization"),
                             self.config.trusted_interfaces, self.tokens, present=policy == PRESENT,
                             open_access=policy == CHANGE and self.config.open_access)

    def _check_origin(self, request) -> None:
        """A browser's cross-site request never changes anything (:func:`access.check_origin`)."""
        own = hostname_for(self.names.get())
        access.check_origin(request.headers, request.host, (own, f"{own}.local"))

    def _check_body(self, request) -> None:
        upload = request.match_info.route.handler == self.upload
        has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")
        access.check_body(request.headers, request.content_type, has_body, request.content_length,
                          UPLOAD_TYPES if upload else None, self._max_bundle() if upload else MAX_JSON_BODY)

    def _max_bundle(self) -> int:
        """Bytes a bundle may have: the inactive slot's capacity plus ``BUNDLE_OVERHEAD``."""
        return slot_capacity(self.config.slot_device(self.boot.inactive_slot())) + BUNDLE_OVERHEAD

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
            "serialNumber": self.boot.cmdline.serial(),
            "booted_slot": booted,
            "boot_order": list(env.order),
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
            "rollout": self.ddi and {"server": self.config.ddi_url, "controller_id": self.ddi.controller_id(),
                                     "status": self.ddi.status},
            "robotModel": self.config.robot_model,
            "provisioning": provision.health_summary(self.config),
        })

    async def openapi(self, request) -> web.Response:
        """``GET /openapi.json``: the OpenAPI 3 description of this API."""
        return web.json_response(openapi.document(__version__))

    # ---- update sessions (session.py) -------------------------------------------------

    async def begin(self, request) -> web.Response:
        """``POST /server/update/begin[?allow_downgrade=true]`` -> 201 ``{token, stage, ...}``;
        409 ``session-already-active`` (:meth:`Sessions.begin`)."""
        session = self.sessions.begin(_flag(request, "allow_downgrade"))
        return web.json_response(session.as_dict(), status=201)

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
        """``POST /server/update/{token}/file[?allow_downgrade=true]``: the body is the
        bundle (``application/octet-stream``, or ``multipart/form-data`` with one file
        part), streamed; at most the inactive slot's size plus 2 MiB (413).

        Answers when the install has finished (200, status body) or failed (4xx error;
        409 ``downgrade`` for an older bundle unless allowed here or at ``begin``).
        """
        session = await self.sessions.upload(request.match_info["token"],
                                             lambda: self._upload_source(request),
                                             _flag(request, "allow_downgrade"))
        return web.json_response(session.as_dict())

    async def status(self, request) -> web.Response:
        """``GET /server/update/{token}/status`` -> ``{stage, progress, ...}`` (an error
        adds ``error`` and ``failed_stage``)."""
        return web.json_response(self.sessions.get(request.match_info["token"]).as_dict())

    async def commit(self, request) -> web.Response:
        """``POST /server/update/{token}/commit``: select the written slot for next boot
        -> ``{token, stage: "ready-for-restart", ..., boot_order}``; 409 ``not-ready``."""
        session = await self.sessions.commit(request.match_info["token"])
        env = await self._blocking(self.boot.read)
        return web.json_response({**session.as_dict(), "boot_order": list(env.order)})

    async def cancel(self, request) -> web.Response:
        """``POST /server/update/cancel`` [``{"token": session token}``]: stop the active
        session (even mid-write).  Without a trusted interface the body must name the
        session's token (404 ``bad-token``): nobody else's update is cancelled."""
        body = await _json_body(request) if request.content_length else {}
        session = await self.sessions.cancel(body.get("token"), _on_trusted_interface(request))
        if session is None:
            return web.json_response({"cancelled": False, "message": "no active update session"})
        return web.json_response({"cancelled": True, **session.as_dict()})

    async def mark_good(self, request) -> web.Response:
        """``POST /server/update/mark-good``: the booted slot is good; confirms a trial.

        Only from a trusted interface (the boot check marks good without HTTP): a
        network peer must not defeat the rollback of a trial boot.
        """
        result = await self._blocking(state_mod.mark_good, self.store, self.boot, self.boot_id())
        return web.json_response({
            "booted_slot": result["booted_slot"],
            "confirmed": result["confirmed"],
            "boot_order": list(result["boot"].order),
            "tries_left": dict(result["boot"].tries),
        })

    async def restart(self, request) -> web.Response:
        """``POST /server/restart``: answers, then runs ``reboot_command`` after 1 s.

        Once per run of the server: later requests get 409 ``restart-pending``.
        """
        if self.restarting:
            raise UpdateError("restart-pending", "a restart is already under way")
        log.warning("restart requested (%s)", request[VIA])
        self._spawn(self.reboot("restart requested", delay=1.0))
        return web.json_response({"message": "restarting in 1 second"})

    async def reboot(self, reason: str, delay: float = 0.0) -> None:
        """Runs ``reboot_command`` after ``delay`` s, once per run of the server (a restart
        request or a rollout's deployment)."""
        self.restarting = True
        await asyncio.sleep(delay)
        log.warning("restarting (%s): %s", reason, " ".join(self.config.reboot_command))
        try:
            proc = await asyncio.create_subprocess_exec(*self.config.reboot_command)
            await proc.wait()
        except OSError as e:
            log.error("restart failed: %s", e)

    # ---- SSH keys ---------------------------------------------------------------------

    async def list_keys(self, request) -> web.Response:
        """``GET /server/ssh_keys`` -> ``{public_keys: [{fingerprint, type, bits, comment, key}]}``."""
        keys = await self._blocking(self.keys.list)
        return web.json_response({"public_keys": [k.as_dict() for k in keys]})

    async def add_key(self, request) -> web.Response:
        """``POST /server/ssh_keys`` ``{key}`` -> 201 (added) or 200 (already present)."""
        body = await _json_body(request)
        key, added = await self._blocking(self.keys.add, body.get("key"))
        return web.json_response(
            {**key.as_dict(), "message": "key added" if added else "key already present"},
            status=201 if added else 200,
        )

    async def clear_keys(self, request) -> web.Response:
        """``DELETE /server/ssh_keys``: remove every key -> ``{removed: count}``."""
        count = await self._blocking(self.keys.clear)
        return web.json_response({"removed": count, "message": f"{count} keys removed"})

    async def remove_key(self, request) -> web.Response:
        """``DELETE /server/ssh_keys/{fingerprint}``; 404 ``key-not-found``."""
        key = await self._blocking(self.keys.remove, request.match_info["fingerprint"])
        if key is None:
            raise UpdateError("key-not-found", "no key with this fingerprint")
        return web.json_response({"removed": key.fingerprint, "message": "key removed"})

    # ---- tokens -----------------------------------------------------------------------

    async def list_tokens(self, request) -> web.Response:
        """``GET /server/tokens`` -> ``{tokens: [{id, client, created, via}]}`` (never a token)."""
        return web.json_response({"tokens": await self._blocking(self.tokens.list)})

    async def issue_token(self, request) -> web.Response:
        """``POST /server/tokens`` ``{client: label}`` -> 201 ``{token, id, client, created, via}``.

        Only from a trusted interface (being at the robot, or its USB cable, stands for
        the front button); the token is shown only in this answer.  409 ``too-many-tokens``.
        """
        body = await _json_body(request)
        try:
            token, record = await self._blocking(self.tokens.issue, body.get("client"), "trusted-interface")
        except TokenError as e:
            raise UpdateError(e.code, e.message) from None
        return web.json_response({"token": token, **record}, status=201)

    async def revoke_token(self, request) -> web.Response:
        """``DELETE /server/tokens/{id}`` -> ``{revoked: id}``; 404 ``token-not-found``."""
        token_id = request.match_info["id"]
        if not await self._blocking(self.tokens.revoke, token_id):
            raise UpdateError("token-not-found", "no token with this id")
        return web.json_response({"revoked": token_id, "message": "token revoked"})

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


async def serve(config, stop: asyncio.Event) -> None:
    """Serve the API on ``config.listen``:``config.port`` (connection limits applied)
    until ``stop`` is set."""
    server = UpdateServer(config)
    access_log = log if config.log_level == "debug" else None
    runner = server.guard.runner(server.make_app(), access_log=access_log)
    await runner.setup()
    try:
        await GuardedSite(runner, config.listen, config.port, server.guard).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def run(config) -> None:
    """Serve until SIGTERM or SIGINT."""
    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    asyncio.run(main())
