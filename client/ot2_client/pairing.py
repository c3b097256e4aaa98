"""``ot2 pair``: get a token from a robot (``docs/security.md``, "Pairing").

1. Over a trusted interface (the USB cable) the update server issues a token at once:
   ``POST /server/tokens {"client"}`` on port 34000.
2. Anywhere else (403 ``bad-interface``), the robot server's button pairing on port
   31950: ``POST /pair {"client"}`` -> 202 ``{pairing_id, expires_in}``; the front
   button's light blinks; ``GET /pair/{pairing_id}`` is polled until ``status`` is
   ``approved`` (the answer carries ``token`` and ``id``, once) or ``expired``;
   ``DELETE /pair/{pairing_id}`` withdraws the request when the user gives up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from .errors import ClientError
from .robot import Robot
from .targets import Target

ROBOT_SERVER_PORT = 31950


async def pair(session, target: Target, client: str, robot_port: int = ROBOT_SERVER_PORT,
               wait: float = 60.0, poll: float = 1.0, note=print) -> dict:
    """A new token for ``client`` from the robot at ``target`` (its update server):
    ``{token, id, via}``.  ``note(text)`` tells the user to press the button.

    Raises :class:`ClientError` (``pairing-expired`` when nobody pressed the button).
    """
    update_server = Robot(session, target)
    try:
        issued = await update_server.issue_token(client)
        return {"token": issued["token"], "id": issued["id"], "via": issued.get("via", "trusted-interface")}
    except ClientError as e:
        if e.code not in ("bad-interface", "unauthorized"):
            raise
    robot_server = Robot(session, replace(target, port=robot_port))
    started = await robot_server.request("POST", "/pair", {"client": client})
    pairing = started["pairing_id"]
    note(f"press the front button of {target.spec} within {started.get('expires_in', '?')} s "
         "(its light is blinking)")
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(poll)
            state = await robot_server.request("GET", f"/pair/{pairing}")
            if state.get("status") == "approved":
                return {"token": state["token"], "id": state["id"], "via": "button"}
            if state.get("status") != "waiting":
                raise ClientError("pairing-expired", f"the robot says {state.get('status')!r}: "
                                                     "the button was not pressed in time")
        raise ClientError("pairing-expired", f"no button press within {wait:.0f} s")
    except (ClientError, asyncio.CancelledError):
        try:
            await robot_server.request("DELETE", f"/pair/{pairing}", timeout=5)
        except ClientError:
            pass
        raise
