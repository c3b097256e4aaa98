"""``robot-simulate`` and ``robot-execute``: thin commands over the OT-2's own protocol
engine, the ``opentrons`` package (Opentrons/opentrons, api/src/opentrons/simulate.py and
api/src/opentrons/execute.py). Every protocol semantic (labware, pipettes, modules,
liquid handling, run log wording) comes from ``opentrons``; these commands only choose
the hardware it runs against.

``robot-simulate PROTOCOL`` takes ``opentrons_simulate``'s options and prints the same run
log, line for line, with one difference: a protocol below API level 2.14 that loads
hardware modules simulates without ``--custom-hardware-simulator-file``. The modules it
loads are taken as attached (``opentrons_simulate`` stops at the first ``load_module``).

``robot-execute PROTOCOL`` takes ``opentrons_execute``'s options and runs the protocol on
this robot. The robot server owns the motor board; ``opentrons`` reaches it through the
server's G-code channel, a Smoothieware-speaking socket on loopback
(``OT_SMOOTHIE_EMULATOR_URI``, read by ``SmoothieDriver.get_port`` in
api/src/opentrons/drivers/smoothie_drivers/driver_3_0.py). The robot's
environment (``/etc/ot2/environment``) sets ``RUNNING_ON_PI`` as on an OT-2, so ``opentrons``
finds USB modules by their udev names; its GPIO stays simulated (the image has no ``gpiod``
module for it) and the robot server keeps the lines. Elsewhere, modules reach ``opentrons``
through its module server (``ot2-modules``, ``modules.py``); the protocol starts once the
modules announced there are attached.

Exit status: 0 success, 1 the protocol failed, 2 usage errors, no channel, or announced
modules that never attached.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import socket
import sys
import tempfile
import time
import typing
from typing import Any, BinaryIO
from urllib.parse import urlsplit

CHANNEL_ENV = "OT_SMOOTHIE_EMULATOR_URI"
#: Where opentrons' hardware controller learns of modules off the OT-2's OS
#: (Opentrons/opentrons, api/src/opentrons/hardware_control/emulation/settings.py).
MODULE_SERVER_ENV = "OT_EMULATOR_module_server"
#: The longest series of modules one protocol can load: one per deck slot.
MAX_MODULES = 12


# ---------------------------------------------------------------- simulate
def _missing_module(exc: BaseException) -> Any:
    """The ``ModuleModel`` that ``opentrons``' pre-2.14 ``load_module`` could not find.

    Below API level 2.14, ``opentrons`` 8.8.2 on Python 3.11 looks up the definition of a
    module it is asked to create with ``f"{model}"`` of the enum member, which names the
    member (``TemperatureModuleModel.TEMPERATURE_V2``), not its value, and fails with
    ``NoSuchModuleError``. Source: Opentrons/opentrons,
    api/src/opentrons/protocol_api/core/legacy/legacy_protocol_core.py (``load_module``).
    Returns None for any other failure.
    """
    from opentrons.hardware_control.modules.types import ModuleModel
    from opentrons.protocol_api.core.legacy.module_geometry import NoSuchModuleError
    from opentrons.protocols.execution.errors import ExceptionInProtocolError

    if not (isinstance(exc, ExceptionInProtocolError) and isinstance(exc.original_exc, NoSuchModuleError)):
        return None
    for model_class in typing.get_args(ModuleModel):
        for model in model_class:
            if f'"{model}"' in str(exc.original_exc):
                return model
    return None


def _hardware_file(models: list[Any]) -> str:
    """A hardware simulator file (``opentrons.hardware_control.simulator_setup``'s format)
    with ``models`` attached; returns its path (the caller deletes it)."""
    from opentrons.hardware_control.modules import MODULE_TYPE_BY_NAME, ModuleType

    name_of_type = {module_type: name for name, module_type in MODULE_TYPE_BY_NAME.items()}
    attached: dict[str, list[dict]] = {}
    for i, model in enumerate(models):
        name = name_of_type[ModuleType.from_model(model)]
        attached.setdefault(name, []).append({"serial_number": f"robot-simulate-{name}-{i}",
                                              "model": model.value, "calls": []})
    fd, path = tempfile.mkstemp(prefix="robot-simulate-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump({"machine": "OT-2 Standard", "attached_modules": attached}, fh)
    return path


def simulate(protocol: BinaryIO, file_name: str, hardware_simulator_file_path: str | None = None,
             estimate_duration: bool = False, **kwargs: Any) -> tuple[list, float | None]:
    """``opentrons.simulate.simulate``, taking the modules the protocol loads as attached.

    Without ``hardware_simulator_file_path``, each module that ``opentrons`` reports missing
    (below API level 2.14) is attached to a fresh simulator and the protocol simulated
    again, until it loads them all. ``kwargs`` go to ``opentrons.simulate.simulate``.
    Returns ``(run log, estimated duration in s or None)``; raises what
    ``opentrons.simulate.simulate`` raises.
    """
    from opentrons import simulate as ot_simulate
    from opentrons.protocols.duration import DurationEstimator

    source = protocol.read()
    attached: list[Any] = []
    while True:
        path = hardware_simulator_file_path or (_hardware_file(attached) if attached else None)
        estimator = DurationEstimator() if estimate_duration else None
        try:
            runlog, _bundle = ot_simulate.simulate(io.BytesIO(source), file_name, hardware_simulator_file_path=path,
                                                   duration_estimator=estimator, **kwargs)
            return runlog, estimator.get_total_duration() if estimator else None
        except Exception as exc:
            model = None if hardware_simulator_file_path else _missing_module(exc)
            if model is None or len(attached) >= MAX_MODULES:
                raise
            attached.append(model)
        finally:
            if path and path != hardware_simulator_file_path:
                os.unlink(path)


def _error_text(exc: BaseException) -> str:
    from opentrons.util.entrypoint_util import ProtocolEngineExecuteError

    return exc.to_stderr_string() if isinstance(exc, ProtocolEngineExecuteError) else f"{type(exc).__name__}: {exc}"


def simulate_main(argv: list[str] | None = None) -> int:
    """``robot-simulate``: ``opentrons_simulate``'s options, output and exit status."""
    from opentrons import simulate as ot_simulate

    parser = ot_simulate.get_arguments(argparse.ArgumentParser(
        prog="robot-simulate", description="Simulate an OT-2 protocol with the opentrons engine; "
        "hardware modules the protocol loads are taken as attached."))
    args = parser.parse_args(argv)
    try:
        runlog, duration_s = simulate(args.protocol, args.protocol.name,
                                      hardware_simulator_file_path=args.custom_hardware_simulator_file,
                                      estimate_duration=args.estimate_duration,
                                      custom_labware_paths=args.custom_labware_path,
                                      custom_data_paths=args.custom_data_path + args.custom_data_file,
                                      log_level=args.log_level)
    except Exception as exc:  # noqa: BLE001 - the protocol's own error, as opentrons words it
        print(f"robot-simulate: {_error_text(exc)}", file=sys.stderr)
        return 1
    if args.output == "runlog":
        print(ot_simulate.format_runlog(runlog))
    if duration_s is not None:
        minutes = int(duration_s // 60)
        print(f"Estimated duration (opentrons' experimental estimator): {minutes // 60} h {minutes % 60} min")
    return 0


# ---------------------------------------------------------------- execute
def channel_uri(config_path: str | None = None) -> str:
    """The motor board's pyserial URL for ``opentrons``: ``OT_SMOOTHIE_EMULATOR_URI`` if
    set, else the robot server's G-code channel, ``socket://127.0.0.1:<channel_port>``
    (config key ``channel_port``). Raises ``robot_server.config.ConfigError``."""
    if os.environ.get(CHANNEL_ENV):
        return os.environ[CHANNEL_ENV]
    from ..config import load

    cfg = load(config_path, required=config_path is not None)
    return f"socket://127.0.0.1:{cfg.channel_port}"


def check_reachable(uri: str, timeout: float = 3.0, refusal_wait: float = 0.3) -> None:
    """Raise ``OSError`` naming ``uri`` if a ``socket://host:port`` URL does not accept a
    TCP connection within ``timeout`` s, or answers it at once with a line (the robot
    server's channel refuses a client while another holds the lease with one
    ``Error: ...`` line naming the holder). Other pyserial URLs and device paths are left
    to pyserial."""
    parts = urlsplit(uri)
    if parts.scheme != "socket":
        return
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as conn:
            conn.settimeout(refusal_wait)
            try:
                answer = conn.recv(4096).decode(errors="replace").strip()
            except TimeoutError:            # silent: the channel is ours
                return
    except OSError as exc:
        raise OSError(f"the motor board channel {uri} is not reachable ({exc.strerror or exc}); "
                      "is the robot server running?") from None
    raise OSError(f"the motor board channel {uri} refused this client: {answer or 'closed at once'}")


def ot2_deck_configuration() -> list[tuple[str, str, None]]:
    """The OT-2's deck as the engine's deck configuration, ``[(cutout id, fixture id,
    module serial)]``: each cutout with the most specific fixture that may mount to it
    (``cutout12``: the fixed trash; the others: a standard slot), taken from the deck
    definition ``ot2_standard`` v5 in ``opentrons_shared_data``. The OT-2's robot server
    keeps the same default (Opentrons/opentrons,
    robot-server/robot_server/deck_configuration/defaults.py)."""
    from opentrons_shared_data.deck import load

    deck = load("ot2_standard", 5)
    placements = []
    for cutout in deck["locations"]["cutouts"]:
        fixtures = [f for f in deck["cutoutFixtures"] if cutout["id"] in f["mayMountTo"]]
        placements.append((cutout["id"], min(fixtures, key=lambda f: len(f["mayMountTo"]))["id"], None))
    return placements


def wait_for_announced_modules(timeout_s: float = 60.0) -> int:
    """Wait until ``opentrons``' hardware controller has attached every module its module
    server announces (``OT_EMULATOR_module_server``, default port 8989 on this host: on
    the robot, ``ot2-modules``); returns how many.

    Off the OT-2's OS the controller learns of modules from that server and attaches them
    in the background (Opentrons/opentrons,
    api/src/opentrons/hardware_control/module_control.py, ``listen_module_connection``),
    so a protocol that loads a module at once could find none. This builds the
    controller ``opentrons.execute`` runs on (the process-wide one) and waits for it.
    Raises ``TimeoutError`` after ``timeout_s`` s, ``OSError`` if the server is not
    reachable.
    """
    from opentrons import execute as ot_execute
    from opentrons.hardware_control.emulation.module_server.client import ModuleStatusClient
    from opentrons.hardware_control.emulation.settings import Settings

    server = Settings().module_server

    async def announced() -> int:
        client = await ModuleStatusClient.connect(server.host, server.port)
        try:
            return len((await asyncio.wait_for(client.read(), timeout_s)).connections)
        finally:
            client.close()

    count = asyncio.run(announced())
    hardware = ot_execute._get_global_hardware_controller(ot_execute._get_robot_type())
    deadline = time.monotonic() + timeout_s
    while len(hardware.attached_modules) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} modules announced by the module server at {server.host}:{server.port}, "
                               f"{len(hardware.attached_modules)} attached after {timeout_s:g} s")
        time.sleep(0.1)
    return count


def execute_main(argv: list[str] | None = None) -> int:
    """``robot-execute``: ``opentrons_execute``'s options and run log, through the channel."""
    parser = argparse.ArgumentParser(prog="robot-execute", description="Run an OT-2 protocol on this robot "
                                     "with the opentrons engine, through the robot server's G-code channel.")
    parser.add_argument("--config", help="robot server config for channel_port "
                        "(default /etc/ot2/robot-server.toml, optional)")
    parser.add_argument("-n", "--no-print-runlog", action="store_true",
                        help="do not print the commands as they are executed")
    from opentrons import execute as ot_execute

    args = ot_execute.get_arguments(parser).parse_args(argv)
    from opentrons.hardware_control.thread_manager import ThreadManagerException

    from ..config import ConfigError

    try:
        uri = channel_uri(args.config)
    except ConfigError as exc:
        print(f"robot-execute: config error: {exc}", file=sys.stderr)
        return 2
    os.environ[CHANNEL_ENV] = uri
    # opentrons asks the OT-2's own robot server for the deck configuration only on the
    # OT-2's OS (RUNNING_ON_PI); elsewhere it uses none, and every slot is refused from
    # API level 2.14 on (Opentrons/opentrons, api/src/opentrons/util/entrypoint_util.py,
    # get_deck_configuration). The OT-2's deck is fixed: supply it.
    from opentrons.util import entrypoint_util
    entrypoint_util.get_deck_configuration = ot2_deck_configuration
    if args.log_level != "none":          # opentrons_execute shows the engine's logs on stdout too
        logging.getLogger("opentrons").addHandler(logging.StreamHandler(sys.stdout))
    try:
        problem = _attach_modules()
        if problem:
            print(f"robot-execute: hardware modules: {problem}", file=sys.stderr)
            return 2
        ot_execute.execute(args.protocol, args.protocol.name, log_level=args.log_level,
                           emit_runlog=None if args.no_print_runlog else ot_execute.make_runlog_cb(),
                           custom_labware_paths=args.custom_labware_path,
                           custom_data_paths=args.custom_data_path + args.custom_data_file)
    except ThreadManagerException as exc:       # opentrons could not set the hardware up
        try:
            check_reachable(uri)                # probed only now: a probe is a lease of its own
        except OSError as channel:
            print(f"robot-execute: {channel}", file=sys.stderr)
            return 2
        print(f"robot-execute: {_error_text(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the protocol's own error, as opentrons words it
        print(f"robot-execute: {_error_text(exc)}", file=sys.stderr)
        return 1
    return 0


def _attach_modules() -> str | None:
    """Wait for the modules a module server announces; None when ready (or when there is
    no module server and none was configured), else what went wrong."""
    try:
        wait_for_announced_modules()
    except OSError as exc:
        if os.environ.get(MODULE_SERVER_ENV):
            return str(exc)
        # No module server (ot2-modules) at opentrons' default address: no modules. The
        # hardware controller's own attempt to reach it would log a traceback, not news.
        logging.getLogger("opentrons.hardware_control.emulation").setLevel(logging.CRITICAL)
    except TimeoutError as exc:
        return str(exc)
    return None


if __name__ == "__main__":       # python -m robot_server.protocol.cli {simulate|execute} ...
    commands = {"simulate": simulate_main, "execute": execute_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print("usage: python -m robot_server.protocol.cli {simulate|execute} PROTOCOL [options]", file=sys.stderr)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
