"""The warm analysis worker: imports ``opentrons`` once, analyses one small protocol of
ours to warm the engine's caches, then forks one child per uploaded protocol. Started by
:class:`robot_server.protocols.Analyzer` in the sandbox's limits but as the server's user,
so that killing every process of the sandbox user (a run's end) leaves it warm; each child
drops to the sandbox user and its limits (:func:`robot_server.sandbox.drop_privileges`,
spec in ``argv[1]``) before it reads an uploaded file: uploaded code never runs as root.

Requests on stdin, one JSON line each: ``{"id": analysis id, "dir": protocol directory}``.
Frames back (see :mod:`.worker_io`), each carrying the request's ``id``:

* ``{"ready": true}`` once warm (no ``id``);
* ``{"pid": n}``: the child's pid (the server may kill it when analysis takes too long);
* ``{"invalid": message}``: the engine's reader refused the files (not a protocol);
* ``{"source": {protocolType, robotType, metadata, files, apiVersion|schemaVersion}}``;
* ``{"analysis": {...}}``: the completed analysis in the OT-2 robot server's shape
  (``CompletedAnalysis``: ``result`` ok / not-ok / parameter-value-required,
  ``robotType``, ``runTimeParameters``, ``commands``, ``labware``, ``pipettes``,
  ``modules``, ``liquids``, ``errors``, ``commandAnnotations``, ``liquidClasses``);
* ``{"exit": status}``: the child is gone (``waitpid`` status; negative: killed by
  that signal).

The analysis is the engine's own, as ``opentrons analyze`` does it (Opentrons/opentrons,
api/src/opentrons/cli/analyze.py): ``create_simulating_orchestrator`` → ``load`` → ``run``.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from . import worker_io
from .sandbox import copy_in, drop_privileges

WARM_UP_PROTOCOL = '''
metadata = {"apiLevel": "2.20"}
def run(ctx):
    tips = ctx.load_labware("opentrons_96_tiprack_300ul", 1)
    plate = ctx.load_labware("corning_96_wellplate_360ul_flat", 2)
    pipette = ctx.load_instrument("p300_single_gen2", "right", tip_racks=[tips])
    pipette.transfer(50, plate["A1"], plate["B1"])
'''


def source_info(source) -> dict:
    """The parts of a ``ProtocolSource`` a protocol resource shows."""
    config = source.config
    info = {"protocolType": config.protocol_type.value, "robotType": source.robot_type,
            "metadata": json.loads(json.dumps(source.metadata, default=str)),
            "files": [{"name": f.path.name, "role": f.role.value} for f in source.files]}
    if hasattr(config, "api_version"):
        info["apiVersion"] = f"{config.api_version.major}.{config.api_version.minor}"
    else:
        info["schemaVersion"] = config.schema_version
    return info


async def analyse(directory: Path) -> tuple[dict, dict]:
    """``(source_info, analysis)`` for the protocol in ``directory``. Raises the reader's
    ``ProtocolFilesInvalidError`` for files that are not a protocol."""
    from opentrons.protocol_engine import ErrorOccurrence
    from opentrons.protocol_engine.protocol_engine import code_in_error_tree
    from opentrons.protocol_runner.create_simulating_orchestrator import create_simulating_orchestrator
    from opentrons.protocol_runner.run_orchestrator import ParseMode
    from opentrons_shared_data.errors import ErrorCodes
    from opentrons_shared_data.errors.exceptions import EnumeratedError, PythonException

    source = await worker_io.read_source(directory)
    orchestrator = await create_simulating_orchestrator(robot_type=source.robot_type,
                                                        protocol_config=source.config)
    analysis: dict = {"robotType": source.robot_type}
    try:
        await orchestrator.load(protocol_source=source, parse_mode=ParseMode.NORMAL,
                                run_time_param_values=None, run_time_param_paths=None)
    except Exception as exc:  # noqa: BLE001 - a protocol that fails to load is a failed analysis
        error = exc if isinstance(exc, EnumeratedError) else PythonException(exc)
        occurrence = ErrorOccurrence.from_failed(id="analysis-setup-error",
                                                 createdAt=datetime.now(tz=timezone.utc), error=error)
        analysis.update(runTimeParameters=[], commands=[], labware=[], pipettes=[], modules=[], liquids=[],
                        errors=[worker_io.dump(occurrence)], commandAnnotations=[], liquidClasses=[])
        analysis["result"] = "not-ok"
        return source_info(source), analysis
    result = await orchestrator.run(deck_configuration=[])
    summary = result.state_summary
    analysis.update(runTimeParameters=worker_io.dump(result.parameters),
                    commands=worker_io.dump(result.commands),
                    labware=worker_io.dump(summary.labware), pipettes=worker_io.dump(summary.pipettes),
                    modules=worker_io.dump(summary.modules), liquids=worker_io.dump(summary.liquids),
                    errors=worker_io.dump(summary.errors),
                    commandAnnotations=worker_io.dump(result.command_annotations),
                    liquidClasses=worker_io.dump(summary.liquidClasses))
    if not summary.errors:
        analysis["result"] = "ok"
    elif any(code_in_error_tree(root_error=e, code=ErrorCodes.RUNTIME_PARAMETER_VALUE_REQUIRED)
             for e in summary.errors):
        analysis["result"] = "parameter-value-required"
    else:
        analysis["result"] = "not-ok"
    return source_info(source), analysis


def child(channel: IO[str], request: dict, drop_spec: str) -> None:
    """The forked child: drop privileges, analyse one protocol and report it; never returns."""
    from opentrons.protocol_reader import ProtocolFilesInvalidError

    os.setsid()
    try:
        files = copy_in(Path(request["dir"]), Path(tempfile.mkdtemp(prefix="ot2-analysis-")), drop_spec)
        drop_privileges(drop_spec)
    except BaseException:  # noqa: BLE001 - never analyse with the worker's privileges
        os._exit(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    rid = request["id"]
    try:
        info, analysis = asyncio.run(analyse(files))
        worker_io.send(channel, {"id": rid, "source": info})
        worker_io.send(channel, {"id": rid, "analysis": analysis})
    except ProtocolFilesInvalidError as exc:
        worker_io.send(channel, {"id": rid, "invalid": str(exc)[:2000]})
    except BaseException as exc:  # noqa: BLE001 - reported, never a traceback
        worker_io.send(channel, {"id": rid, "invalid": f"the protocol could not be analysed: "
                                                        f"{type(exc).__name__}: {str(exc)[:500]}"})
    finally:
        shutil.rmtree(files.parent, ignore_errors=True)
        os._exit(0)


def warm_up() -> None:
    """Analyse a small protocol in this process, so children start with warm caches."""
    with tempfile.TemporaryDirectory(prefix="ot2-warm-") as tmp:
        Path(tmp, "warm_up.py").write_text(WARM_UP_PROTOCOL, encoding="utf-8")
        asyncio.run(analyse(Path(tmp)))


def main() -> None:
    drop_spec = sys.argv[1]
    channel = worker_io.private_channel()
    warm_up()
    worker_io.send(channel, {"ready": True})
    for line in sys.stdin:
        try:
            request = json.loads(line)
            rid, directory = str(request["id"]), str(request["dir"])
        except (ValueError, KeyError, TypeError):
            continue
        pid = os.fork()
        if pid == 0:
            child(channel, {"id": rid, "dir": directory}, drop_spec)
        worker_io.send(channel, {"id": rid, "pid": pid})
        _, status = os.waitpid(pid, 0)
        worker_io.send(channel, {"id": rid, "exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
