"""The robot server's errors, in the update server's idiom (``update_server/errors.py``):
an error carries a stable ``code``; a table maps codes to HTTP statuses; the HTTP layer
turns an error into the body of the endpoint's API, in one place per API shape.

* :class:`ApiError` ``(code, message)``: our endpoints answer ``{"error": code,
  "message": message}`` (``api.error_middleware``, ``access.refusal``; the bridge's error
  reply) with the status of :data:`HTTP_STATUS`.
* :class:`Ot2Error` ``(error_id, title, detail, error_code, pointer)``: an error of the
  OT-2 robot server, status from :data:`OT2_STATUS`; the OT-2's endpoints answer every
  error in the OT-2's shapes (``versioning.version_middleware``, ``access.refusal``).
* The motor driver's errors (:class:`~robot_server.driver.DriverError`) are answered
  like an :class:`ApiError` of their class's ``code`` (:func:`as_api_error`): handlers
  let them through.

Sources of the OT-2 facts: Opentrons/opentrons, robot-server/robot_server/errors/
error_responses.py (the body), the routers that raise each id (e.g. robot-server/
robot_server/runs/router/base_router.py), opentrons_shared_data/errors/codes.py
(``errorCode``).
"""
from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from .driver import DriverError

#: ``errorCode``s of the OT-2's bodies (opentrons_shared_data/errors/codes.py).
GENERAL_ERROR_CODE = "4000"
ROBOT_IN_USE_CODE = "4001"
COMMUNICATION_ERROR_CODE = "1000"


def kebab(phrase: str) -> str:
    """``"Method Not Allowed"`` -> ``"method-not-allowed"``."""
    return "-".join("".join(c if c.isalnum() else " " for c in phrase.lower()).split())


#: Our codes -> HTTP status. aiohttp's own refusals (unknown path or method, ...) have the
#: kebab-case name of their status (``not-found``, ``method-not-allowed``); a code missing
#: here is a bug and answers 500.
HTTP_STATUS = {
    **{kebab(s.phrase): s.value for s in HTTPStatus if s.value >= 400},
    # requests
    "invalid-json": 400,
    "invalid-request": 422,
    "missing-version-header": 422,
    "invalid-version-header": 422,
    "unknown-setting": 400,
    "unknown-command": 404,
    "drive-not-found": 404,
    "bad-pairing": 404,
    "pairing-in-progress": 409,
    "too-many-requests": 429,
    "reset-not-allowed": 403,
    "wifi-unavailable": 401,
    # access (the update server's checks, update_server/access.py)
    "unauthorized": 401,
    "cross-origin": 403,
    "bad-interface": 403,
    "unsupported-media-type": 415,
    "request-too-large": 413,
    # the robot's state
    "door-open": 409,
    "robot-leased": 409,
    "not-paused": 409,
    "not-simulated": 409,
    # driver.py: a motion refused before anything moved, 422 ...
    "invalid-motion": 422,
    "unknown-axis": 422,
    "invalid-speed": 422,
    "soft-limit": 422,
    # ... but not homed, and the board's failures, conflict with the robot's state:
    # retrying after homing or reconnecting can succeed
    "not-homed": 409,
    "driver-error": 409,
    "board-error": 409,
    "board-alarm": 409,
    "board-halted": 409,
    "board-timeout": 409,
    "board-not-connected": 409,
    "board-disconnected": 409,
    # a bug
    "internal-error": 500,
}

#: The OT-2's error ids -> HTTP status, as its robot server answers them; on the OT-2's
#: endpoints our own codes keep their :data:`HTTP_STATUS` except the ones listed here.
OT2_STATUS = {
    "OutdatedAPIVersion": 400,
    "NotSupportedOnOT2": 403,
    "CameraException": 500,
    "InvalidRequest": 422,
    "ProtocolFilesInvalid": 422,
    "ProtocolNotFound": 404,
    "AnalysisNotFound": 404,
    "RunNotFound": 404,
    "CommandNotFound": 404,
    "StatelessCommandNotFound": 404,
    "RunActive": 409,
    "RunAlreadyActive": 409,
    "RunNotIdle": 409,
    "RunStopped": 409,
    "RunActionNotAllowed": 409,
    "RunAlreadyStarted": 409,
    "CommandNotAllowed": 409,
    "ProtocolUsedByRun": 409,
    "FileTooLarge": 413,
    "RunNotReady": 503,
    "AnalysisUnavailable": 503,
    "invalid-json": 422,     # the OT-2 validates the JSON body as a field of the request
}


class ApiError(Exception):
    """An error a client is answered with: a stable ``code`` and a human ``message``;
    :attr:`status` from :data:`HTTP_STATUS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict:
        """``{"error": code, "message": message}``, our endpoints' error body."""
        return {"error": self.code, "message": self.message}


class Ot2Error(ApiError):
    """An error of the OT-2 robot server: ``error_id`` (e.g. ``RunNotFound``, also the
    ``code``), ``title``, ``detail`` (the ``message``), ``error_code`` and, for a request
    the OT-2 refuses field by field, the JSON ``pointer`` of the field; :attr:`status`
    from :data:`OT2_STATUS`."""

    def __init__(self, error_id: str, title: str, detail: str, error_code: str = GENERAL_ERROR_CODE,
                 pointer: str | None = None) -> None:
        super().__init__(error_id, detail)
        self.title = title
        self.error_code = error_code
        self.pointer = pointer

    @property
    def status(self) -> int:
        return OT2_STATUS.get(self.code, 500)


#: What a handler may raise to be answered with an error body.
API_ERRORS = (ApiError, DriverError)


def as_api_error(exc: ApiError | DriverError) -> ApiError:
    """``exc`` as an :class:`ApiError`: a driver error becomes one of its class's ``code``."""
    return ApiError(exc.code, str(exc)) if isinstance(exc, DriverError) else exc


def error_response(exc: ApiError) -> web.Response:
    """Our endpoints' answer to ``exc``: ``{"error", "message"}`` with its status."""
    return web.json_response(exc.body(), status=exc.status)


def not_found(kind: str, what: str) -> Ot2Error:
    """404 ``<Kind>NotFound`` (``ProtocolNotFound``, ``RunNotFound``, ``AnalysisNotFound``,
    ``CommandNotFound``)."""
    title = {"Command": "Run Command Not Found"}.get(kind, f"{kind} Not Found")
    return Ot2Error(f"{kind}NotFound", title, f"{kind} {what} was not found.")


def invalid_request(detail: str, pointer: str = "/data") -> Ot2Error:
    """422 ``InvalidRequest`` pointing at the offending part of the body."""
    return Ot2Error("InvalidRequest", "Invalid Request", detail, pointer=pointer)
