"""The helper that reads attached USB modules with the ``opentrons`` package's own module
classes (``opentrons.hardware_control.modules``: ``TempDeck``, ``MagDeck``,
``Thermocycler``, ``HeaterShaker``, over the drivers in ``opentrons.drivers``), so that the
robot server itself never imports ``opentrons``. Started by
:class:`robot_server.module_monitor.ModuleMonitor` while a module is present.

``python -m robot_server.module_reader``; requests on stdin, one JSON line each:
``{"ref": n, "read": ["/dev/ot_module_tempdeck0", ...]}`` or ``{"ref": n, "command":
{"path", "commandType", "params"}}`` (a module command of ``POST /commands``). Each module
is opened, used once and closed again, so that its port is free between requests (a run's
engine opens it). Reply frames (see :mod:`.worker_io`): ``{"ref": n, "result": {...}}`` or
``{"ref": n, "error": {errorType, detail}}`` for a command; ``{"ref": n, "modules":
[module, ...], "errors": {path: message}}`` for a read, each module in the shape of the OT-2's ``GET /modules`` (Opentrons/
opentrons, robot-server/robot_server/modules/module_models.py, ``AttachedModule``; mapped
as robot-server/robot_server/modules/module_data_mapper.py and module_identifier.py do).
Paths that are not a module (a bootloader) are skipped.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from typing import IO, Any

from . import worker_io

#: Longest a module may take to answer while being read, s.
READ_TIMEOUT_S = 10.0


def module_id(serial: str, hardware_revision: str) -> str:
    """The OT-2's module id: BLAKE2s (20 bytes, hex) of serial number then hardware
    revision (robot-server/robot_server/modules/module_identifier.py)."""
    hasher = hashlib.blake2s(digest_size=20)
    hasher.update(serial.encode())
    hasher.update(hardware_revision.encode())
    return hasher.hexdigest()


def module_data(model: str, live: dict) -> dict:
    """The OT-2's ``data`` of one module from its ``live_data`` (``{status, data}``);
    magnet heights in mm above the labware bottom (GEN1 reports half-millimetres)."""
    from opentrons.hardware_control.modules.magdeck import OFFSET_TO_LABWARE_BOTTOM

    d = live["data"]
    if model.startswith("magneticModule"):
        height = d["height"] - OFFSET_TO_LABWARE_BOTTOM[model]
        return {"status": live["status"], "engaged": bool(d.get("engaged")),
                "height": height / 2 if model == "magneticModuleV1" else height}
    if model.startswith("temperatureModule"):
        return {"status": live["status"], "currentTemperature": d.get("currentTemp"),
                "targetTemperature": d.get("targetTemp")}
    if model.startswith("thermocycler"):
        return {"status": live["status"], "currentTemperature": d.get("currentTemp"),
                "targetTemperature": d.get("targetTemp"), "lidStatus": d.get("lid"),
                "lidTemperatureStatus": d.get("lidTempStatus"), "lidTemperature": d.get("lidTemp"),
                "lidTargetTemperature": d.get("lidTarget"), "holdTime": d.get("holdTime"),
                "rampRate": d.get("rampRate"), "currentCycleIndex": d.get("currentCycleIndex"),
                "totalCycleCount": d.get("totalCycleCount"), "currentStepIndex": d.get("currentStepIndex"),
                "totalStepCount": d.get("totalStepCount")}
    return {"status": live["status"], "labwareLatchStatus": d.get("labwareLatchStatus"),
            "speedStatus": d.get("speedStatus"), "currentSpeed": d.get("currentSpeed"),
            "targetSpeed": d.get("targetSpeed"), "temperatureStatus": d.get("temperatureStatus"),
            "currentTemperature": d.get("currentTemp"), "targetTemperature": d.get("targetTemp"),
            "errorDetails": d.get("errorDetails")}


async def open_module(path: str) -> Any:
    """The ``opentrons`` module object (``TempDeck``, ``MagDeck``, ``Thermocycler``,
    ``HeaterShaker``) of the device at ``path``, connected and read once; None if the name
    is not a module's (``opentrons``' own port matcher, hardware_control/module_control.py).
    The caller calls its ``cleanup()``. Raises what the driver raises."""
    from pathlib import Path

    from opentrons.drivers.rpi_drivers.types import USBPort
    from opentrons.hardware_control.execution_manager import ExecutionManager
    from opentrons.hardware_control.module_control import AttachedModulesControl
    from opentrons.hardware_control.modules import MODULE_TYPE_BY_NAME, MagDeck, build

    found = AttachedModulesControl.get_module_at_port(Path(path).name)
    if found is None:
        return None
    module = await build(port=path, type=MODULE_TYPE_BY_NAME[found.name], simulating=False,
                         usb_port=USBPort(name=found.name, port_number=0, device_path=path),
                         hw_control_loop=asyncio.get_running_loop(), execution_manager=ExecutionManager(),
                         disconnected_callback=lambda *a, **k: None, error_callback=lambda *a, **k: None)
    if isinstance(module, MagDeck):
        # opentrons' MagDeck starts at height 0 and only remembers the moves it made itself
        # (hardware_control/modules/magdeck.py); the magnets may have been moved by a run
        # since: ask the module where they are.
        module._current_height = await module._driver.get_mag_position()
    return module


async def describe(module: Any) -> dict:
    """The OT-2's ``AttachedModule`` of an open module."""
    info, model, usb = module.device_info, module.model(), module.usb_port
    return {"id": module_id(info["serial"], info["model"]), "serialNumber": info["serial"],
            "firmwareVersion": info["version"], "hardwareRevision": info["model"],
            "hasAvailableUpdate": bool(module.has_available_update()),
            "moduleType": module.MODULE_TYPE.value, "moduleModel": model, "compatibleWithRobot": True,
            "usbPort": {"port": usb.port_number, "portGroup": str(usb.port_group), "hub": usb.hub,
                        "hubPort": usb.hub_port, "path": usb.device_path},
            "data": module_data(model, module.live_data)}


async def execute(module: Any, command_type: str, params: dict) -> dict:
    """Carry out one module command of ``POST /commands`` on an open module, validated and
    converted as the protocol engine's command of that type does (Opentrons/opentrons,
    api/src/opentrons/protocol_engine/commands/{temperature_module,magnetic_module,
    thermocycler,heater_shaker}/, with the checks of protocol_engine/state/
    module_substates/); gantry moves the engine makes first are the server's. Returns the
    command's ``result``. Raises the engine's errors (``WrongModuleTypeError``,
    ``InvalidTargetTemperatureError``, ``EngageHeightOutOfRangeError``,
    ``CannotPerformModuleAction``, ...)."""
    from opentrons.drivers.types import HeaterShakerLabwareLatchStatus
    from opentrons.hardware_control.modules import HeaterShaker, MagDeck, SpeedStatus, TempDeck, Thermocycler
    from opentrons.protocol_engine import ModuleModel, errors
    from opentrons.protocol_engine.commands.heater_shaker.common import get_heatershaker_ready_to_shake
    from opentrons.protocol_engine.state.module_substates import (
        HeaterShakerModuleSubState, MagneticModuleSubState, TemperatureModuleSubState, ThermocyclerModuleSubState)
    from opentrons.protocol_engine.state.module_substates.heater_shaker_module_substate import (
        HeaterShakerLatchStatus)

    family, _, action = command_type.partition("/")
    kinds = {"temperatureModule": (TempDeck, "Temperature Module"), "magneticModule": (MagDeck, "Magnetic Module"),
             "thermocycler": (Thermocycler, "Thermocycler Module"), "heaterShaker": (HeaterShaker, "Heater-Shaker Module")}
    kind, name = kinds[family]
    if not isinstance(module, kind):
        raise errors.WrongModuleTypeError(f"{params['moduleId']} is not a {name}.")
    if family == "temperatureModule":
        if action == "deactivate":
            await module.deactivate()
            return {}
        celsius = TemperatureModuleSubState.validate_target_temperature(params["celsius"])
        await module.start_set_temperature(celsius)
        return {"targetTemperature": celsius}
    if family == "magneticModule":
        if action == "disengage":
            await module.deactivate()
        else:
            state = MagneticModuleSubState(module_id=params["moduleId"], model=ModuleModel(module.model()))
            await module.engage(height=state.calculate_magnet_hardware_height(mm_from_base=params["height"]))
        return {}
    if family == "thermocycler":
        if action == "setTargetBlockTemperature":
            celsius = ThermocyclerModuleSubState.validate_target_block_temperature(params["celsius"])
            volume, hold = params.get("blockMaxVolumeUl"), params.get("holdTimeSeconds")
            await module.set_target_block_temperature(
                celsius, volume=None if volume is None else ThermocyclerModuleSubState.validate_max_block_volume(volume),
                hold_time_seconds=None if hold is None else ThermocyclerModuleSubState.validate_hold_time(hold))
            return {"targetBlockTemperature": celsius}
        if action == "setTargetLidTemperature":
            celsius = ThermocyclerModuleSubState.validate_target_lid_temperature(params["celsius"])
            await module.set_target_lid_temperature(celsius)
            return {"targetLidTemperature": celsius}
        await {"deactivateBlock": module.deactivate_block, "deactivateLid": module.deactivate_lid,
               "openLid": module.open, "closeLid": module.close}[action]()
        return {}
    latch_closed = module.labware_latch_status == HeaterShakerLabwareLatchStatus.IDLE_CLOSED
    state = HeaterShakerModuleSubState(
        module_id=params["moduleId"], plate_target_temperature=module.target_temperature,
        labware_latch_status=HeaterShakerLatchStatus.CLOSED if latch_closed else HeaterShakerLatchStatus.OPEN,
        is_plate_shaking=module.speed_status != SpeedStatus.IDLE)
    if action == "setTargetTemperature":
        await module.start_set_temperature(state.validate_target_temperature(params["celsius"]))
        return {}
    if action == "setAndWaitForShakeSpeed":
        await module.set_speed(rpm=await get_heatershaker_ready_to_shake(state, params["rpm"]))
        return {"pipetteRetracted": True}
    if action == "openLabwareLatch":
        state.raise_if_shaking()
        await module.open_labware_latch()
        return {"pipetteRetracted": True}
    await {"deactivateHeater": module.deactivate_heater, "deactivateShaker": module.deactivate_shaker,
           "closeLabwareLatch": module.close_labware_latch}[action]()
    return {}


async def with_module(path: str, use: Any) -> Any:
    """``use(module)`` on the module at ``path`` opened for the moment (None if it is not a
    module), within :data:`READ_TIMEOUT_S` for opening it."""
    module = await asyncio.wait_for(open_module(path), READ_TIMEOUT_S)
    if module is None:
        return None
    try:
        return await use(module)
    finally:
        await module.cleanup()


async def handle(request: dict) -> dict:
    """One request: ``read`` (the modules at these paths) or ``command`` (``{path,
    commandType, params}``, see :func:`execute`)."""
    if isinstance(request.get("command"), dict):
        c = request["command"]
        try:
            result = await with_module(str(c["path"]), lambda m: execute(m, c["commandType"], c["params"]))
        except Exception as exc:  # noqa: BLE001 - the command's error, as the engine names it
            return {"ref": request.get("ref"), "error": {"errorType": type(exc).__name__, "detail": str(exc)[:1000]}}
        return {"ref": request.get("ref"), "result": result or {}}
    modules, errors = [], {}
    for path in request.get("read") or []:
        try:
            found = await with_module(str(path), describe)
        except Exception as exc:  # noqa: BLE001 - a module that cannot be read is reported, not fatal
            errors[str(path)] = f"{type(exc).__name__}: {str(exc)[:300]}"
            continue
        if found is not None:
            modules.append(found)
    return {"ref": request.get("ref"), "modules": modules, "errors": errors}


async def serve(channel: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            request: Any = json.loads(line)
        except ValueError:
            continue
        if isinstance(request, dict):
            worker_io.send(channel, await handle(request))


if __name__ == "__main__":
    asyncio.run(serve(worker_io.private_channel()))
