"""The OT-2 HTTP API's versioning and error bodies, for the OT-2's own endpoints.

Facts from the OT-2 robot server (Opentrons/opentrons, robot-server/robot_server/
versioning.py, errors/error_responses.py, errors/exception_handlers.py, router.py):

* Requests carry ``Opentrons-Version: <int>`` or ``*`` (latest). Every endpoint requires
  it except ``/logs/...``; missing or not an integer is a 422 validation error; a version
  below the minimum is 400 ``OutdatedAPIVersion``; a higher one is served as the latest.
* Responses carry ``Opentrons-Version`` (the version used) and ``Opentrons-Min-Version``.
* The legacy ("v1") endpoints (``/health``, ``/robot/...``, ``/motors/...``,
  ``/settings...``, ``/pipettes``, ``/networking/...``, ``/calibration/...``, ...) answer
  errors as ``{"message", "errorCode"}``; the newer ones (``/protocols``, ``/runs``,
  ``/commands``, ``/modules``, ``/instruments``, ``/robot/door/status``, ...) as
  ``{"errors": [{"id", "title", "detail", "errorCode", ...}]}``. ``errorCode`` "4000"
  is the general error (opentrons_shared_data/errors/codes.py).

Ours: legacy error bodies keep our stable ``error`` code next to ``message`` and
``errorCode``; ``/health`` answers without the header too (the boot check and our own
tools poll it), with our extra fields; with the header it answers exactly the OT-2's
fields, since clients build objects from them.
"""
from __future__ import annotations

from dataclasses import dataclass

import json
import re
from http import HTTPStatus
from typing import Callable

from aiohttp import web

from .errors import API_ERRORS, GENERAL_ERROR_CODE, OT2_STATUS, ApiError, Ot2Error, as_api_error, kebab

#: The OT-2 HTTP API version our OT-2 resources match: what the robot server of opentrons
#: 8.x (8.8.2 included) reports; unchanged since software 6.3.
API_VERSION = 4
#: The oldest version the OT-2 still serves.
MIN_API_VERSION = 2
HEADER = "Opentrons-Version"
MIN_HEADER = "Opentrons-Min-Version"
LATEST = "*"

LEGACY = "legacy"      # Op.ot2: {"message", "errorCode"} errors (plus our "error")
JSONAPI = "jsonapi"    # Op.ot2: {"errors": [...]} errors


_LEGACY_SCHEMA = {"type": "object", "required": ["message", "errorCode"], "properties": {
    "message": {"type": "string"}, "errorCode": {"type": "string"},
    "error": {"type": "string", "description": "our stable error code"}}}
_JSONAPI_SCHEMA = {"type": "object", "required": ["errors"], "properties": {"errors": {
    "type": "array", "items": {"type": "object", "required": ["id", "title", "detail", "errorCode"], "properties": {
        "id": {"type": "string"}, "title": {"type": "string"}, "detail": {"type": "string"},
        "errorCode": {"type": "string"}}}}}}


@dataclass(frozen=True)
class Ot2Endpoint:
    """Marks a route handler (``handler.op``) added outside :mod:`.api`'s operations as one
    of the OT-2's endpoints, for :func:`version_middleware` (same fields as ``operation.Op``)."""
    ot2: str
    version_header: bool = True
    ot2_fields: tuple[str, ...] = ()


def openapi_parts(kind: str, header_required: bool,
                  more_errors: tuple[tuple[int, str], ...] = ()) -> tuple[dict, dict, dict]:
    """For an OT-2 operation's OpenAPI entry: the ``Opentrons-Version`` parameter, the
    error responses in the OT-2's shape of ``kind`` (the usual ones and ``more_errors``,
    ``(status, why)``), and the response headers."""
    param = {"name": HEADER, "in": "header", "required": header_required,
             "description": f"HTTP API version: an integer >= {MIN_API_VERSION} (higher ones get "
                            f"{API_VERSION}) or '*' for the latest",
             "schema": {"oneOf": [{"type": "integer", "minimum": MIN_API_VERSION}, {"type": "string", "enum": ["*"]}]}}
    schema = _LEGACY_SCHEMA if kind == LEGACY else _JSONAPI_SCHEMA
    errors = {str(s): {"description": d, "content": {"application/json": {"schema": schema}}}
              for s, d in ((400, "outdated API version"), (404, "unknown id"), (409, "robot state conflict"),
                           (422, "invalid request, missing or malformed Opentrons-Version"), *more_errors)}
    headers = {HEADER: {"schema": {"type": "integer"}, "description": "the version served"},
               MIN_HEADER: {"schema": {"type": "integer"}, "description": "the oldest version served"}}
    return param, errors, headers


def route_path(path: str) -> str:
    """The aiohttp route for an OpenAPI path template (``/runs/{runId}``): each ``{name}``
    matches any text but a slash (aiohttp's default leaves out braces), so an odd id
    reaches its resource and gets that resource's 404, in its API's error shape."""
    return re.sub(r"\{(\w+)\}", r"{\1:[^/]+}", path)


def from_http_exception(exc: web.HTTPException) -> ApiError:
    """The :class:`ApiError` for an aiohttp 4xx (unknown path, method, body too large):
    the kebab-case name of its status (``request-too-large`` for 413)."""
    code = "request-too-large" if exc.status == 413 else kebab(HTTPStatus(exc.status).phrase)
    return ApiError(code, exc.text if exc.status == 413 and exc.text else exc.reason)


def _camel(code: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in code.replace("_", "-").split("-")) or "Error"


def error_body(kind: str, exc: ApiError) -> dict:
    """The OT-2's error body of ``kind`` (:data:`LEGACY` / :data:`JSONAPI`) for ``exc``;
    our codes become ids in CamelCase, with the title of their status."""
    error_code = getattr(exc, "error_code", GENERAL_ERROR_CODE)
    if kind == LEGACY:
        return {"message": exc.message, "errorCode": error_code, "error": exc.code}
    if not isinstance(exc, Ot2Error):
        exc = Ot2Error(_camel(exc.code), HTTPStatus(exc.status).phrase, exc.message)
    error = {"id": exc.code, "title": exc.title, "detail": exc.message, "errorCode": error_code}
    if exc.pointer is not None:
        error["source"] = {"pointer": exc.pointer}
    return {"errors": [error]}


def ot2_response(kind: str, exc: ApiError) -> web.Response:
    """The OT-2's endpoints' answer to ``exc``: :func:`error_body`, with the status of
    :data:`~robot_server.errors.OT2_STATUS` (else of ``exc``)."""
    return web.json_response(error_body(kind, exc), status=OT2_STATUS.get(exc.code, exc.status))


def requested_version(value: str | None) -> int:
    """The version to serve for a request header value. Raises :class:`ApiError` 422
    (missing or malformed) or 400 ``OutdatedAPIVersion`` (below :data:`MIN_API_VERSION`)."""
    if value is None:
        raise ApiError("missing-version-header",
                       f"header.{HEADER.lower()}: field required ('{HEADER}: {API_VERSION}' or '*')")
    value = value.strip()
    if value == LATEST:
        return API_VERSION
    try:
        version = int(value)
    except ValueError:
        raise ApiError("invalid-version-header",
                       f"header.{HEADER.lower()}: must be an integer or '*', not {value[:40]!r}") from None
    if version < MIN_API_VERSION:
        raise Ot2Error("OutdatedAPIVersion", "Requested HTTP API version no longer supported",
                       f"The requested API version '{version}' is not supported. '{HEADER}' must be at "
                       f"least '{MIN_API_VERSION}'. Please upgrade your Opentrons App or other HTTP API client.")
    return min(version, API_VERSION)


def _strip_to(resp: web.StreamResponse, fields: tuple[str, ...]) -> web.StreamResponse:
    if not isinstance(resp, web.Response) or resp.status != 200 or resp.body is None:
        return resp
    body = json.loads(resp.body)
    return web.json_response({k: body[k] for k in fields if k in body})


@web.middleware
async def version_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """For the OT-2's endpoints (operations with ``ot2`` set): check ``Opentrons-Version``,
    answer errors in the OT-2's shape, and set the version headers. Our own endpoints and
    unknown paths pass through untouched."""
    op = getattr(request.match_info.handler, "op", None)
    kind = getattr(op, "ot2", None)
    if kind is None:
        return await handler(request)
    version = API_VERSION
    raw = request.headers.get(HEADER)
    try:
        if op.version_header or (raw is not None and op.ot2_fields):
            version = requested_version(raw)
        resp = await handler(request)
        if raw is not None and op.ot2_fields:
            resp = _strip_to(resp, op.ot2_fields)
    except API_ERRORS as exc:
        resp = ot2_response(kind, as_api_error(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = ot2_response(kind, from_http_exception(exc))
    resp.headers[HEADER] = str(version)
    resp.headers[MIN_HEADER] = str(MIN_API_VERSION)
    return resp
