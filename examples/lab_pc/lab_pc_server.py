"""The lab PC's side of "the protocol calls the lab PC between steps": a small aiohttp
server the robot's protocol POSTs to.

    python lab_pc_server.py --port 8080          # on the lab PC

``POST /update`` with ``{"step": "<name>"}`` records the step and answers
``{"proceed": true|false, "done": ...}``: here every step is acknowledged at once, except
that a step listed with ``--hold STEP`` answers ``proceed: false`` until someone calls
``POST /release`` with ``{"step": "<name>"}`` (e.g. after checking a balance by hand).
``GET /steps`` lists the steps received so far.
"""
from __future__ import annotations

import argparse
import json
import time

from aiohttp import web


def make_app(hold: set[str] | None = None, steps: list | None = None) -> web.Application:
    """The app; ``steps`` (a list) receives every step posted, if given."""
    steps = [] if steps is None else steps
    held = set(hold or ())
    app = web.Application()

    async def update(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "bad-request", "message": "body must be JSON"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("step"), str):
            return web.json_response({"error": "no-step", "message": "body needs a 'step' string"}, status=400)
        step = body["step"]
        steps.append({"step": step, "time": time.time(), "data": body.get("data")})
        proceed = step not in held
        print(f"robot reached step {step!r} -> {'proceed' if proceed else 'wait'}", flush=True)
        return web.json_response({"proceed": proceed, "done": proceed})

    async def release(request: web.Request) -> web.Response:
        body = await request.json()
        held.discard(body.get("step"))
        return web.json_response({"held": sorted(held)})

    async def list_steps(request: web.Request) -> web.Response:
        return web.json_response({"steps": steps})

    app.router.add_post("/update", update)
    app.router.add_post("/release", release)
    app.router.add_get("/steps", list_steps)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description="lab PC server for the robot's protocol")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--hold", action="append", default=[], help="step that waits for POST /release")
    args = p.parse_args()
    web.run_app(make_app(set(args.hold)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
