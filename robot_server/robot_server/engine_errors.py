"""Errors of the engine resources (``/protocols``, ``/runs``) in the OT-2 robot server's
shape: ``{"errors": [{"id", "title", "detail", "errorCode", ...}]}`` (Opentrons/opentrons,
robot-server/robot_server/errors/error_responses.py; the ids below are the ones its
routers raise, e.g. robot-server/robot_server/runs/router/base_router.py). ``errorCode``
comes from opentrons_shared_data/errors/codes.py: "4000" general error, "4001" robot
in use.
"""
from __future__ import annotations

from .service import ApiError

GENERAL = "4000"
ROBOT_IN_USE = "4001"


class EngineError(ApiError):
    """An OT-2-shaped error: HTTP ``status``, ``error_id`` (e.g. ``RunNotFound``),
    ``title`` and ``detail``; :meth:`ot2_body` is what the client receives. It is an
    :class:`ApiError` too (``code`` = ``error_id``), so our own handlers treat it alike."""

    def __init__(self, status: int, error_id: str, title: str, detail: str, error_code: str = GENERAL,
                 pointer: str | None = None) -> None:
        super().__init__(status, error_id, detail)
        self.error_id = error_id
        self.title = title
        self.error_code = error_code
        self.pointer = pointer

    def ot2_body(self) -> dict:
        error = {"id": self.error_id, "title": self.title, "detail": self.message, "errorCode": self.error_code}
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer}
        return {"errors": [error]}


def not_found(kind: str, what: str) -> EngineError:
    """404 ``<Kind>NotFound`` (``ProtocolNotFound``, ``RunNotFound``, ``AnalysisNotFound``,
    ``CommandNotFound``)."""
    title = {"Command": "Run Command Not Found"}.get(kind, f"{kind} Not Found")
    return EngineError(404, f"{kind}NotFound", title, f"{kind} {what} was not found.")


def invalid_request(detail: str, pointer: str = "/data") -> EngineError:
    """422 ``InvalidRequest`` pointing at the offending part of the body."""
    return EngineError(422, "InvalidRequest", "Invalid Request", detail, pointer=pointer)
