"""Who may do what on the robot server (``docs/security.md``, "Robot server").

The checks, the token file and the connection limits are the update server's
(``update_server/access.py``, ``tokens.py``, ``interfaces.py``, ``connlimit.py``): one
source for both servers.  Per request:

* ``GET``/``HEAD`` (status, lists, ``/events``, ``/openapi.json``): open to anyone;
* ``/pair``, ``/pair/{id}``: no credential (asking is harmless, approval needs the
  button), but the cross-site rules apply;
* everything else changes, moves or runs the robot: the cross-site rules, then a trusted
  interface, a valid ``Authorization: Bearer`` token, or ``open_access``; then the body
  type (``application/json``; ``POST /protocols`` only ``multipart/form-data``) and size.

Refusals: 403 ``cross-origin``, 401 ``unauthorized``, 415 ``unsupported-media-type``, 413
``request-too-large``; the OT-2's endpoints answer them in the OT-2's error shape
(``versioning.error_body``), ours as ``{"error", "message"}``.
"""
from __future__ import annotations

import socket
from typing import Callable

from aiohttp import web

from update_server import access, interfaces
from update_server.connlimit import ConnectionGuard
from update_server.errors import UpdateError

from .config import Config
from .protocols import MAX_UPLOAD_BYTES
from .errors import ApiError, error_response
from .versioning import ot2_response

OPEN, PAIR, CHANGE = "open", "pair", "change"
READ_METHODS = ("GET", "HEAD")
PAIR_PATHS = ("/pair", "/pair/{pairing_id}")
UPLOADS = {("POST", "/protocols"): ("multipart/form-data",)}
MAX_JSON_BODY = 64 * 1024   # bytes, as api.MAX_BODY


def policy(request: web.Request) -> str:
    """:data:`OPEN`, :data:`PAIR` or :data:`CHANGE` for ``request`` (see the module docstring)."""
    resource = getattr(request.match_info.route, "resource", None)
    if request.method in READ_METHODS or resource is None:
        return OPEN            # unknown paths and methods: the router answers 404 / 405
    return PAIR if resource.canonical in PAIR_PATHS else CHANGE


#: The robot server's own name for a code of the shared checks (its API's 413 predates them).
_CODES = {"payload-too-large": "request-too-large"}


def _api_error(exc: UpdateError) -> ApiError:
    return ApiError(_CODES.get(exc.code, exc.code), exc.message)


def refusal(request: web.Request, exc: ApiError) -> web.Response:
    """The answer to a refused request: the OT-2's error shape on its endpoints
    (``versioning.ot2_response``), ours elsewhere; a 401 names the scheme to use
    (``WWW-Authenticate: Bearer``, RFC 6750 section 3)."""
    kind = getattr(getattr(request.match_info.handler, "op", None), "ot2", None)
    response = ot2_response(kind, exc) if kind else error_response(exc)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ot2"'
    return response


class Access:
    """The access checks and connection limits of one robot server."""

    def __init__(self, config: Config, tokens) -> None:
        self.config = config
        self.tokens = tokens
        self.guard = ConnectionGuard.from_settings(config)

    def check(self, request: web.Request) -> None:
        """Refuse a request its caller may not make (:class:`ApiError`, see the module docstring)."""
        kind = policy(request)
        if kind == OPEN:
            return
        try:
            host = socket.gethostname().lower()
            access.check_origin(request.headers, request.host, (host, f"{host}.local"))
            if kind == CHANGE:
                access.caller(request.transport, request.headers.get("Authorization"),
                              self.config.trusted_interfaces, self.tokens,
                              open_access=self.config.open_access)
            upload = UPLOADS.get((request.method, request.match_info.route.resource.canonical))
            has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "")
            access.check_body(request.headers, request.content_type, has_body, request.content_length,
                              upload, MAX_UPLOAD_BYTES if upload else MAX_JSON_BODY)
        except UpdateError as exc:
            raise _api_error(exc) from None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Connection bookkeeping (:class:`ConnectionGuard`), then :meth:`check`. Placed
        inside ``version_middleware``, so the OT-2's endpoints get the OT-2's error shape."""
        self.guard.request_started(request.transport)
        try:
            try:
                self.check(request)
            except ApiError as exc:
                return refusal(request, exc)
            return await handler(request)
        finally:
            self.guard.request_finished(request)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue`` is answered only once :meth:`check` has passed: a
        refused or oversized body is never invited."""
        try:
            self.check(request)
        except ApiError as exc:
            return refusal(request, exc)
        if request.headers.get("Expect", "").lower() != "100-continue":
            return web.json_response({"error": "bad-request", "message": "unsupported Expect header"},
                                     status=417)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    def bridge_authorised(self, writer) -> bool:
        """Whether a bridge connection may change, move or run from its first byte: it
        arrived on a trusted interface, or ``open_access`` is set."""
        return self.config.open_access or bool(interfaces.arrived_on(
            writer.get_extra_info("peername"), writer.get_extra_info("sockname"),
            self.config.trusted_interfaces))

    def token_id(self, token) -> str | None:
        """The id of a valid token (a bridge ``auth`` message), else ``None``."""
        record = self.tokens.verify(token if isinstance(token, str) else None)
        return record["id"] if record else None
