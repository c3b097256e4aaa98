"""Exceptions a protocol can hit. Each carries a machine-readable ``code``; the loader adds
the protocol's file name and line number (:class:`ProtocolFailure`)."""
from __future__ import annotations


class ProtocolAPIError(Exception):
    """Base of the errors the protocol API raises for a protocol's mistakes."""

    code = "protocol-error"


class LabwareError(ProtocolAPIError):
    code = "labware-error"


class UnknownLabwareError(LabwareError):
    code = "unknown-labware"


class DeckSlotError(ProtocolAPIError):
    code = "invalid-slot"


class SlotOccupiedError(DeckSlotError):
    code = "slot-occupied"


class InstrumentError(ProtocolAPIError):
    code = "instrument-error"


class UnknownInstrumentError(InstrumentError):
    code = "unknown-instrument"


class TipError(ProtocolAPIError):
    code = "tip-error"


class NoTipAttachedError(TipError):
    code = "no-tip-attached"


class TipAttachedError(TipError):
    code = "tip-already-attached"


class OutOfTipsError(TipError):
    code = "out-of-tips"


class VolumeError(ProtocolAPIError):
    code = "volume-error"


class LocationError(ProtocolAPIError):
    code = "invalid-location"


class UnreachableError(LocationError):
    """A location outside the robot's travel (soft limits)."""

    code = "unreachable"


class HardwareError(ProtocolAPIError):
    """The motor board or the robot server refused or failed a motion."""

    code = "hardware-error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class APIVersionError(ProtocolAPIError):
    code = "api-version"


class ProtocolStopped(BaseException):
    """Raised inside a running protocol when a stop was requested. A ``BaseException`` so
    that a protocol's ``except Exception`` does not swallow it."""

    code = "stopped"


class ProtocolFailure(Exception):
    """A protocol could not be loaded or failed while running.

    ``kind``: ``syntax``, ``load``, ``no-run``, ``api-version``, ``run`` or ``stopped``;
    ``code``: the underlying error's code (``unknown-labware``, ``volume-error``,
    ``python-error`` ...); ``line``: 1-based line in the protocol file (``None`` if the
    error is not tied to a line); ``error_type``: the exception class name;
    ``detail``: the bare message; ``trace``: ``[(line, source text)]`` of the protocol
    frames, outermost first."""

    def __init__(self, kind: str, code: str, detail: str, *, filename: str, line: int | None,
                 error_type: str, trace: list[tuple[int, str]] | None = None) -> None:
        self.kind = kind
        self.code = code
        self.detail = detail
        self.filename = filename
        self.line = line
        self.error_type = error_type
        self.trace = trace or []
        where = f"{filename} line {line}" if line else filename
        super().__init__(f"{where}: {error_type}: {detail}")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "code": self.code, "type": self.error_type, "line": self.line,
                "file": self.filename, "message": str(self), "detail": self.detail,
                "trace": [{"line": ln, "source": src} for ln, src in self.trace]}
