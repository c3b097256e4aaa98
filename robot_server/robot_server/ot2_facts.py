"""Facts about the OT-2 that the installed ``opentrons`` package knows: supported protocol
API versions, the advanced settings (feature flags) an OT-2 offers, its reset options and
its default robot config.

Importing ``opentrons`` costs the server about 30 MB (numpy, pydantic), so the facts are
read once by a short-lived child process (``python -m robot_server.ot2_facts`` prints
them as JSON) and cached in the server's data directory, keyed by the ``opentrons``
version. Sources (Opentrons/opentrons, api/src/opentrons/...):
``protocols/api_support/definitions.py`` (MIN/MAX_SUPPORTED_VERSION),
``config/advanced_settings.py`` (settings), ``config/reset.py`` (reset options),
``config/robot_configs.py`` (``build_config_ot2``), ``protocol_engine/commands/`` (the
parameters of the commands ``POST /commands`` accepts).
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

log = logging.getLogger("robot_server.ot2_facts")

#: What the server answers if the ``opentrons`` package cannot be read (never expected on
#: a robot; the image installs it): the protocol API range of opentrons 8.8.2.
FALLBACK = {"opentrons_version": "8.8.2", "minimum_protocol_api_version": [2, 0],
            "maximum_protocol_api_version": [2, 27], "settings": [], "reset_options": [],
            "reset_option_names": {}, "stateless_commands": {}, "robot_config": {}}

#: Command types an OT-2 runs through ``POST /commands`` outside any run: the robot server's
#: ``StatelessCommandCreate`` (Opentrons/opentrons, robot-server/robot_server/commands/
#: stateless_commands.py) without the Flex's (status bar, vacuum module, stacker).
STATELESS_COMMANDS = (
    "home", "setRailLights",
    "magneticModule/engage", "magneticModule/disengage",
    "temperatureModule/setTargetTemperature", "temperatureModule/deactivate",
    "thermocycler/setTargetBlockTemperature", "thermocycler/setTargetLidTemperature",
    "thermocycler/deactivateBlock", "thermocycler/deactivateLid",
    "thermocycler/openLid", "thermocycler/closeLid",
    "heaterShaker/setTargetTemperature", "heaterShaker/setAndWaitForShakeSpeed",
    "heaterShaker/deactivateHeater", "heaterShaker/deactivateShaker",
    "heaterShaker/openLabwareLatch", "heaterShaker/closeLabwareLatch",
)

#: Facts already read in this process, by opentrons version (several servers in one
#: process, as in tests, read them once).
_read: dict[str, dict] = {}


def collect() -> dict:
    """Read the facts from the ``opentrons`` package (imports it: run in a child)."""
    from opentrons import __version__
    from typing import get_args

    from opentrons.config import advanced_settings, reset, robot_configs
    from opentrons.protocol_engine.commands import CommandCreate
    from opentrons.protocols.api_support.definitions import MAX_SUPPORTED_VERSION, MIN_SUPPORTED_VERSION
    from opentrons_shared_data.robot.types import RobotTypeEnum

    ot2 = RobotTypeEnum.OT2
    settings = [{"id": d.id, "old_id": d.old_id, "title": d.title, "description": d.description,
                 "restart_required": d.restart_required,
                 "default": ot2 in d.default_true_on_robot_types}
                for d in advanced_settings.settings
                if ot2 in d.robot_type and not d.internal_only and not d.show_if]
    options = [{"id": k.value, "name": v.name, "description": v.description}
               for k, v in reset.reset_options(ot2).items()]
    # Every reset option id (a Flex's too) -> its enum name, which POST /settings/reset's
    # message uses.
    option_names = {k.value: k.name for k in reset.ResetOptionId}
    creates = {c.model_fields["commandType"].default: c for c in get_args(get_args(CommandCreate)[0])}
    stateless = {t: creates[t].model_fields["params"].annotation.model_json_schema() for t in STATELESS_COMMANDS}
    return {"opentrons_version": __version__,
            "minimum_protocol_api_version": list(MIN_SUPPORTED_VERSION),
            "maximum_protocol_api_version": list(MAX_SUPPORTED_VERSION),
            "settings": settings, "reset_options": options, "reset_option_names": option_names,
            "stateless_commands": stateless,
            "robot_config": json.loads(json.dumps(asdict(robot_configs.build_config_ot2({})), default=list))}


async def load(cache_dir: Path, timeout: float = 120.0) -> dict:
    """The facts: from ``cache_dir/ot2-facts.json`` if it was written for the installed
    ``opentrons`` version with every fact, else from a child process (then cached). Never raises: on
    failure logs a warning and returns :data:`FALLBACK`."""
    try:
        version = metadata.version("opentrons")
    except metadata.PackageNotFoundError:
        log.warning("the opentrons package is not installed; using built-in OT-2 facts")
        return FALLBACK
    cache = cache_dir / "ot2-facts.json"
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("opentrons_version") == version and set(FALLBACK) <= set(cached):
            return cached
    except (OSError, ValueError, AttributeError):
        pass
    if version in _read:
        facts = _read[version]
        _write(cache, facts)
        return facts
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "robot_server.ot2_facts",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        if proc.returncode != 0:
            raise RuntimeError(err.decode(errors="replace").strip()[-500:])
        facts = json.loads(out)
    except (OSError, ValueError, RuntimeError, asyncio.TimeoutError) as exc:
        log.warning("cannot read OT-2 facts from the opentrons package: %s", exc)
        return FALLBACK
    _read[version] = facts
    _write(cache, facts)
    return facts


def _write(cache: Path, facts: dict) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(facts), encoding="utf-8")
        tmp.replace(cache)
    except OSError as exc:
        log.warning("cannot cache OT-2 facts in %s: %s", cache, exc)


if __name__ == "__main__":
    json.dump(collect(), sys.stdout)
