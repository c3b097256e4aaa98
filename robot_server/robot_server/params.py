"""Checks of an operation's ``params`` (HTTP: JSON body or query; bridge: ``params``), shared
by the service and the OT-2 resources. Each raises :class:`~robot_server.errors.ApiError`
``invalid-request`` (422) naming the offending field."""
from __future__ import annotations

import math
from typing import Any

from .errors import ApiError


def invalid(message: str) -> ApiError:
    """An ``invalid-request`` error."""
    return ApiError("invalid-request", message)


def obj(params: Any, allowed: set[str]) -> dict:
    """``params`` as a dict (``{}`` for None) with no field outside ``allowed``."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise invalid("the request must be a JSON object")
    extra = sorted(set(params) - allowed)
    if extra:
        raise invalid(f"unknown field(s): {', '.join(map(str, extra))}; allowed: {', '.join(sorted(allowed)) or 'none'}")
    return params


def boolean(params: dict, key: str, required: bool = False, default: bool | None = None) -> bool | None:
    """Field ``key``: a JSON boolean, or (query strings) ``true``/``false``/``1``/``0``."""
    if key not in params:
        if required:
            raise invalid(f"field {key!r} is required")
        return default
    val = params[key]
    if isinstance(val, str) and val.lower() in ("true", "false", "1", "0"):   # query strings
        return val.lower() in ("true", "1")
    if not isinstance(val, bool):
        raise invalid(f"field {key!r} must be true or false")
    return val


def number(params: dict, key: str, lo: float, hi: float, default: float | None = None) -> float | None:
    """Field ``key``: a finite number (or its text) in ``[lo, hi]``; ``default`` if absent or null."""
    if key not in params or params[key] is None:
        return default
    val = params[key]
    if isinstance(val, str):
        try:
            val = float(val)
        except ValueError:
            raise invalid(f"field {key!r} must be a number") from None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
        raise invalid(f"field {key!r} must be a finite number")
    if not lo <= val <= hi:
        raise invalid(f"field {key!r} must be in [{lo:g}, {hi:g}], got {val:g}")
    return float(val)
