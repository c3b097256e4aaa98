"""One operation of the robot server's HTTP API (and of the TCP bridge): the table
:func:`robot_server.api.operations` is made of these."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Op:
    """One operation: HTTP method + path, and the service coroutine behind it. ``body`` /
    ``query`` are JSON schemas (OpenAPI 3.0 subset) of its parameters."""

    op_id: str
    method: str
    path: str
    func: Callable[[Any], Any]
    summary: str
    body: dict | None = None
    query: dict = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    ot2: str | None = None     # an OT-2 endpoint: its error shape, LEGACY or JSONAPI (versioning.py)
    version_header: bool = True   # OT-2 endpoints: Opentrons-Version required
    ot2_fields: tuple[str, ...] = ()   # with Opentrons-Version, answer only these fields
    status: int = 200          # HTTP status of a success
    errors: tuple[tuple[int, str], ...] = ()   # OT-2 endpoints: further error statuses answered, why
