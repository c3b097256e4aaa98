"""HTTP routes of the engine resources, in the OT-2 robot server's shapes (Opentrons/opentrons,
robot-server/robot_server/protocols/router.py, runs/router/*.py, and the HTTP API's
``openapi.json``): bodies are ``{"data": ..., "links"?, "meta"?}``, errors
``{"errors": [{"id", "title", "detail", "errorCode", "source"?}]}`` (:mod:`.errors`, answered by
``versioning.version_middleware``).

=======  ====================================================  ======================
method   path                                                  success
=======  ====================================================  ======================
POST     /protocols  (multipart: ``files`` parts, ``key``)     201 protocol
GET      /protocols                                            200 list + meta
GET      /protocols/{protocolId}                               200 protocol + links
DELETE   /protocols/{protocolId}                               200 ``{}``
GET      /protocols/{protocolId}/analyses                      200 list
GET      /protocols/{protocolId}/analyses/{analysisId}         200 analysis
POST     /runs  ``{"data": {"protocolId"?, "labwareOffsets"?}}``  201 run (no body or no
         ``protocolId``: a run with no protocol, driven by commands)
GET      /runs                                                 200 list + links.current
GET      /runs/{runId}                                         200 run
PATCH    /runs/{runId}  ``{"data": {"current": false}}``       200 run
DELETE   /runs/{runId}                                         200 ``{}``
POST     /runs/{runId}/actions  ``{"data": {"actionType"}}``   201 action
POST     /runs/{runId}/commands  ``{"data": CommandCreate}``   201 command
         (``waitUntilComplete``, ``timeout`` ms)
GET      /runs/{runId}/commands  (``cursor``, ``pageLength``)  200 page + meta + links
GET      /runs/{runId}/commands/{commandId}                    200 command
POST     /runs/{runId}/labware_offsets  ``{"data": offset}``   201 offset
POST     /runs/{runId}/labware_definitions  ``{"data": def}``  201 ``{definitionUri}``
=======  ====================================================  ======================
"""
from __future__ import annotations

import json
import math
from typing import Any, Awaitable, Callable

from aiohttp import web

from .errors import Ot2Error, invalid_request
from .engine_host import EngineHost
from .protocols import MAX_UPLOAD_BYTES
from .versioning import JSONAPI, Ot2Endpoint, openapi_parts, route_path

DEFAULT_PAGE_LENGTH = 20
MAX_PAGE_LENGTH = 1000
Handler = Callable[[web.Request], Awaitable[web.Response]]


def reply(data: Any, status: int = 200, **extra: Any) -> web.Response:
    return web.json_response({"data": data, **extra}, status=status)


def _ot2_endpoint(handler: Handler) -> Handler:
    """``handler`` as an OT-2 endpoint (``handle.op``): ``version_middleware`` checks its
    version header and answers its errors in the OT-2's shape."""
    async def handle(request: web.Request) -> web.Response:
        return await handler(request)

    handle.__doc__ = handler.__doc__
    handle.op = Ot2Endpoint(JSONAPI)
    return handle


async def data_of(request: web.Request, optional: bool = False) -> dict:
    """The ``data`` object of a JSON request body (``{}`` for no body when ``optional``);
    422 ``InvalidRequest`` otherwise."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):
        raise invalid_request("The request body is not valid JSON.", "/") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
        raise invalid_request("The request body must be an object with a 'data' object.", "/data")
    return body["data"]


def _labware_offsets(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_request("labwareOffsets must be a list.", "/data/labwareOffsets")
    for i, offset in enumerate(value):
        check_offset(offset, f"/data/labwareOffsets/{i}")
    return value


def check_offset(offset: Any, pointer: str) -> dict:
    """A labware offset's shape: ``definitionUri``, ``vector`` ``{x, y, z}`` (mm) and a
    ``location`` (legacy) or ``locationSequence``; the engine checks the rest."""
    vector = offset.get("vector") if isinstance(offset, dict) else None
    if (not isinstance(offset, dict) or not isinstance(offset.get("definitionUri"), str)
            or not isinstance(vector, dict)
            or not all(isinstance(vector.get(a), (int, float)) and not isinstance(vector.get(a), bool)
                       and math.isfinite(vector[a]) for a in "xyz")
            or not (isinstance(offset.get("location"), dict) or isinstance(offset.get("locationSequence"), list))):
        raise invalid_request("A labware offset needs definitionUri, vector {x, y, z} (mm) and location.", pointer)
    return offset


async def _files(request: web.Request) -> tuple[list[tuple[str, bytes]], str | None]:
    if not request.content_type.startswith("multipart/"):
        raise invalid_request("Upload protocol files as multipart/form-data parts named 'files'.", "/files")
    files: list[tuple[str, bytes]] = []
    key = None
    size = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            chunks = []
            while chunk := await part.read_chunk(65536):
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise Ot2Error("FileTooLarge", "File Too Large",
                                   f"The upload is larger than {MAX_UPLOAD_BYTES} bytes.")
                chunks.append(chunk)
            if part.name == "files":
                files.append(((part.filename or "").rsplit("/", 1)[-1], b"".join(chunks)))
            elif part.name == "key":
                key = b"".join(chunks).decode("utf-8", "replace")[:200]
    except (ValueError, AssertionError, KeyError):
        raise invalid_request("Malformed multipart body.", "/files") from None
    return files, key


def _bool_query(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise invalid_request(f"'{name}' must be true or false.", f"/{name}")
    return raw in ("true", "1")


def _int_query(request: web.Request, name: str, default: int | None, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_request(f"'{name}' must be a whole number.", f"/{name}") from None
    if not 0 <= value <= hi:
        raise invalid_request(f"'{name}' must be between 0 and {hi}.", f"/{name}")
    return value


class EngineRoutes:
    """The handlers (see the module table) over an :class:`EngineHost`."""

    def __init__(self, host: EngineHost) -> None:
        self.protocols = host.protocols
        self.runs = host.runs

    # ---------------------------------------------------------------- protocols
    async def upload(self, request: web.Request) -> web.Response:
        """Store and analyse a protocol: 201 with ``analysisSummaries`` ``pending``; 422
        ``ProtocolFilesInvalid`` when the engine's reader refuses the files."""
        files, key = await _files(request)
        return reply(await self.protocols.upload(files, key), 201)

    async def list_protocols(self, request: web.Request) -> web.Response:
        data = self.protocols.list()
        return reply(data, meta={"cursor": 0, "totalLength": len(data)})

    async def get_protocol(self, request: web.Request) -> web.Response:
        protocol = self.protocols.get(request.match_info["protocolId"])
        runs = [{"id": r["id"], "href": f"/runs/{r['id']}"} for r in self.runs.list()
                if r["protocolId"] == protocol["id"]]
        return reply(protocol, links={"referencingRuns": runs})

    async def delete_protocol(self, request: web.Request) -> web.Response:
        """409 ``ProtocolUsedByRun`` while a run of it is active."""
        protocol = self.protocols.get(request.match_info["protocolId"])
        if self.runs.protocol_in_use(protocol["id"]):
            raise Ot2Error("ProtocolUsedByRun", "Protocol Used by Run",
                           f"Protocol {protocol['id']} is used by the active run.")
        self.protocols.delete(protocol["id"])
        return web.json_response({})

    async def analyses(self, request: web.Request) -> web.Response:
        data = self.protocols.analyses(request.match_info["protocolId"])
        return reply(data, meta={"cursor": 0, "totalLength": len(data)})

    async def analysis(self, request: web.Request) -> web.Response:
        return reply(self.protocols.analysis(request.match_info["protocolId"], request.match_info["analysisId"]))

    # ---------------------------------------------------------------- runs
    async def create_run(self, request: web.Request) -> web.Response:
        """A run of a stored protocol, or with no body or no ``protocolId`` a run with no
        protocol (commands are then sent with ``POST /runs/{runId}/commands``); 409
        ``RunAlreadyActive`` while the current run has started and not finished."""
        data = await data_of(request, optional=True)
        protocol_id = data.get("protocolId")
        if protocol_id is not None and not isinstance(protocol_id, str):
            raise invalid_request("protocolId must be a stored protocol's id.", "/data/protocolId")
        offsets = _labware_offsets(data.get("labwareOffsets"))
        return reply(await self.runs.create(protocol_id, offsets), 201)

    async def list_runs(self, request: web.Request) -> web.Response:
        data = self.runs.list()
        current = self.runs.current()
        links = {"current": {"href": f"/runs/{current.id}"}} if current is not None else {}
        return reply(data, links=links, meta={"cursor": 0, "totalLength": len(data)})

    async def get_run(self, request: web.Request) -> web.Response:
        return reply(self.runs.get(request.match_info["runId"]).data)

    async def patch_run(self, request: web.Request) -> web.Response:
        data = await data_of(request)
        return reply(self.runs.dismiss(request.match_info["runId"], data.get("current")))

    async def delete_run(self, request: web.Request) -> web.Response:
        await self.runs.delete(request.match_info["runId"])
        return web.json_response({})

    async def action(self, request: web.Request) -> web.Response:
        """``play`` / ``pause`` / ``stop``; 409 ``RunActionNotAllowed`` or ``RunStopped``."""
        run_id = request.match_info["runId"]
        self.runs.get(run_id)
        data = await data_of(request)
        action_type = data.get("actionType")
        if action_type not in ("play", "pause", "stop"):
            raise invalid_request("actionType must be 'play', 'pause' or 'stop'.", "/data/actionType")
        return reply(await self.runs.action(run_id, action_type), 201)

    async def commands(self, request: web.Request) -> web.Response:
        run_id = request.match_info["runId"]
        self.runs.get(run_id)
        cursor = _int_query(request, "cursor", None, 1 << 40)
        length = _int_query(request, "pageLength", DEFAULT_PAGE_LENGTH, MAX_PAGE_LENGTH)
        data, meta, links = self.runs.commands(run_id, cursor, length)
        return reply(data, meta=meta, links=links)

    async def add_command(self, request: web.Request) -> web.Response:
        """Enqueue a command (``{"data": {"commandType", "params", "intent"?: "setup" (the
        default) | "protocol"}}``, the engine's ``CommandCreate``) into the current run:
        setup commands run while the run is idle or paused, protocol commands once it is
        played (Opentrons/opentrons, robot-server/robot_server/runs/router/commands_router.py).
        Query ``waitUntilComplete`` (``true``/``false``) and ``timeout`` (ms, > 0; no limit
        without it): answer once the command has finished or the timeout has passed. 201
        with the command; 404 ``RunNotFound``; 409 ``RunStopped`` (not the current run, or
        finished) or ``CommandNotAllowed``; 422 ``InvalidRequest`` (a malformed body or a
        command type or parameters the engine refuses)."""
        run_id = request.match_info["runId"]
        self.runs.get(run_id)
        wait = _bool_query(request, "waitUntilComplete")
        timeout_ms = _int_query(request, "timeout", None, 1 << 40)
        if timeout_ms == 0:
            raise invalid_request("'timeout' must be more than 0 ms.", "/timeout")
        data = await data_of(request)
        if not isinstance(data.get("commandType"), str):
            raise invalid_request("commandType (a string) is required.", "/data/commandType")
        intent = data.get("intent") or "setup"
        if intent not in ("setup", "protocol"):
            raise invalid_request("intent must be 'setup' or 'protocol'.", "/data/intent")
        command = {**data, "intent": intent}
        timeout_s = timeout_ms / 1000 if timeout_ms is not None else None
        return reply(await self.runs.add_command(run_id, command, wait, timeout_s), 201)

    async def command(self, request: web.Request) -> web.Response:
        return reply(self.runs.command(request.match_info["runId"], request.match_info["commandId"]))

    async def labware_offset(self, request: web.Request) -> web.Response:
        run_id = request.match_info["runId"]
        self.runs.get(run_id)
        offset = check_offset(await data_of(request), "/data")
        return reply(self.runs.add_labware_offset(run_id, offset), 201)

    async def labware_definition(self, request: web.Request) -> web.Response:
        """Add a custom labware definition (``{"data": definition}``, labware schema 2 or 3)
        to the current run: 201 ``{"data": {"definitionUri"}}``; 404 ``RunNotFound``; 409
        ``RunStopped``; 422 ``InvalidRequest`` for a definition the engine's model refuses."""
        run_id = request.match_info["runId"]
        self.runs.get(run_id)
        return reply(await self.runs.add_labware_definition(run_id, await data_of(request)), 201)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/protocols", self.upload),
            ("GET", "/protocols", self.list_protocols),
            ("GET", "/protocols/{protocolId}", self.get_protocol),
            ("DELETE", "/protocols/{protocolId}", self.delete_protocol),
            ("GET", "/protocols/{protocolId}/analyses", self.analyses),
            ("GET", "/protocols/{protocolId}/analyses/{analysisId}", self.analysis),
            ("POST", "/runs", self.create_run),
            ("GET", "/runs", self.list_runs),
            ("GET", "/runs/{runId}", self.get_run),
            ("PATCH", "/runs/{runId}", self.patch_run),
            ("DELETE", "/runs/{runId}", self.delete_run),
            ("POST", "/runs/{runId}/actions", self.action),
            ("POST", "/runs/{runId}/commands", self.add_command),
            ("GET", "/runs/{runId}/commands", self.commands),
            ("GET", "/runs/{runId}/commands/{commandId}", self.command),
            ("POST", "/runs/{runId}/labware_offsets", self.labware_offset),
            ("POST", "/runs/{runId}/labware_definitions", self.labware_definition),
        ]


def _envelope(properties: dict, required: list[str]) -> dict:
    data = {"type": "object", "properties": properties, **({"required": required} if required else {})}
    return {"type": "object", "required": ["data"], "properties": {"data": data}}


_OFFSET = {"type": "object", "required": ["definitionUri", "vector"], "properties": {
    "definitionUri": {"type": "string"}, "location": {"type": "object"}, "locationSequence": {"type": "array"},
    "vector": {"type": "object", "required": ["x", "y", "z"], "properties": {
        a: {"type": "number", "description": "mm"} for a in "xyz"}}}}
#: Request bodies for ``/openapi.json`` (JSON; the upload is multipart).
BODIES = {
    ("POST", "/protocols"): {"multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}, "key": {"type": "string"}}}}},
    ("POST", "/runs"): {"application/json": {"schema": _envelope(
        {"protocolId": {"type": "string"}, "labwareOffsets": {"type": "array", "items": _OFFSET}}, [])}},
    ("POST", "/runs/{runId}/commands"): {"application/json": {"schema": _envelope(
        {"commandType": {"type": "string"}, "params": {"type": "object"},
         "intent": {"type": "string", "enum": ["setup", "protocol"]}, "key": {"type": "string"}},
        ["commandType"])}},
    ("POST", "/runs/{runId}/labware_definitions"): {"application/json": {"schema": {
        "type": "object", "required": ["data"], "properties": {"data": {
            "type": "object", "description": "a labware definition (labware schema 2 or 3)"}}}}},
    ("PATCH", "/runs/{runId}"): {"application/json": {"schema": _envelope(
        {"current": {"type": "boolean", "enum": [False]}}, ["current"])}},
    ("POST", "/runs/{runId}/actions"): {"application/json": {"schema": _envelope(
        {"actionType": {"type": "string", "enum": ["play", "pause", "stop"]}}, ["actionType"])}},
    ("POST", "/runs/{runId}/labware_offsets"): {"application/json": {"schema": {
        "type": "object", "required": ["data"], "properties": {"data": _OFFSET}}}},
}
#: Requests whose body may be left out.
OPTIONAL_BODIES = {("POST", "/runs")}
_QUERY = {("POST", "/runs/{runId}/commands"): [
    {"name": "waitUntilComplete", "in": "query", "required": False, "schema": {"type": "boolean"}},
    {"name": "timeout", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "description": "ms"}}],
    ("GET", "/runs/{runId}/commands"): [
    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
    {"name": "pageLength", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_LENGTH}}]}


def register(app: web.Application, host: EngineHost, expect_handler: Callable | None = None) -> dict:
    """Add the engine routes to ``app`` (``expect_handler``: for ``Expect: 100-continue``,
    see ``access.Access.expect``); returns their ``/openapi.json`` ``paths``."""
    paths: dict[str, dict] = {}
    for method, path, handler in EngineRoutes(host).routes():
        app.router.add_route(method, route_path(path), _ot2_endpoint(handler), expect_handler=expect_handler)
        header, errors, headers = openapi_parts(JSONAPI, header_required=True)
        entry = {"operationId": handler.__name__, "summary": (handler.__doc__ or handler.__name__).strip(),
                 "tags": ["OT-2 HTTP API"],
                 "responses": {"200": {"description": "OK", "headers": headers},
                               "201": {"description": "Created", "headers": headers}, **errors}}
        if (method, path) in BODIES:
            entry["requestBody"] = {"required": (method, path) not in OPTIONAL_BODIES,
                                    "content": BODIES[(method, path)]}
        params = [{"name": name[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in path.split("/") if name.startswith("{")]
        entry["parameters"] = params + _QUERY.get((method, path), []) + [header]
        paths.setdefault(path, {})[method.lower()] = entry
    return paths


#: The bridge operations of :func:`bridge_operations` that only read (open to anyone).
BRIDGE_READ_ONLY = {"listRuns"}


def bridge_operations(host: EngineHost) -> dict[str, Callable[[Any], Awaitable[dict]]]:
    """Run operations for the TCP bridge: ``stopRun`` (the active run), ``listRuns``."""

    async def list_runs(params: Any = None) -> dict:
        return {"data": host.runs.list()}

    return {"stopRun": host.runs.stop_active, "listRuns": list_runs}
