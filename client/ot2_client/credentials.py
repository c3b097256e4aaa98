"""The user's tokens, one per robot: ``$XDG_CONFIG_HOME/ot2/tokens.json`` (default
``~/.config/ot2/tokens.json``), mode 0600 in a 0700 directory::

    {"format": 1,
     "robots": {"lab-robot-7": {"token": "ot2_...", "id": "3f9c0a1b2c3d4e5f",
                                "address": "10.0.0.12:34000", "name": "Lab robot 7",
                                "paired": "2026-12-01T17:00:00+00:00"}}}

Entries are keyed by the ROBOT argument given to ``ot2 pair``; a lookup tries the
ROBOT argument, then the address it resolved to.  ``$OT2_TOKEN`` overrides the file for
every robot (scripts, CI).  Tokens are sent as ``Authorization: Bearer <token>``
(``docs/security.md``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

FORMAT = 1


def tokens_file() -> Path:
    """Where the tokens are kept (see the module docstring)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "ot2" / "tokens.json"


def _load() -> dict:
    try:
        data = json.loads(tokens_file().read_text())
    except (OSError, ValueError):
        return {}
    robots = data.get("robots") if isinstance(data, dict) else None
    return {k: v for k, v in robots.items() if isinstance(v, dict)} if isinstance(robots, dict) else {}


def _save(robots: dict) -> None:
    path = tokens_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp files are 0600
            json.dump({"format": FORMAT, "robots": robots}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def token_for(spec: str, address: str | None = None) -> str | None:
    """The token to send to robot ``spec`` (resolved to ``address``), or ``None``."""
    if os.environ.get("OT2_TOKEN"):
        return os.environ["OT2_TOKEN"]
    robots = _load()
    for key in (spec, address):
        entry = robots.get(key) if key else None
        if entry and isinstance(entry.get("token"), str):
            return entry["token"]
    return None


def remember(spec: str, token: str, token_id: str, address: str, name: str | None) -> Path:
    """Keep ``token`` for robot ``spec``; returns the file it went to."""
    robots = _load()
    robots[spec] = {
        "token": token, "id": token_id, "address": address, "name": name,
        "paired": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    _save(robots)
    return tokens_file()


def forget_id(token_id: str) -> list:
    """Drop every entry holding the token ``token_id``; returns the ROBOT keys dropped."""
    robots = _load()
    dropped = [k for k, v in robots.items() if v.get("id") == token_id]
    if dropped:
        _save({k: v for k, v in robots.items() if k not in dropped})
    return dropped
