"""Loading and running protocol files written for the OT-2's Python Protocol API v2.

A protocol file is ordinary Python: ``from opentrons import protocol_api``, a
``metadata = {"apiLevel": "2.15", ...}`` (or ``requirements = {"apiLevel": ...}``) and
``def run(protocol): ...``. When the real ``opentrons`` package is not installed, the
names ``opentrons``, ``opentrons.protocol_api`` and ``opentrons.types`` are provided by
this package (injected into ``sys.modules`` only while a protocol is loaded or running),
so such files run unchanged. Every failure becomes a :class:`ProtocolFailure` naming the
protocol's line.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import threading
import traceback
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import context as _context
from . import labware as _labware
from . import types as _types
from .errors import APIVersionError, ProtocolAPIError, ProtocolFailure, ProtocolStopped

_shim_lock = threading.Lock()
_shim_users = 0
_SHIM_NAMES = ("opentrons", "opentrons.protocol_api", "opentrons.types")


def real_opentrons_installed() -> bool:
    """True if the real ``opentrons`` package is importable (then it is used as-is)."""
    mod = sys.modules.get("opentrons")
    if mod is not None:
        return not getattr(mod, "__ot2_edge_shim__", False)
    try:
        return importlib.util.find_spec("opentrons") is not None
    except (ImportError, ValueError):
        return False


def _build_shim() -> dict[str, types.ModuleType]:
    api = types.ModuleType("opentrons.protocol_api")
    api.__doc__ = "ot2-robot-server's implementation of the OT-2 Python Protocol API v2 subset"
    for name in ("ProtocolContext", "InstrumentContext", "RunControl"):
        setattr(api, name, getattr(_context, name))
    api.Labware = _labware.Labware
    api.Well = _labware.Well
    api.Deck = _labware.Deck
    api.MAX_SUPPORTED_VERSION = _context.MAX_API_VERSION
    tps = types.ModuleType("opentrons.types")
    for name in ("Point", "Location", "Mount"):
        setattr(tps, name, getattr(_types, name))
    top = types.ModuleType("opentrons")
    top.__path__ = []            # a package, so ``import opentrons.protocol_api`` works
    top.__version__ = "0.0.0+ot2-edge"
    top.__ot2_edge_shim__ = True
    top.protocol_api = api
    top.types = tps
    return {"opentrons": top, "opentrons.protocol_api": api, "opentrons.types": tps}


@contextmanager
def opentrons_shim() -> Iterator[bool]:
    """While active, ``import opentrons.protocol_api`` gives ours, unless the real package
    is installed. Yields True if the shim is in use. Reference-counted and thread-safe."""
    global _shim_users
    with _shim_lock:
        use = real_opentrons_installed() is False
        if use:
            if _shim_users == 0:
                sys.modules.update(_build_shim())
            _shim_users += 1
    try:
        yield use
    finally:
        if use:
            with _shim_lock:
                _shim_users -= 1
                if _shim_users == 0:
                    for name in _SHIM_NAMES:
                        mod = sys.modules.get(name)
                        if mod is not None and (getattr(mod, "__ot2_edge_shim__", False)
                                                or mod.__name__ in _SHIM_NAMES[1:]):
                            sys.modules.pop(name, None)


@dataclass
class Protocol:
    """A loaded protocol: its module namespace, ``run`` and metadata."""

    filename: str
    source: str
    namespace: dict
    run: Callable[[Any], Any]
    metadata: dict = field(default_factory=dict)
    requirements: dict = field(default_factory=dict)
    api_version: tuple[int, int] = _context.DEFAULT_API_VERSION

    @property
    def name(self) -> str:
        return str(self.metadata.get("protocolName") or self.filename.rsplit("/", 1)[-1])


def _source_line(source: str, line: int | None) -> str:
    if not line:
        return ""
    lines = source.splitlines()
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""


def failure_from(exc: BaseException, filename: str, source: str, kind: str) -> ProtocolFailure:
    """A :class:`ProtocolFailure` for ``exc``, located at the innermost frame of the protocol file."""
    trace = [(fs.lineno, _source_line(source, fs.lineno))
             for fs in traceback.extract_tb(exc.__traceback__) if fs.filename == filename]
    line = trace[-1][0] if trace else None
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        line = exc.lineno
        trace = [(line, _source_line(source, line))]
    if isinstance(exc, ProtocolStopped):
        return ProtocolFailure("stopped", "stopped", f"stopped by request{f' at line {line}' if line else ''}",
                               filename=filename, line=line, error_type="ProtocolStopped", trace=trace)
    if isinstance(exc, KeyboardInterrupt):
        return ProtocolFailure("stopped", "stopped", "interrupted", filename=filename, line=line,
                               error_type="KeyboardInterrupt", trace=trace)
    code = getattr(exc, "code", None) if isinstance(exc, ProtocolAPIError) else None
    if code is None:
        code = {SyntaxError: "syntax-error", ModuleNotFoundError: "missing-module",
                ImportError: "import-error"}.get(type(exc), "python-error")
        if isinstance(exc, SyntaxError):
            code = "syntax-error"
    detail = exc.msg if isinstance(exc, SyntaxError) else (str(exc) or type(exc).__name__)
    if isinstance(exc, ModuleNotFoundError):
        detail = f"{detail} (install it on the robot with pip, or remove the import)"
    return ProtocolFailure(kind, str(code), detail, filename=filename, line=line, error_type=type(exc).__name__,
                           trace=trace)


def _assignment_line(tree: ast.Module, name: str) -> int | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.lineno
    return None


def load_protocol(source: str | bytes, filename: str = "protocol.py") -> Protocol:
    """Compile and execute the protocol's module body (imports, metadata, ``def run``).
    Raises :class:`ProtocolFailure` (kinds ``syntax``, ``load``, ``no-run``, ``api-version``)."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolFailure("syntax", "not-utf8", f"the file is not UTF-8 text ({exc.reason} at byte "
                                  f"{exc.start})", filename=filename, line=None, error_type="UnicodeDecodeError") from None
    try:
        tree = ast.parse(source, filename)
        code = compile(tree, filename, "exec")
    except (SyntaxError, ValueError) as exc:
        if isinstance(exc, SyntaxError):
            exc.filename = filename
        raise failure_from(exc, filename, source, "syntax") from None
    namespace: dict = {"__name__": "__protocol__", "__file__": filename, "__builtins__": __builtins__}
    with opentrons_shim():
        try:
            exec(code, namespace)  # noqa: S102 - running the user's protocol is the point
        except (Exception, ProtocolStopped, KeyboardInterrupt) as exc:       # noqa: BLE001
            raise failure_from(exc, filename, source, "load") from None
    run = namespace.get("run")
    if not callable(run):
        raise ProtocolFailure("no-run", "no-run-function",
                              "the protocol has no run(protocol) function; define `def run(protocol): ...`",
                              filename=filename, line=None, error_type="ProtocolError")
    metadata = namespace.get("metadata") or {}
    requirements = namespace.get("requirements") or {}
    if not isinstance(metadata, dict) or not isinstance(requirements, dict):
        raise ProtocolFailure("load", "bad-metadata", "metadata and requirements must be dicts",
                              filename=filename, line=_assignment_line(tree, "metadata"), error_type="ProtocolError")
    level = requirements.get("apiLevel", metadata.get("apiLevel"))
    robot = requirements.get("robotType", "OT-2")
    if robot not in ("OT-2", "OT2"):
        raise ProtocolFailure("api-version", "robot-type", f"robotType {robot!r}: this is an OT-2",
                              filename=filename, line=_assignment_line(tree, "requirements"),
                              error_type="ProtocolError")
    try:
        version = _context.parse_api_version(level) if level is not None else _context.DEFAULT_API_VERSION
    except APIVersionError as exc:
        line = _assignment_line(tree, "requirements" if "apiLevel" in requirements else "metadata")
        raise ProtocolFailure("api-version", exc.code, str(exc), filename=filename, line=line,
                              error_type="APIVersionError") from None
    return Protocol(filename, source, namespace, run, dict(metadata), dict(requirements), version)


def run_protocol(protocol: Protocol, ctx: _context.ProtocolContext) -> dict:
    """Call ``protocol.run(ctx)``. Returns the context's summary. Raises
    :class:`ProtocolFailure` (kind ``run`` or ``stopped``) naming the protocol's line."""
    with opentrons_shim():
        try:
            protocol.run(ctx)
        except TypeError as exc:
            failure = failure_from(exc, protocol.filename, protocol.source, "run")
            if failure.line is None:                    # run() itself has the wrong signature
                failure = ProtocolFailure("run", "bad-run-signature",
                                          f"run() must take one argument, the protocol context ({exc})",
                                          filename=protocol.filename,
                                          line=protocol.run.__code__.co_firstlineno
                                          if hasattr(protocol.run, "__code__") else None,
                                          error_type="TypeError")
            raise failure from None
        except (Exception, ProtocolStopped, KeyboardInterrupt) as exc:       # noqa: BLE001
            raise failure_from(exc, protocol.filename, protocol.source, "run") from None
    return ctx.summary()


def make_context(protocol: Protocol, hardware: Any = None, **kwargs: Any) -> _context.ProtocolContext:
    """A :class:`ProtocolContext` for ``protocol`` (its API level, its file for line numbers)."""
    return _context.ProtocolContext(hardware, api_version=protocol.api_version,
                                    protocol_file=protocol.filename, **kwargs)


def simulate(source: str | bytes, filename: str = "protocol.py", **kwargs: Any) -> tuple[Protocol, _context.ProtocolContext]:
    """Load and simulate; returns (protocol, context) with ``context.commands`` and
    ``context.summary()``. Raises :class:`ProtocolFailure`."""
    proto = load_protocol(source, filename)
    ctx = make_context(proto, None, **kwargs)
    run_protocol(proto, ctx)
    return proto, ctx
