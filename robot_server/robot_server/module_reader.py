"""The helper that reads attached USB modules with the ``opentrons`` package's own module
classes (``opentrons.hardware_control.modules``: ``TempDeck``, ``MagDeck``,
``Thermocycler``, ``HeaterShaker``, over the drivers in ``opentrons.drivers``), so that the
robot server itself never imports ``opentrons``. Started by
:class:`robot_server.module_monitor.ModuleMonitor` while a module is present.

``python -m robot_server.module_reader``; requests on stdin, one JSON line each:
``{"ref": n, "read": ["/dev/ot_module_tempdeck0", ...]}``. Each module is opened, read
once and closed again, so that its port is free between requests (a run's engine opens it).
Reply frame (see :mod:`.worker_io`): ``{"ref": n, "modules": [module, ...], "errors":
{path: message}}``, each module in the shape of the OT-2's ``GET /modules`` (Opentrons/
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


async def read_module(path: str) -> dict | None:
    """Open the module at ``path`` with ``opentrons``, read it and close it again; None if
    the name is not a module's (``opentrons``' own port matcher,
    hardware_control/module_control.py). Raises what the driver raises."""
    from pathlib import Path

    from opentrons.drivers.rpi_drivers.types import USBPort
    from opentrons.hardware_control.execution_manager import ExecutionManager
    from opentrons.hardware_control.module_control import AttachedModulesControl
    from opentrons.hardware_control.modules import MODULE_TYPE_BY_NAME, build

    found = AttachedModulesControl.get_module_at_port(Path(path).name)
    if found is None:
        return None
    module = await build(port=path, type=MODULE_TYPE_BY_NAME[found.name], simulating=False,
                         usb_port=USBPort(name=found.name, port_number=0, device_path=path),
                         hw_control_loop=asyncio.get_running_loop(), execution_manager=ExecutionManager(),
                         disconnected_callback=lambda *a, **k: None, error_callback=lambda *a, **k: None)
    try:
        info, model = module.device_info, module.model()
        usb = module.usb_port
        return {"id": module_id(info["serial"], info["model"]), "serialNumber": info["serial"],
                "firmwareVersion": info["version"], "hardwareRevision": info["model"],
                "hasAvailableUpdate": bool(module.has_available_update()),
                "moduleType": module.MODULE_TYPE.value, "moduleModel": model, "compatibleWithRobot": True,
                "usbPort": {"port": usb.port_number, "portGroup": str(usb.port_group), "hub": usb.hub,
                            "hubPort": usb.hub_port, "path": usb.device_path},
                "data": module_data(model, module.live_data)}
    finally:
        await module.cleanup()


async def handle(request: dict) -> dict:
    modules, errors = [], {}
    for path in request.get("read") or []:
        try:
            found = await asyncio.wait_for(read_module(str(path)), READ_TIMEOUT_S)
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
