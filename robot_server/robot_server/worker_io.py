"""What the sandboxed workers (:mod:`.analysis_worker`, :mod:`.run_worker`) and the server
share: the framing of the workers' messages (written here, read by :func:`frames`), reading a stored protocol with the engine's
reader, and scrubbing what goes back to clients.

Frames are JSON objects, one per line, on a file descriptor private to the worker (its
stdout at start-up; ``fd 1`` and ``fd 2`` are then pointed elsewhere so a protocol's
``print`` cannot reach the server's parser).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import IO, Any, AsyncIterator

#: Keys never sent to a client: a traceback names the server's files and lines.
SCRUBBED_KEYS = ("traceback",)


def private_channel() -> IO[str]:
    """Move stdout aside for frames; afterwards fd 1 (``print``) goes to stderr."""
    frames = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", encoding="utf-8", buffering=1, closefd=False)
    return frames


def send(channel: IO[str], frame: dict) -> None:
    """Write one frame (one JSON line)."""
    channel.write(json.dumps(frame, default=str, separators=(",", ":")) + "\n")
    channel.flush()


async def frames(stream: asyncio.StreamReader) -> AsyncIterator[dict]:
    """The server's side: each frame a worker sends, until it closes its end. Lines that
    are not a JSON object, or longer than the stream's limit, are skipped."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:            # longer than the limit: the rest of it is dropped
            continue
        if not line:
            return
        try:
            frame = json.loads(line)
        except ValueError:
            continue
        if isinstance(frame, dict):
            yield frame


def scrub(value: Any) -> Any:
    """``value`` without :data:`SCRUBBED_KEYS` anywhere inside it."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in SCRUBBED_KEYS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def dump(model: Any) -> Any:
    """A pydantic model (or list of them) as JSON-able data, scrubbed."""
    if isinstance(model, list):
        return [dump(m) for m in model]
    return scrub(json.loads(model.model_dump_json(exclude_none=True)))


async def read_source(directory: Path) -> Any:
    """The engine's :class:`opentrons.protocol_reader.ProtocolSource` for the files of a
    stored protocol (``directory``: the main file plus labware/data files). Raises
    ``opentrons.protocol_reader.ProtocolFilesInvalidError`` for files the engine refuses."""
    from opentrons.protocol_reader import ProtocolReader

    files = sorted(p for p in directory.iterdir() if p.is_file())
    return await ProtocolReader().read_saved(files=files, directory=None)
