"""HTTP API (aiohttp, port 31950): health, lights, home, move, positions, motors, door,
an event stream (server-sent events) and ``/openapi.json``.

The OT-2's own endpoints (operations with ``ot2`` set) follow its HTTP API versioning and
error shapes (see ``versioning.py``; their resources are in ``ot2_api.py``). On our own
endpoints every error is a 4xx JSON body ``{"error": code, "message": text}``: 400 ``invalid-json``,
404 ``not-found``, 405 ``method-not-allowed``, 413 ``request-too-large``, 422 validation
(``invalid-request``, ``unknown-axis``, ``soft-limit``, ``invalid-speed``), 409 robot state
(``not-homed``, ``door-open``, ``robot-leased``, ``not-paused``, ``board-not-connected``, ``board-timeout``, ``board-alarm``,
``board-halted``, ``board-error``, ``board-disconnected``). Written for aiohttp 3.8
(Debian bookworm) and newer: no ``web.AppKey``, nothing stored on the app.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from aiohttp import web

from . import __version__, runs_api, usb_drives
from .access import Access
from .engine_host import EngineHost
from .errors import API_ERRORS, ApiError, as_api_error, error_response
from .operation import Op
from .ot2_api import HEALTH_FIELDS, MOTOR_AXES, ot2_operations
from .service import RobotService
from .versioning import LEGACY, from_http_exception, openapi_parts, route_path, version_middleware

log = logging.getLogger("robot_server.api")

MAX_BODY = 64 * 1024
SSE_KEEPALIVE_S = 15.0

_AXIS = {"type": "string", "enum": list("XYZABCxyzabc")}
_MOUNT = {"type": "string", "enum": ["left", "right"]}
_SPEED = {"type": "number", "exclusiveMinimum": 0, "maximum": 600, "description": "mm/s"}
_ERROR = {"type": "object", "required": ["error", "message"],
          "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}


def operations(svc: RobotService) -> list[Op]:
    """The operation table shared by HTTP routes, ``/openapi.json`` and the TCP bridge."""
    ot2 = svc.ot2
    return [
        Op("health", "GET", "/health", ot2.health,
           "Server and motor-board health; 200 whenever the HTTP server is up",
           ot2=LEGACY, version_header=False, ot2_fields=HEALTH_FIELDS),
        Op("getLights", "GET", "/robot/lights", svc.get_lights, "Frame lights and button LED", ot2=LEGACY),
        Op("setLights", "POST", "/robot/lights", svc.set_lights, "Switch frame lights / button LED", ot2=LEGACY,
           body={"type": "object", "additionalProperties": False, "properties": {
               "on": {"type": "boolean"},
               "button": {"type": "object", "additionalProperties": False, "properties": {
                   "red": {"type": "boolean"}, "green": {"type": "boolean"}, "blue": {"type": "boolean"}}}}}),
        Op("home", "POST", "/robot/home", ot2.home,
           "Home all axes, one mount (target pipette/mount + mount) or named axes",
           body={"type": "object", "additionalProperties": False, "properties": {
               "target": {"type": "string", "enum": ["robot", "pipette", "mount"]},
               "mount": _MOUNT, "axis": _AXIS,
               "axes": {"type": "array", "items": _AXIS, "minItems": 1}}}, ot2=LEGACY),
        Op("move", "POST", "/robot/move", ot2.move,
           "Move a mount to a deck point [x, y, z] (mm) or axes to machine positions (mm)",
           body={"oneOf": [
               {"type": "object", "additionalProperties": False, "required": ["mount", "point"],
                "properties": {
                    "target": {"type": "string", "enum": ["mount", "pipette"]},
                    "mount": _MOUNT,
                    "point": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3,
                              "description": "[x, y, z] deck coordinates, mm"},
                    "speed": _SPEED,
                    "strategy": {"type": "string", "enum": ["direct", "arc"]}}},
               {"type": "object", "additionalProperties": False, "required": ["axes"],
                "properties": {
                    "axes": {"type": "object", "minProperties": 1, "additionalProperties": False,
                             "properties": {ax: {"type": "number", "description": "mm"} for ax in "XYZABC"}},
                    "speed": _SPEED}}]}, ot2=LEGACY),
        Op("positions", "GET", "/robot/positions", ot2.positions,
           "OT-2 useful positions; current position (mm, machine and per-mount deck coordinates), homed, engaged",
           query={"refresh": {"type": "boolean"}}, ot2=LEGACY),
        Op("endstops", "GET", "/robot/endstops", svc.endstops, "Endstop switches (M119)"),
        Op("engaged", "GET", "/motors/engaged", ot2.engaged, "Which motors are energised", ot2=LEGACY),
        Op("disengage", "POST", "/motors/disengage", ot2.disengage, "De-energise motors (M18)",
           body={"type": "object", "additionalProperties": False, "required": ["axes"], "properties": {
               "axes": {"type": "array", "items": {"type": "string", "enum": [
                   *MOTOR_AXES, *_AXIS["enum"]]}}}}, ot2=LEGACY),
        Op("door", "GET", "/robot/door", svc.door, "Door switch and motion pause state"),
        Op("stop", "POST", "/robot/stop", svc.stop_robot,
           "Stop: halt the board (halt line) if moving or leased; ends a G-code channel lease"),
        Op("resume", "POST", "/robot/resume", svc.resume,
           "Resume a G-code channel lease paused by the door (door closed)"),
        Op("identify", "POST", "/identify", ot2.identify, "Blink the frame lights",
           query={"seconds": {"type": "number", "minimum": 1, "maximum": 60}}, ot2=LEGACY),
        *ot2_operations(svc),
        Op("simGpio", "POST", "/robot/sim/gpio", svc.sim_gpio,
           "Simulated GPIO only: set door / button inputs",
           body={"type": "object", "additionalProperties": False, "properties": {
               "door_open": {"type": "boolean"}, "button": {"type": "boolean"}}}),
    ]


def pairing_operations(svc: RobotService) -> list[Op]:
    """``/pair`` (``docs/security.md``, "Pairing"): HTTP only, not on the bridge."""
    pairing = svc.pairing
    return [
        Op("pair", "POST", "/pair", pairing.ask,
           "Ask for a token; the front button's light blinks until it is pressed (approves) or "
           "expires_in seconds pass. 409 pairing-in-progress, 429 too-many-requests",
           body={"type": "object", "additionalProperties": False, "required": ["client"], "properties": {
               "client": {"type": "string", "minLength": 1, "maxLength": 100}}}, status=202),
        Op("pairingState", "GET", "/pair/{pairing_id}", pairing.state,
           "waiting / approved (with the token, once) / expired / denied; 404 bad-pairing",
           query={"pairing_id": {"type": "string", "in": "path"}}),
        Op("withdrawPairing", "DELETE", "/pair/{pairing_id}", pairing.withdraw,
           "Withdraw a waiting pairing request (the light stops); 404 bad-pairing",
           query={"pairing_id": {"type": "string", "in": "path"}}),
    ]


@web.middleware
async def error_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Turn every failure into a JSON error body (:mod:`.errors`); client-caused ones are
    always 4xx."""
    try:
        return await handler(request)
    except API_ERRORS as exc:
        return error_response(as_api_error(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(from_http_exception(exc))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:       # a bug; still answer in JSON, and log it
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(ApiError("internal-error", "internal server error (see the server log)"))


async def _params(request: web.Request, op: Op) -> Any:
    params: dict[str, Any] = {}
    for key, val in request.query.items():
        if key in op.query and op.query[key].get("in") != "path":   # unknown ones (cache busters) are ignored
            params[key] = val
    params.update(request.match_info)
    if request.method in ("GET", "DELETE"):
        return params
    raw = await request.read()
    if not raw.strip():
        return params or {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ApiError("invalid-json", f"request body is not valid JSON: {exc}") from None
    if params:
        if not isinstance(body, dict):
            raise ApiError("invalid-request", "the request must be a JSON object")
        body = {**body, **params} if request.match_info else {**params, **body}
    return body


def _handler(op: Op) -> Callable:
    async def handle(request: web.Request) -> web.Response:
        params = await _params(request, op)
        result = await op.func(params)
        if isinstance(result, str):
            return web.Response(text=result, content_type="text/plain")
        return web.json_response(result, status=op.status)

    handle.__doc__ = op.func.__doc__
    handle.op = op       # for version_middleware
    return handle


def openapi(ops: list[Op]) -> dict:
    """The OpenAPI 3.0 document describing :func:`operations` plus ``/events``."""
    paths: dict[str, dict] = {}
    errors = {str(s): {"description": d, "content": {"application/json": {"schema": _ERROR}}}
              for s, d in ((400, "malformed JSON"), (409, "robot state conflict"),
                           (422, "invalid request"))}
    for op in ops:
        ok: dict[str, Any] = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
        entry: dict[str, Any] = {"operationId": op.op_id, "summary": op.summary,
                                 "description": (op.func.__doc__ or "").strip(),
                                 "responses": {str(op.status): ok, **errors}}
        entry["parameters"] = [{"name": k, "in": v.get("in", "query"), "required": v.get("in") == "path",
                                "schema": {kk: vv for kk, vv in v.items() if kk != "in"}}
                               for k, v in op.query.items()]
        if op.ot2:
            header, ot2_errors, ok["headers"] = openapi_parts(op.ot2, op.version_header, op.errors)
            entry["parameters"].append(header)
            entry["responses"].update(ot2_errors)
            entry["tags"] = ["OT-2 HTTP API"]
        if op.body is not None:
            entry["requestBody"] = {"required": False,
                                    "content": {"application/json": {"schema": op.body}}}
        for path in (op.path, *op.aliases):
            paths.setdefault(path, {})[op.method.lower()] = entry
    paths["/events"] = {"get": {"operationId": "events", "summary": "Server-sent events: "
                                "position, door, button, lights, motors, board, lease-started, lease-ended, "
                                "lease-paused, lease-resumed",
                                "responses": {"200": {"description": "text/event-stream",
                                                      "content": {"text/event-stream": {}}}}}}
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document",
                                      "responses": {"200": {"description": "OpenAPI 3.0"}}}}
    return {"openapi": "3.0.3",
            "info": {"title": "OT-2 robot server", "version": __version__},
            "paths": paths}


class EventStream:
    """``GET /events``: server-sent events. Each event is ``event: <name>`` and
    ``data: {"event", "seq", "time", "data"}``; a comment line is sent every 15 s."""

    def __init__(self, svc: RobotService) -> None:
        self.svc = svc

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        q = self.svc.events.subscribe()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await resp.write(b": robot-server events\n\n")
            initial = [{"event": "door", "data": self.svc._door_state()},
                       {"event": "position", "data": self.svc._positions()}]
            for ev in initial:
                await resp.write(self._frame(ev))
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), SSE_KEEPALIVE_S)
                except asyncio.TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if ev is None:
                    break
                await resp.write(self._frame(ev))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.svc.events.unsubscribe(q)
        return resp

    @staticmethod
    def _frame(ev: dict) -> bytes:
        return f"event: {ev['event']}\ndata: {json.dumps(ev)}\n\n".encode()


def make_app(svc: RobotService, engine: EngineHost | None = None, access: Access | None = None) -> web.Application:
    """Build the aiohttp application for ``svc`` (routes from :func:`operations` and
    :func:`pairing_operations`), plus the engine's ``/protocols`` and ``/runs``
    (:mod:`.runs_api`) when ``engine`` is given; ``access`` checks every request
    (``docs/security.md``; without it, as in unit tests of the handlers, nothing is checked)."""
    middlewares = [error_middleware, version_middleware] + ([access.middleware] if access else [])
    expect = access.expect if access else None
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    ops = operations(svc) + pairing_operations(svc)
    for op in ops:
        for path in (op.path, *op.aliases):
            app.router.add_route(op.method, route_path(path), _handler(op), expect_handler=expect)
    doc = openapi(ops)
    if engine is not None:
        doc["paths"].update(runs_api.register(app, engine, expect))

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(doc)

    app.router.add_get("/openapi.json", openapi_json)
    stream = EventStream(svc)

    async def events(request: web.Request) -> web.StreamResponse:
        return await stream(request)

    app.router.add_get("/events", events)
    usb_drives.add_routes(app)
    return app
