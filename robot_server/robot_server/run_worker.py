"""One run's process: the engine's runner with a real OT-2 hardware controller that
reaches the motor board through the robot server's G-code channel
(``OT_SMOOTHIE_EMULATOR_URI=socket://127.0.0.1:<channel_port>``, read by
``SmoothieDriver.get_port`` in Opentrons/opentrons,
api/src/opentrons/drivers/smoothie_drivers/driver_3_0.py). Started by
:class:`robot_server.runs.RunManager` inside the sandbox, never as root; GPIO stays
simulated in here (the image has no ``gpiod`` module for ``opentrons``' GPIO driver,
Opentrons/opentrons, api/src/opentrons/drivers/rpi_drivers/__init__.py): the robot server
keeps the pins.

``python -m robot_server.run_worker [<protocol files directory>]``; without a directory
the run has no protocol (the OT-2's protocol-less run, built as its robot-server does with
``RunOrchestrator.build_orchestrator`` and no protocol config: Opentrons/opentrons,
robot-server/robot_server/runs/run_orchestrator_store.py) and is driven by commands.

Requests on stdin, one JSON line each, handled once the hardware and the protocol are set
up: ``{"labwareOffsets": [...]}`` (the OT-2's ``LabwareOffsetCreate`` or legacy
``{definitionUri, location, vector}``), ``{"action": "play"|"pause"|"stop"}``,
``{"door": "open"|"closed"}``, ``{"ref": n, "command": CommandCreate}`` (enqueue a command,
``ProtocolEngine.add_command``), ``{"ref": n, "labwareDefinition": definition}``
(``ProtocolEngine.add_labware_definition``). End of input (the server is gone) stops the run.
Frames back (see :mod:`.worker_io`):

* ``{"reply": {"ref": n, "command": {...}}`` (the queued command),
  ``{"reply": {"ref": n, "definitionUri": uri}}`` or
  ``{"reply": {"ref": n, "error": {id, title, detail}}}`` (the server knows the
  status of each ``id``, :data:`robot_server.errors.OT2_STATUS`): the answer to request ``n``;
* ``{"status": s}``: the engine's run status (``idle``, ``running``, ``paused``,
  ``blocked-by-open-door``, ``stop-requested``, ``stopped``, ``finishing``, ``failed``,
  ``succeeded``), whenever it changes;
* ``{"command": {...}}``: each command once it has finished (succeeded or failed), in
  order; ``{"current": {...}|null}``: the command running now;
* ``{"summary": {labware, pipettes, modules, liquids, errors, labwareOffsets}}``;
* ``{"setupError": message}``: the hardware or the protocol could not be set up.

The runner is put together as ``opentrons.execute`` does it (Opentrons/opentrons,
api/src/opentrons/execute.py, ``_run_file_pe``), with the door blocking the run
(``Config.block_on_door_open``) as on an OT-2 with the door safety switch enabled, and
no deck configuration (an OT-2 has none: ``use_simulated_deck_config``).
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import IO, Any

from . import worker_io

POLL_S = 0.05
COMMAND_PAGE = 200


class Worker:
    def __init__(self, channel: IO[str], directory: Path | None) -> None:
        self.channel = channel
        self.directory = directory
        self.orchestrator: Any = None
        self.hardware: Any = None
        self.run_task: asyncio.Task | None = None
        self.reported = 0          # commands sent so far (all finished, in order)
        self.status: str | None = None
        self.current_id: str | None = None

    def send(self, frame: dict) -> None:
        worker_io.send(self.channel, frame)

    async def setup(self) -> None:
        from opentrons.hardware_control import API, ThreadManager
        from opentrons.hardware_control.types import HardwareFeatureFlags
        from opentrons.protocol_engine import Config, DeckType, error_recovery_policy
        from opentrons.protocol_engine.create_protocol_engine import create_protocol_engine
        from opentrons.protocol_runner import RunOrchestrator
        from opentrons.protocol_runner.run_orchestrator import ParseMode
        from opentrons.protocols.api_support.deck_type import should_load_fixed_trash

        source = await worker_io.read_source(self.directory) if self.directory is not None else None
        self.hardware = ThreadManager(API.build_hardware_controller,
                                      feature_flags=HardwareFeatureFlags.build_from_ff())
        await self.hardware.managed_thread_ready_async()
        hw = self.hardware.wrapped()
        engine = await create_protocol_engine(
            hardware_api=hw,
            # an OT-2 has no deck configuration: every slot is there (use_simulated_deck_config)
            config=Config(robot_type="OT-2 Standard", deck_type=DeckType.OT2_STANDARD, block_on_door_open=True,
                          use_simulated_deck_config=True),
            error_recovery_policy=error_recovery_policy.never_recover,
            load_fixed_trash=source is not None and should_load_fixed_trash(source.config))
        self.orchestrator = RunOrchestrator.build_orchestrator(
            hardware_api=hw, protocol_engine=engine, protocol_config=source.config if source else None)
        if source is not None:
            await self.orchestrator.load(protocol_source=source, parse_mode=ParseMode.NORMAL,
                                         run_time_param_values=None, run_time_param_paths=None)

    async def handle(self, request: dict) -> None:
        """One request from the server (see the module docstring)."""
        from opentrons.hardware_control.types import DoorState
        from opentrons.protocol_engine.types import LabwareOffsetCreate, LegacyLabwareOffsetCreate

        if "ref" in request:
            self.send({"reply": {"ref": request["ref"], **(await self.add(request))}})
            return
        action = request.get("action")
        for offset in request.get("labwareOffsets") or []:
            model = LabwareOffsetCreate if "locationSequence" in offset else LegacyLabwareOffsetCreate
            self.orchestrator.add_labware_offset(model.model_validate(offset))
        if action == "play":
            if self.run_task is None:
                self.run_task = asyncio.ensure_future(self.orchestrator.run(deck_configuration=None))
            else:
                self.orchestrator.play(deck_configuration=None)
        elif action == "pause":
            self.orchestrator.pause()
        elif action == "stop":
            await self.orchestrator.stop()
        elif request.get("door") in ("open", "closed"):
            # the hardware controller's own door path (as its GPIO watcher would call it, in
            # the controller's thread), which the engine's door watcher follows
            state = DoorState.OPEN if request["door"] == "open" else DoorState.CLOSED
            api = self.hardware.wrapped()
            api.loop.call_soon_threadsafe(api._update_door_state, state)

    async def add(self, request: dict) -> dict:
        """Enqueue a command or add a labware definition; the reply's payload, or its error
        in the OT-2's terms (Opentrons/opentrons, robot-server/robot_server/runs/router/
        commands_router.py: 409 ``CommandNotAllowed``, 409 ``RunStopped``; 422 for a body
        the engine's models refuse)."""
        from opentrons.protocol_engine import errors
        from opentrons.protocol_engine.commands import CommandCreateAdapter
        from opentrons_shared_data.labware.labware_definition import labware_definition_type_adapter
        from pydantic import ValidationError

        try:
            if "command" in request:
                create = CommandCreateAdapter.validate_python(request["command"])
                added = await self.orchestrator.add_command_and_wait_for_interval(create)
                return {"command": worker_io.dump(added)}
            definition = labware_definition_type_adapter.validate_python(request["labwareDefinition"])
            return {"definitionUri": self.orchestrator.add_labware_definition(definition)}
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            return {"error": {"id": "InvalidRequest", "title": "Invalid Request",
                              "detail": problems[:1000]}}
        except (ValueError, TypeError, KeyError) as exc:     # a request the engine cannot take apart
            return {"error": {"id": "InvalidRequest", "title": "Invalid Request",
                              "detail": f"{type(exc).__name__}: {str(exc)[:1000]}"}}
        except errors.RunStoppedError as exc:
            return {"error": {"id": "RunStopped", "title": "Run Stopped", "detail": str(exc)[:1000]}}
        except errors.ProtocolEngineError as exc:     # SetupCommandNotAllowedError, CommandNotAllowedError
            return {"error": {"id": "CommandNotAllowed", "title": "Setup Command Not Allowed",
                              "detail": str(exc)[:1000]}}

    def report(self) -> None:
        """Send the status if it changed, then every newly finished command, then the current one."""
        status = self.orchestrator.get_run_status().value
        while True:
            page = self.orchestrator.get_command_slice(cursor=self.reported, length=COMMAND_PAGE,
                                                       include_fixit_commands=True)
            if page.cursor != self.reported:      # nothing new: the engine clamps the cursor
                break
            done = 0
            for command in page.commands:
                if command.status.value not in ("succeeded", "failed"):
                    break
                self.send({"command": worker_io.dump(command)})
                done += 1
            self.reported += done
            if done < COMMAND_PAGE:
                break
        pointer = self.orchestrator.get_current_command()
        current_id = pointer.command_id if pointer is not None else None
        if current_id != self.current_id:
            self.current_id = current_id
            current = self.orchestrator.get_command(current_id) if current_id else None
            if current is not None and current.status.value in ("succeeded", "failed"):
                current = None
            self.send({"current": worker_io.dump(current) if current is not None else None})
        if status != self.status:
            self.status = status
            self.send({"status": status})

    def summary(self) -> dict:
        state = self.orchestrator.get_state_summary()
        return {key: worker_io.dump(getattr(state, key))
                for key in ("labware", "pipettes", "modules", "liquids", "errors", "labwareOffsets")}


async def requests() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def serve(channel: IO[str], directory: Path | None) -> int:
    worker = Worker(channel, directory)
    reader = await requests()
    try:
        await worker.setup()
    except Exception as exc:  # noqa: BLE001 - reported (never a traceback), then exit
        worker.send({"setupError": f"{type(exc).__name__}: {str(exc)[:1000]}"})
        return 1
    worker.report()
    pending: asyncio.Task = asyncio.ensure_future(reader.readline())
    while worker.run_task is None or not worker.run_task.done():
        finished, _ = await asyncio.wait({pending}, timeout=POLL_S)
        if finished:
            line = pending.result()
            if not line:                     # the server is gone: stop the run
                await worker.orchestrator.stop()
                if worker.run_task is None:
                    break
            else:
                try:
                    request = json.loads(line)
                    await worker.handle(request)
                except ValueError as exc:     # a malformed request or offset (pydantic errors are ValueErrors)
                    print(f"request refused: {exc}", file=sys.stderr)
                    request = {}
                if request.get("action") == "stop" and worker.run_task is None:
                    break                    # stopped before it started: nothing more will happen
                pending = asyncio.ensure_future(reader.readline())
        worker.report()
        if worker.status in ("stopped", "failed", "succeeded") and worker.run_task is None:
            break
    if worker.run_task is not None:
        await worker.run_task
    worker.report()
    worker.send({"summary": worker.summary()})
    pending.cancel()
    worker.hardware.clean_up()
    return 0


def main() -> None:
    channel = worker_io.private_channel()
    sys.exit(asyncio.run(serve(channel, Path(sys.argv[1]) if len(sys.argv) > 1 else None)))


if __name__ == "__main__":
    main()
