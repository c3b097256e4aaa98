"""``robot-simulate`` and ``robot-execute``: run a protocol file without hardware, or on
the robot.

``robot-simulate protocol.py`` prints one line per command (the OT-2's
``opentrons_simulate`` wording, nested commands indented by a tab, followed by the
target point in deck mm unless ``--plain``) and a summary (commands, tips used, µL
moved, estimated duration). ``--json`` prints one JSON document instead.

``robot-execute protocol.py`` runs it on the robot: by default through the running robot
server's HTTP API (``--server``, default ``http://127.0.0.1:<port from the config>``), so
the server stays the only owner of the UART; ``--direct`` drives the motor board itself
(the server must be stopped: the hardware lock says who holds it). Ctrl-C stops the run
after the current motion.

Exit status: 0 success, 1 the protocol failed (the message names the line), 2 usage or
configuration errors, 3 stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any, TextIO

from .context import RunControl
from .errors import HardwareError, ProtocolFailure, ProtocolStopped
from .hardware import DriverHardware, HttpHardware, SimulatedHardware
from .labware import labware_names, pipette_definitions
from .loader import load_protocol, make_context, run_protocol


def format_entry(entry: dict, plain: bool = False) -> str:
    text = "\t" * entry.get("depth", 0) + entry["text"]
    if not plain and entry.get("point") is not None:
        x, y, z = entry["point"]
        text += f"  @ ({x:.2f}, {y:.2f}, {z:.2f})"
    return text


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def format_summary(summary: dict, elapsed: float | None = None) -> str:
    text = (f"Summary: {summary['commands']} commands, {summary['tips_used']} tips used, "
            f"{summary['aspirated_ul']:g} uL aspirated, {summary['dispensed_ul']:g} uL dispensed, "
            f"{summary['moves']} moves, estimated duration {format_duration(summary['duration_s'])}")
    if elapsed is not None:
        text += f" (took {elapsed:.2f} s)"
    return text


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise SystemExit(f"cannot read {path}: {exc.strerror}") from None


# ---------------------------------------------------------------- simulate
def simulate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="robot-simulate", description="Simulate an OT-2 Python protocol (API v2)")
    p.add_argument("protocol", nargs="?", help="protocol file (.py)")
    p.add_argument("--plain", action="store_true", help="command text only, no coordinates")
    p.add_argument("--json", action="store_true", help="print one JSON document (commands, summary, error)")
    p.add_argument("--no-commands", action="store_true", help="with --json: leave the command list out")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary (or the error)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print load commands")
    p.add_argument("--list-labware", action="store_true", help="list known labware and pipettes, then exit")
    p.add_argument("--as-filename", help=argparse.SUPPRESS)    # name shown in errors (robot server uploads)
    args = p.parse_args(argv)
    if args.list_labware:
        print("labware:\n  " + "\n  ".join(labware_names()))
        print("pipettes:\n  " + "\n  ".join(sorted(pipette_definitions())))
        return 0
    if not args.protocol:
        p.error("a protocol file is required")
    source = _read(args.protocol)
    filename = args.as_filename or args.protocol
    out = sys.stdout
    if args.json:           # the robot server stops a never-ending analysis with SIGTERM: report the line

        def on_term(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise ProtocolStopped("analysis timed out")

        signal.signal(signal.SIGTERM, on_term)

    def show(entry: dict) -> None:
        if args.quiet or args.json or (entry["kind"] == "load" and not args.verbose):
            return
        print(format_entry(entry, args.plain), file=out, flush=False)

    t0 = time.perf_counter()
    result: dict[str, Any] = {"ok": False, "protocol": None, "summary": None, "error": None}
    ctx = None
    code = 0
    try:
        proto = load_protocol(source, filename)
        result["protocol"] = {"name": proto.name, "api_level": "%d.%d" % proto.api_version,
                              "metadata": _jsonable(proto.metadata)}
        ctx = make_context(proto, SimulatedHardware(), on_command=show,
                           keep_log=0 if (args.no_commands or not args.json) else 100000)
        run_protocol(proto, ctx)
        result["ok"] = True
    except ProtocolFailure as exc:
        result["error"] = exc.as_dict()
        code = 1
    elapsed = time.perf_counter() - t0
    if ctx is not None:
        result["summary"] = ctx.summary()
        result["summary"]["simulation_s"] = round(elapsed, 4)
    if args.json:
        if ctx is not None and not args.no_commands:
            result["commands"] = ctx.commands
        json.dump(result, out)
        out.write("\n")
        return code
    out.flush()
    if result["error"]:
        print(f"robot-simulate: error: {result['error']['message']}", file=sys.stderr)
        for t in result["error"]["trace"][:-1]:
            print(f"  line {t['line']}: {t['source']}", file=sys.stderr)
    if result["summary"] is not None and (code == 0 or not args.quiet):
        print(format_summary(result["summary"], elapsed))
    return code


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        return {str(k): str(v) for k, v in obj.items()} if isinstance(obj, dict) else str(obj)


# ---------------------------------------------------------------- execute
class _Events:
    """JSON-lines event writer on a file descriptor (the robot server reads it)."""

    def __init__(self, fd: int | None) -> None:
        self.fh: TextIO | None = os.fdopen(fd, "w", buffering=1, encoding="utf-8") if fd is not None else None

    def emit(self, event: str, **data: Any) -> None:
        if self.fh is None:
            return
        try:
            self.fh.write(json.dumps({"event": event, "time": round(time.time(), 3), **data}, default=str) + "\n")
        except (OSError, ValueError):
            self.fh = None


def execute_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="robot-execute", description="Run an OT-2 Python protocol (API v2) on the robot")
    p.add_argument("protocol", help="protocol file (.py)")
    p.add_argument("--server", help="robot server URL (default http://127.0.0.1:<port from the config>)")
    p.add_argument("--direct", action="store_true",
                   help="drive the motor board directly (the robot server must not be running)")
    p.add_argument("--config", help="robot server config (default /etc/ot2/robot-server.toml, optional)")
    p.add_argument("--serial-port", help="with --direct: motor board device or pyserial URL")
    p.add_argument("--left-mount-offset", help="x,y,z mm (default from the config)")
    p.add_argument("--plain", action="store_true", help="command text only, no coordinates")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary (or the error)")
    p.add_argument("--events-fd", type=int, help=argparse.SUPPRESS)      # used by the robot server
    p.add_argument("--as-filename", help=argparse.SUPPRESS)
    p.add_argument("--no-config", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from ..config import Config, ConfigError, load
    try:
        cfg = Config().validate() if args.no_config else load(args.config, required=args.config is not None)
    except ConfigError as exc:
        print(f"robot-execute: config error: {exc}", file=sys.stderr)
        return 2
    offset = cfg.left_mount_offset
    if args.left_mount_offset:
        try:
            offset = [float(v) for v in args.left_mount_offset.split(",")]
            assert len(offset) == 3
        except (ValueError, AssertionError):
            print("robot-execute: --left-mount-offset must be x,y,z", file=sys.stderr)
            return 2
    events = _Events(args.events_fd)
    control = RunControl()
    control.on_state = lambda state, reason: events.emit("state", state=state, reason=reason)

    def on_stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        control.request_stop()
        raise ProtocolStopped("stop requested")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, lambda s, f: control.request_pause("paused by request"))
    signal.signal(signal.SIGUSR2, lambda s, f: control.request_resume())
    events.emit("ready", pid=os.getpid())

    def show(entry: dict) -> None:
        events.emit("command", **entry)
        if not args.quiet and entry["kind"] != "load":
            print(format_entry(entry, args.plain), flush=True)

    lock = driver = None
    t0 = time.monotonic()
    ctx = None
    try:
        try:
            if args.direct:
                from ..driver import DriverError, MotorDriver
                from ..owner import HardwareLock, OwnerError
                try:
                    lock = HardwareLock(cfg.lock_file, "robot-execute").acquire()
                except OwnerError as exc:
                    print(f"robot-execute: {exc} (run without --direct to go through the robot server)",
                          file=sys.stderr)
                    return 2
                driver = MotorDriver(args.serial_port or cfg.serial_port, cfg.baudrate, cfg.ack_timeout)
                try:
                    driver.connect()
                except DriverError as exc:
                    print(f"robot-execute: motor board: {exc}", file=sys.stderr)
                    return 2
                hardware: Any = DriverHardware(driver)
            else:
                hardware = HttpHardware(args.server or f"http://127.0.0.1:{cfg.port}")
                hardware.homed()            # fails early if the server or its board is missing
            proto = load_protocol(_read(args.protocol), args.as_filename or args.protocol)
            events.emit("loaded", name=proto.name, api_level="%d.%d" % proto.api_version)
            ctx = make_context(proto, hardware, control=control, on_command=show, keep_log=0,
                               left_mount_offset=offset)
            run_protocol(proto, ctx)
        except ProtocolStopped:                     # signal arrived outside the protocol's code
            raise ProtocolFailure("stopped", "stopped", "stopped by request", filename=args.protocol, line=None,
                                  error_type="ProtocolStopped") from None
    except HardwareError as exc:
        events.emit("result", ok=False, error={"kind": "run", "code": exc.code, "type": "HardwareError",
                                               "line": None, "message": str(exc), "detail": str(exc), "trace": []})
        print(f"robot-execute: {exc}", file=sys.stderr)
        return 2
    except ProtocolFailure as exc:
        summary = ctx.summary() if ctx is not None else None
        events.emit("result", ok=False, error=exc.as_dict(), summary=summary)
        print(f"robot-execute: {'stopped' if exc.kind == 'stopped' else 'error'}: {exc}", file=sys.stderr)
        return 3 if exc.kind == "stopped" else 1
    finally:
        if driver is not None:
            driver.disconnect()
        if lock is not None:
            lock.release()
    summary = ctx.summary()
    events.emit("result", ok=True, summary=summary)
    print(format_summary(summary, time.monotonic() - t0))
    return 0


if __name__ == "__main__":       # python -m robot_server.protocol.cli {simulate|execute} ...
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "simulate":
        sys.exit(simulate_main(sys.argv[2:]))
    if cmd == "execute":
        sys.exit(execute_main(sys.argv[2:]))
    print("usage: python -m robot_server.protocol.cli {simulate|execute} protocol.py [options]", file=sys.stderr)
    sys.exit(2)
