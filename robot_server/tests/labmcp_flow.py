"""The whole OT-2 HTTP API flow of ``labmcp-opentrons`` (PyPI; package ``labmcp_opentrons``,
the driver behind an MCP server for lab assistants), used unchanged as a library.

It runs in its own virtual environment (``.venv-labmcp``, made by ``make venv`` from
``ci/requirements-labmcp.txt``): its ``fastmcp`` needs ``jsonschema>=4.20`` and the
``opentrons`` package pins ``jsonschema<4.18``, so the two cannot share an environment;
a lab PC driving a robot has no ``opentrons`` either.

Usage: ``python labmcp_flow.py BASE_URL PROTOCOL [LABWARE.json ...] [--token TOKEN]
[--analysis-timeout S] [--run-timeout S]``.
Prints one JSON report on stdout and exits 0 when every check passed; on a failed check
it exits 1 with the reason on stderr. ``BASE_URL`` is ``http://host:port`` (a robot in
QEMU: the forwarded port of its robot server).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from labmcp_opentrons.driver import TERMINAL_STATUSES, HttpxBackend, OpentronsRobot

PAGE = 7                    # commands per page when paging a run's commands (any small number)


class FlowError(AssertionError):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise FlowError(what)


def page_commands(robot: OpentronsRobot, run_id: str, page_length: int) -> tuple[list[dict], int]:
    """Every command of a run, page by page from cursor 0; (commands, totalLength)."""
    first = robot.run_commands(run_id, page_length=page_length, cursor=0)
    total = first["meta"]["totalLength"]
    commands = list(first["data"])
    check(first["meta"]["cursor"] == 0, f"first page's cursor: {first['meta']}")
    while len(commands) < total:
        page = robot.run_commands(run_id, page_length=page_length, cursor=len(commands))
        check(page["meta"]["cursor"] == len(commands), f"cursor {len(commands)} answered {page['meta']}")
        check(0 < len(page["data"]) <= page_length, f"page at {len(commands)}: {len(page['data'])} commands")
        commands += page["data"]
    return commands, total


def flow(base_url: str, files: list[Path], access_token: str | None = None,
         analysis_timeout: float = 180.0, run_timeout: float = 600.0) -> dict:
    """Health, lights both ways, stateless home, instruments/modules/door/E-stop, then upload
    ``files`` (a protocol and its labware), wait for the analysis, create a run, play it to
    ``succeeded`` and page its commands. Returns a report; raises :class:`FlowError`."""
    robot = OpentronsRobot(HttpxBackend(base_url, access_token=access_token), poll_interval_s=0.2)
    try:
        report: dict = {"identify": robot.identify()}
        check(report["identify"]["model"] == "OT-2", f"model: {report['identify']}")

        check(robot.set_lights(True) is True and robot.lights_on() is True, "lights on")
        check(robot.set_lights(False) is False and robot.lights_on() is False, "lights off")

        home = robot.home()
        check(home["commandType"] == "home" and home["status"] == "succeeded", f"home: {home}")
        report["home"] = home
        report["instruments"] = robot.instruments()
        report["modules"] = robot.modules()
        report["door"] = robot.door_status()
        check(report["door"] is not None and report["door"]["status"] in ("open", "closed"),
              f"door: {report['door']}")
        check(robot.estop_status() is None, "an OT-2 has no E-stop (403)")

        protocol = robot.upload_protocol([(f.name, f.read_bytes()) for f in files])
        check(sorted(f["name"] for f in protocol["files"]) == sorted(f.name for f in files),
              f"files: {protocol['files']}")
        protocol, analysis = robot.wait_for_analysis(protocol["id"], analysis_timeout)
        check(analysis is not None, f"analysis still pending after {analysis_timeout} s")
        check(analysis["status"] == "completed" and analysis["result"] == "ok",
              f"analysis {analysis['status']}/{analysis.get('result')}: {analysis.get('errors')}")
        report["protocol"] = protocol
        report["analysisCommands"] = len(analysis["commands"])

        run = robot.create_run(protocol["id"])
        check(run["status"] == "idle" and run["protocolId"] == protocol["id"], f"new run: {run}")
        runs, current = robot.runs()
        check(current == run["id"] and run["id"] in [r["id"] for r in runs], f"current run {current}")
        robot.run_action(run["id"], "play")
        deadline = time.monotonic() + run_timeout
        while (run := robot.run(run["id"]))["status"] not in TERMINAL_STATUSES:
            check(time.monotonic() < deadline, f"run still {run['status']} after {run_timeout} s")
            time.sleep(0.2)
        check(run["status"] == "succeeded", f"run {run['status']}: {run.get('errors')}")
        report["run"] = run

        commands, total = page_commands(robot, run["id"], PAGE)
        whole = robot.run_commands(run["id"], page_length=total, cursor=0)["data"]
        check([c["id"] for c in commands] == [c["id"] for c in whole], "pages differ from one whole page")
        check(len({c["id"] for c in commands}) == total, "a command id repeats")
        check(all(c["status"] == "succeeded" for c in commands), "a command did not succeed")
        check(total > PAGE, f"only {total} commands: paging not exercised")
        report["commands"] = [c["commandType"] for c in commands]
        return report
    finally:
        robot.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url")
    parser.add_argument("files", nargs="+", type=Path, help="the protocol, then its labware JSON files")
    parser.add_argument("--token", help="an access token (Authorization: Bearer)")
    parser.add_argument("--analysis-timeout", type=float, default=180.0, help="seconds")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        report = flow(args.base_url, args.files, args.token, args.analysis_timeout, args.run_timeout)
    except FlowError as exc:
        print(f"labmcp flow failed: {exc}", file=sys.stderr)
        return 1
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
