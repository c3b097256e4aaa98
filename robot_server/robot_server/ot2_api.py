"""The OT-2's own resources, shaped as the OT-2 robot server answers them (HTTP API
version :data:`~robot_server.versioning.API_VERSION`): health, positions, motors, door,
pipettes and instruments, modules, feature flags, robot settings, calibration status,
networking, Wi-Fi, logs, system time and stateless commands.

Shapes follow the OT-2's robot server (Opentrons/opentrons, robot-server/robot_server/):
``health/models.py``, ``service/legacy/routers/{control,motors,settings,pipettes,
networking,logs,deck_calibration}.py`` and their models, ``robot/control/router.py``,
``modules/router.py``, ``instruments/router.py``, ``commands/router.py``,
``system/router.py``. Operations here run on :class:`~robot_server.service.RobotService`
and keep its errors (:mod:`.errors`); the HTTP layer gives them the OT-2's error shape.
"""
from __future__ import annotations

import array
import asyncio
import fcntl
import json
import logging
import re
import shutil
import socket
import struct
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, ot2_facts
from .module_monitor import ModuleMonitor
from .driver import DriverError
from .errors import (API_ERRORS, COMMUNICATION_ERROR_CODE, GENERAL_ERROR_CODE, ROBOT_IN_USE_CODE, ApiError,
                     Ot2Error, as_api_error)
from .operation import Op
from .params import boolean, invalid, number, obj
from .versioning import JSONAPI, LEGACY

if TYPE_CHECKING:
    from .engine_host import EngineHost
    from .service import RobotService

log = logging.getLogger("robot_server.ot2_api")

ROBOT_MODEL = "OT-2 Standard"
#: ``/health`` fields of the OT-2 (robot-server/robot_server/health/models.py).
HEALTH_FIELDS = ("name", "robot_model", "api_version", "fw_version", "board_revision", "logs",
                 "system_version", "maximum_protocol_api_version", "minimum_protocol_api_version",
                 "robot_serial", "links")
#: Log names the OT-2 serves (service/legacy/models/logs.py); which journal lines are
#: ours for each: (systemd unit, text the line must contain or None).
LOGS = {"serial.log": ("ot2-robot-server.service", "robot_server.driver"),
        "api.log": ("ot2-robot-server.service", None),
        "server.log": ("ot2-robot-server.service", "robot_server.api"),
        "combined_api_server.log": ("ot2-robot-server.service", None),
        "update_server.log": ("ot2-update-server.service", None),
        "touchscreen.log": (None, None)}           # a Flex's display; an OT-2 has none
OT2_LOG_PATHS = ["/logs/serial.log", "/logs/api.log", "/logs/server.log", "/logs/update_server.log"]
MAX_LOG_RECORDS = 100000
DEFAULT_LOG_RECORDS = 50000
#: Board revision from GPIO bits (17, 27), as the OT-2 names them
#: (api/src/opentrons/hardware_control/types.py, BoardRevision.by_bits).
BOARD_REVISIONS = {3: "2.1", 2: "A", 1: "B", 0: "C"}
#: OT-2 motor names (``/motors``): our axis letters
#: (api/src/opentrons/hardware_control/types.py, Axis and its OT-2 aliases).
MOTOR_AXES = {"x": "X", "y": "Y", "z_l": "Z", "z_r": "A", "p_l": "B", "p_r": "C",
              "z": "Z", "a": "A", "b": "B", "c": "C"}
#: Protocol engine ``home`` axes (opentrons.protocol_engine.types.MotorAxis): our letters.
ENGINE_AXES = {"x": "X", "y": "Y", "leftZ": "Z", "rightZ": "A", "leftPlunger": "B", "rightPlunger": "C"}
MOUNT_LETTER = {"left": "L", "right": "R"}
#: Useful positions of ``GET /robot/positions`` (service/legacy/routers/control.py), mm.
ROBOT_POSITIONS = {"change_pipette": {"target": "mount", "left": [300, 40, 30], "right": [95, 40, 30]},
                   "attach_tip": {"target": "pipette", "point": [200, 90, 150]}}
IDENTITY = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
#: Reset options of the OT-2 we do not offer: clearing SSH keys changes who may log in.
REFUSED_RESETS = {"authorizedKeys"}
#: ``securityType`` of ``POST /wifi/configure`` (the OT-2's NetworkingSecurityType).
WIFI_SECURITY_TYPES = ("none", "wpa-psk", "wpa-eap", "unsupported")
MAX_COMMANDS = 100          # stateless commands kept for GET /commands
DEFAULT_PAGE_LENGTH = 20
#: Module commands before which the protocol engine moves the pipettes out of the way, and
#: the axes it homes for that (Opentrons/opentrons, api/src/opentrons/protocol_engine/
#: commands/thermocycler/{open,close}_lid.py: X, Y and the mounts; heater_shaker/
#: {open_labware_latch,set_and_wait_for_shake_speed}.py: the mounts, when a pipette is
#: near; we do not track where pipettes are, so always).
RETRACT_BEFORE = {"thermocycler/openLid": ["X", "Y", "Z", "A"], "thermocycler/closeLid": ["X", "Y", "Z", "A"],
                  "heaterShaker/openLabwareLatch": ["Z", "A"], "heaterShaker/setAndWaitForShakeSpeed": ["Z", "A"]}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def pipette_name(model: str) -> str:
    """The load name of a pipette model read from its EEPROM: ``p300_single_v2.1`` ->
    ``p300_single_gen2``; GEN1 models drop the version (``p10_single_v1.5`` ->
    ``p10_single``). Source: opentrons_shared_data/pipette/pipette_load_name_conversions.py."""
    base, _, version = model.partition("_v")
    return f"{base}_gen2" if version.startswith("2") else base


class Ot2Resources:
    """The OT-2 resources of one robot; ``svc.ot2``."""

    def __init__(self, svc: RobotService) -> None:
        self.svc = svc
        self.state_dir = Path(svc.config.state_dir)
        self._facts: asyncio.Task | None = None
        self._pipettes: dict | None = None
        self.commands: dict[str, dict] = {}
        #: The runs and protocols (set by the server); ``runsHistory`` resets erase them.
        self.engine: EngineHost | None = None
        #: The kernel's network interfaces (sysfs).
        self.net_class = Path("/sys/class/net")
        self.module_monitor = ModuleMonitor(Path(svc.config.module_dir), self._modules_busy)

    # ------------------------------------------------------------ helpers
    def preload(self) -> None:
        """Start reading :mod:`~robot_server.ot2_facts` in the background (a child process
        the first time: seconds on a Pi), so that the first ``/health`` need not wait."""
        if self._facts is None:
            self._facts = asyncio.ensure_future(ot2_facts.load(self.state_dir))

    async def facts(self) -> dict:
        """:mod:`~robot_server.ot2_facts`, read once."""
        self.preload()
        return await asyncio.shield(self._facts)

    @staticmethod
    def robot_serial(cmdline: str = "/proc/cmdline") -> str | None:
        """The robot's serial number: ``ot2.serial=`` on the kernel command line, put there by
        the bootloader (board/qemu/grub.cfg from the SMBIOS system serial, board/ot2/boot.cmd
        from U-Boot's ``serial#``); the update server reports the same as ``serialNumber``."""
        try:
            text = Path(cmdline).read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        match = re.search(r"(?:^|\s)ot2\.serial=([A-Za-z0-9._-]{1,64})(?:\s|$)", text)
        return match.group(1) if match else None

    def robot_name(self) -> str:
        """The robot's name as the update server keeps it (``<data_dir>/update-server/name``,
        see update_server/name.py); the host name if none is stored."""
        try:
            name = (Path(self.svc.config.data_dir) / "update-server" / "name").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        return name or socket.gethostname()

    def _flags_path(self) -> Path:
        return self.state_dir / "feature_flags.json"

    def _stored_flags(self) -> dict:
        try:
            data = json.loads(self._flags_path().read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    async def flag(self, setting_id: str) -> bool:
        """A feature flag's value (stored, else its OT-2 default)."""
        for s in (await self.facts())["settings"]:
            if s["id"] == setting_id:
                value = self._stored_flags().get(setting_id)
                return s["default"] if value is None else bool(value)
        return False

    # ------------------------------------------------------------ health and robot
    async def health(self, params: Any = None) -> dict:
        """``GET /health``: the OT-2's fields (``name`` the robot's name, ``api_version`` the
        robot software the API matches, ``fw_version`` the motor board's firmware,
        ``board_revision``, ``logs``, ``system_version``, ``minimum_/maximum_protocol_api_version``
        ``[major, minor]``, ``robot_serial``, ``links``), then ours (``version``,
        ``uptime`` s, ``gpio_backend``, ``motor_board``, ``door``, ``moving``). With an
        ``Opentrons-Version`` header only the OT-2's fields are answered."""
        ours = await self.svc.health(params)
        facts = await self.facts()
        firmware = self.svc.driver.firmware or ""
        return {**ours,
                "name": self.robot_name(), "robot_model": ROBOT_MODEL,
                "api_version": facts["opentrons_version"], "fw_version": firmware,
                "board_revision": BOARD_REVISIONS.get(self.svc.gpio.revision(), "UNKNOWN"),
                "logs": OT2_LOG_PATHS, "system_version": self.svc.system_version or "0.0.0",
                "maximum_protocol_api_version": facts["maximum_protocol_api_version"],
                "minimum_protocol_api_version": facts["minimum_protocol_api_version"],
                "robot_serial": self.robot_serial(),
                "links": {"apiLog": "/logs/api.log", "serialLog": "/logs/serial.log",
                          "serverLog": "/logs/server.log", "apiSpec": "/openapi.json",
                          "systemTime": "/system/time"},
                "server_version": __version__}

    async def home(self, params: Any) -> dict:
        """``POST /robot/home`` ``{target: "robot"}`` or ``{target: "pipette", mount}``
        (also our ``target: "mount"``, ``axis``/``axes``): ``message`` as the OT-2, plus
        what :meth:`RobotService.home` answers."""
        result = await self.svc.home(params)
        p = params if isinstance(params, dict) else {}
        if p.get("target") == "pipette":
            message = f"Pipette on {p.get('mount')} homed successfully"
        else:
            message = "Homing robot."
        return {"message": message, **result}

    async def move(self, params: Any) -> dict:
        """``POST /robot/move``: :meth:`RobotService.move` plus the OT-2's ``message``."""
        result = await self.svc.move(params)
        return {"message": f"Move complete. New position: {result['position']}", **result}

    async def identify(self, params: Any) -> dict:
        """``POST /identify?seconds=N``: blink the frame lights; ``{"message": "identifying"}``."""
        return {"message": "identifying", **await self.svc.identify(params)}

    async def positions(self, params: Any = None) -> dict:
        """``GET /robot/positions``: the OT-2's useful ``positions`` (deck coordinates, mm:
        ``change_pipette``, ``attach_tip``) plus our current ``position``/``mounts``/``homed``."""
        return {"positions": ROBOT_POSITIONS, **await self.svc.positions(params)}

    async def engaged(self, params: Any = None) -> dict:
        """``GET /motors/engaged``: ``{x, y, z_l, z_r, p_l, p_r: {enabled}}`` (OT-2 motor names)."""
        obj(params, set())
        engaged = self.svc.driver.engaged
        return {name: {"enabled": engaged[ax]} for name, ax in list(MOTOR_AXES.items())[:6]}

    async def disengage(self, params: Any) -> dict:
        """``POST /motors/disengage`` ``{axes: ["x", "z_l", "a", ...]}`` (OT-2 motor names or
        our letters): ``{message}`` plus the engaged motors."""
        p = obj(params, {"axes"})
        names = p.get("axes")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise invalid("field 'axes' must be a list of motor names")
        await self.svc.disengage({"axes": [MOTOR_AXES.get(n.lower(), n) for n in names]})
        return {"message": f"Disengaged axes: {', '.join(names)}", **await self.engaged()}

    async def door_status(self, params: Any = None) -> dict:
        """``GET /robot/door/status``: ``{data: {status: "open"|"closed",
        doorRequiredClosedForProtocol}}`` (the ``enableDoorSafetySwitch`` flag)."""
        obj(params, set())
        return {"data": {"status": "open" if self.svc.gpio.door_open() else "closed",
                         "doorRequiredClosedForProtocol": await self.flag("enableDoorSafetySwitch")}}

    async def estop_status(self, params: Any = None) -> dict:
        """``GET /robot/control/estopStatus``: an OT-2 has no E-stop: 403 ``NotSupportedOnOT2``."""
        raise Ot2Error("NotSupportedOnOT2", "Not Supported On OT-2", "An OT-2 has no E-stop.")

    # ------------------------------------------------------------ instruments, modules
    async def _read_eeprom(self, gcode: str, mount: str) -> str | None:
        """One field of a pipette's EEPROM through the board (``M369`` id, ``M371`` model):
        reply ``L:<hex of ASCII>``. None if nothing is attached or the board does not
        answer. (The OT-2 first disengages Z, A, B, C against EMI on the I2C lines; we
        read without moving anything.)"""
        letter = MOUNT_LETTER[mount]
        try:
            async with self.svc._motion:
                lines = await self.svc._driver_call(self.svc.driver.send, f"{gcode} {letter}")
        except DriverError:
            return None
        for line in lines:
            prefix, _, data = line.strip().partition(":")
            if prefix == letter and data:
                try:
                    text = bytes.fromhex(data.strip()).split(b"\x00")[0].decode("ascii")
                except (ValueError, UnicodeDecodeError):
                    return None
                return text or None
        return None

    async def _attached(self, refresh: bool) -> dict:
        if self._pipettes is None or refresh:
            found = {}
            for mount in MOUNT_LETTER:
                model = await self._read_eeprom("M371", mount) if self.svc.driver.connected else None
                pid = await self._read_eeprom("M369", mount) if model else None
                found[mount] = {"model": model, "id": pid}
            if self.svc.driver.connected:
                self._pipettes = found
            return found
        return self._pipettes

    async def pipettes(self, params: Any = None) -> dict:
        """``GET /pipettes[?refresh=true]``: per mount ``{model, name, id, mount_axis,
        plunger_axis, tip_length}`` (all but the axes ``null`` when empty), read from the
        pipettes' EEPROM on the first call and with ``refresh``."""
        p = obj(params, {"refresh"})
        attached = await self._attached(bool(boolean(p, "refresh", default=False)))
        axes = {"left": ("z", "b"), "right": ("a", "c")}
        return {mount: {"model": attached[mount]["model"],
                        "name": pipette_name(attached[mount]["model"]) if attached[mount]["model"] else None,
                        "id": attached[mount]["id"], "tip_length": None,
                        "mount_axis": axes[mount][0], "plunger_axis": axes[mount][1]}
                for mount in ("left", "right")}

    async def instruments(self, params: Any = None) -> dict:
        """``GET /instruments``: ``{data: [{mount, instrumentType: "pipette",
        instrumentModel, instrumentName, serialNumber, ok, data: {}}], meta}``."""
        obj(params, set())
        attached = await self._attached(False)
        data = [{"mount": mount, "instrumentType": "pipette", "instrumentModel": a["model"],
                 "instrumentName": pipette_name(a["model"]), "serialNumber": a["id"] or "",
                 "subsystem": None, "ok": True, "firmwareVersion": None, "data": {}}
                for mount, a in attached.items() if a["model"]]
        return {"data": data, "meta": {"cursor": 0, "totalLength": len(data)}}

    def _modules_busy(self) -> bool:
        """Whether a run or the G-code channel's lease holder may be using the modules."""
        run_active = self.engine is not None and self.engine.runs.active() is not None
        return run_active or self.svc.channel.lease is not None

    async def modules(self, params: Any = None) -> dict:
        """``GET /modules``: ``{data: [module], meta: {cursor: 0, totalLength}}``, each
        attached USB module (temperature, magnetic, thermocycler, heater-shaker) as the
        OT-2's ``AttachedModule`` (Opentrons/opentrons, robot-server/robot_server/modules/
        module_models.py: ``id``, ``serialNumber``, ``firmwareVersion``,
        ``hardwareRevision``, ``hasAvailableUpdate``, ``moduleType``, ``moduleModel``,
        ``compatibleWithRobot``, ``usbPort``, ``data``: live ``status`` and temperatures
        °C, speeds rpm, magnet ``height`` mm), read from the module now, or while a run or
        lease holder uses the modules the last data read (see
        :mod:`~robot_server.module_monitor`)."""
        obj(params, set())
        data = await self.module_monitor.modules()
        return {"data": data, "meta": {"cursor": 0, "totalLength": len(data)}}

    # ------------------------------------------------------------ settings, calibration
    async def _settings_body(self) -> dict:
        stored = self._stored_flags()
        settings = [{k: s[k] for k in ("id", "old_id", "title", "description", "restart_required")}
                    | {"value": stored.get(s["id"])} for s in (await self.facts())["settings"]]
        return {"settings": settings, "links": {}}

    async def get_settings(self, params: Any = None) -> dict:
        """``GET /settings``: the OT-2's advanced settings (feature flags) ``{settings:
        [{id, old_id, title, description, restart_required, value}], links}``; ``value``
        null means the default."""
        obj(params, set())
        return await self._settings_body()

    async def set_setting(self, params: Any) -> dict:
        """``POST /settings`` ``{id, value: true|false|null}``; stored in the data
        directory (``feature_flags.json``). Unknown ``id``: 400."""
        p = obj(params, {"id", "value"})
        setting_id, value = p.get("id"), p.get("value")
        if not isinstance(setting_id, str):
            raise invalid("field 'id' (a setting id) is required")
        if value is not None and not isinstance(value, bool):
            raise invalid("field 'value' must be true, false or null")
        known = {s["id"] for s in (await self.facts())["settings"]}
        if setting_id not in known:
            raise ApiError("unknown-setting", f"{setting_id} is not recognized")
        flags = self._stored_flags()
        flags[setting_id] = value
        path = self._flags_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(flags), encoding="utf-8")
        tmp.replace(path)
        return await self._settings_body()

    async def robot_settings(self, params: Any = None) -> dict:
        """``GET /settings/robot``: the OT-2 robot config (the ``opentrons`` package's
        defaults; ``left_mount_offset`` from our config, mm)."""
        obj(params, set())
        config = dict((await self.facts())["robot_config"])
        config["left_mount_offset"] = list(self.svc.config.left_mount_offset)
        return config

    async def reset_options(self, params: Any = None) -> dict:
        """``GET /settings/reset/options``: ``{options: [{id, name, description}]}``, the
        OT-2's (opentrons/config/reset.py, ``reset_options(OT2)``) but ``authorizedKeys``,
        which we refuse (see :meth:`reset`)."""
        obj(params, set())
        return {"options": [o for o in (await self.facts())["reset_options"] if o["id"] not in REFUSED_RESETS]}

    async def reset(self, params: Any) -> dict:
        """``POST /settings/reset`` ``{<option id>: true|false, ...}``: reset what is
        stored for each option set to true; ``{message: "Options '<names>' were reset"}``
        (``names`` the options' enum names, e.g. ``runs_history``) or ``"Nothing to do"``,
        as the OT-2's robot-server/robot_server/service/legacy/routers/settings.py.

        Of what we keep in ``/data``: ``runsHistory`` deletes every run and protocol with
        its analyses, at once (the OT-2 erases at the next boot; a run in progress: 409);
        ``deckCalibration``, ``pipetteOffsetCalibrations``, ``tipLengthCalibrations``,
        ``deckConfiguration`` and ``bootScripts`` have nothing stored here (identity
        calibration, a fixed deck, no boot scripts), so they succeed and change nothing.
        Feature flags (``/settings``) are no reset option on the OT-2 either.
        An id that is no reset option at all: 422; one that is not an OT-2's (a Flex's)
        or ``authorizedKeys`` (nothing a network peer sends may change who may log in): 403."""
        if not isinstance(params, dict):
            raise invalid("the request must be a JSON object of reset option ids to true or false")
        names = (await self.facts())["reset_option_names"]
        unknown = sorted(str(k) for k in params if k not in names)
        if unknown:
            raise invalid(f"unknown reset option(s): {', '.join(unknown)[:200]}; options: {', '.join(names)}")
        bad = sorted(k for k, v in params.items() if not isinstance(v, bool))
        if bad:
            raise invalid(f"reset option(s) {', '.join(bad)} must be true or false")
        offered = {o["id"] for o in (await self.reset_options())["options"]}
        not_allowed = [k for k in params if k not in offered]
        if not_allowed:
            why = " (clearing SSH keys over the network is refused here)" if set(not_allowed) & REFUSED_RESETS else ""
            raise ApiError("reset-not-allowed", f"{' '.join(not_allowed)} is not a valid reset option.{why}")
        chosen = [k for k, v in params.items() if v]
        if "runsHistory" in chosen and self.engine is not None:
            await self.engine.erase()
        if not chosen:
            return {"message": "Nothing to do"}
        return {"message": f"Options '{', '.join(names[k] for k in chosen)}' were reset"}

    async def calibration_status(self, params: Any = None) -> dict:
        """``GET /calibration/status``: deck calibration (identity: never calibrated on this
        robot) and the deprecated instrument offsets (zero)."""
        obj(params, set())
        offset = {"single": [0.0, 0.0, 0.0], "multi": [0.0, 0.0, 0.0]}
        return {"deckCalibration": {"status": "IDENTITY", "data": {
                    "type": "attitude", "matrix": IDENTITY, "lastModified": None,
                    "pipetteCalibratedWith": None, "tiprack": None, "source": "default",
                    "status": {"markedBad": False, "source": None, "markedAt": None}}},
                "instrumentCalibration": {"right": offset, "left": offset}}

    # ------------------------------------------------------------ networking, logs, time
    async def networking_status(self, params: Any = None) -> dict:
        """``GET /networking/status``: ``{status: "full"|"limited"|"none", interfaces:
        {name: {ipAddress (CIDR), macAddress, gatewayAddress, state, type}}}`` from the
        kernel (``/sys/class/net``, ``/proc/net/route``); ``full`` = a default route."""
        obj(params, set())
        gateways = _default_gateways()
        interfaces = {}
        for dev in sorted(self.net_class.iterdir()) if self.net_class.is_dir() else []:
            if dev.name == "lo":
                continue
            operstate = _read(dev / "operstate")
            interfaces[dev.name] = {
                "ipAddress": _ipv4_cidr(dev.name), "macAddress": _read(dev / "address"),
                "gatewayAddress": gateways.get(dev.name),
                "state": "connected" if operstate == "up" else "disconnected",
                "type": "wifi" if (dev / "wireless").exists() else "ethernet"}
        if gateways:
            status = "full"
        elif any(i["ipAddress"] for i in interfaces.values()):
            status = "limited"
        else:
            status = "none"
        return {"status": status, "interfaces": interfaces}

    async def wifi_list(self, params: Any = None) -> dict:
        """``GET /wifi/list``: ``{list: []}``: networks seen by the Wi-Fi interface (none
        is scanned here)."""
        obj(params, {"rescan"})
        return {"list": []}

    def wireless_interfaces(self) -> list[str]:
        """Names of the kernel's Wi-Fi interfaces (those with ``wireless`` in sysfs)."""
        found = sorted(self.net_class.iterdir()) if self.net_class.is_dir() else []
        return [dev.name for dev in found if (dev / "wireless").exists()]

    async def wifi_configure(self, params: Any) -> dict:
        """``POST /wifi/configure`` ``{ssid, hidden?, securityType?: "none"|"wpa-psk"|
        "wpa-eap", psk?, eapConfig?: {eapType, ...}}``, checked as the OT-2's
        ``WifiConfiguration`` (robot-server/robot_server/service/legacy/models/
        networking.py): 422 when ``ssid`` is missing, a field has the wrong type, the
        security type cannot be deduced or its secret is missing.

        Our image's network stack is systemd-networkd on wired links (overlay/etc/systemd/
        network/) with no Wi-Fi supplicant, so joining a network always fails, answered as
        the OT-2 answers a failed ``nmcli`` configure (service/legacy/routers/
        networking.py): 401 ``{message, errorCode: "4000"}``, the message saying why
        (no Wi-Fi interface, or one this image cannot drive). The PSK is never echoed."""
        p = obj(params, {"ssid", "hidden", "securityType", "psk", "eapConfig"})
        ssid = p.get("ssid")
        if not isinstance(ssid, str):
            raise invalid("body.ssid: field required (a string)")
        boolean(p, "hidden", default=False)
        security, psk, eap = p.get("securityType"), p.get("psk"), p.get("eapConfig")
        if security is not None and security not in WIFI_SECURITY_TYPES:
            raise invalid(f"body.securityType must be one of {', '.join(WIFI_SECURITY_TYPES)}")
        if psk is not None and not isinstance(psk, str):
            raise invalid("body.psk must be a string")
        if eap is not None:
            if not isinstance(eap, dict) or not all(isinstance(v, str) for v in eap.values()):
                raise invalid("body.eapConfig must be an object of strings")
            if not eap.get("eapType"):
                raise invalid("body.eapConfig: eapType must be defined")
        if security is None and psk and eap:
            raise invalid("Cannot deduce security type: psk and eap both passed")
        if security == "wpa-psk" and not psk:
            raise invalid("If securityType is wpa-psk, psk must be specified")
        if security == "wpa-eap" and not eap:
            raise invalid("If securityType is wpa-eap, eapConfig must be specified")
        wireless = self.wireless_interfaces()
        why = (f"Wi-Fi interface {', '.join(wireless)} is present, but this robot's network stack "
               f"(systemd-networkd, no Wi-Fi supplicant) cannot join Wi-Fi networks" if wireless
               else "this robot has no Wi-Fi interface")
        raise ApiError("wifi-unavailable", f"Could not join Wi-Fi network {ssid[:64]!r}: {why}; "
                       f"connect the robot by Ethernet or its USB link instead.")

    async def camera_picture(self, params: Any = None) -> dict:
        """``POST /camera/picture``: on an OT-2, a JPEG from its camera (``ffmpeg`` from
        ``/dev/video0``: api/src/opentrons/system/camera.py, ``take_picture``). Our image
        has no camera support, so it answers as an OT-2 whose capture fails
        (``CameraException``, a communication error): 500 ``{message: "Failed to
        communicate with camera ...", errorCode: "1000"}``."""
        obj(params, set())
        raise Ot2Error("CameraException", "Camera Error",
                       "Failed to communicate with camera (this robot has no camera support)",
                       error_code=COMMUNICATION_ERROR_CODE)

    async def logs(self, params: Any) -> str | list:
        """``GET /logs/{name}?format=text|json&records=N``: the last ``records`` (1..100000,
        default 50000) journal lines of that log (serial.log, api.log, server.log,
        combined_api_server.log, update_server.log, touchscreen.log) as text, or as
        journal JSON records. Empty where there is no journal (``journalctl`` missing).
        Unknown name: 404."""
        p = obj(params, {"log", "format", "records"})
        name = p.get("log")
        if name not in LOGS:
            raise ApiError("not-found", f"no log {str(name)[:40]!r}; logs: {', '.join(LOGS)}")
        fmt = p.get("format", "text")
        if fmt not in ("text", "json"):
            raise invalid("query 'format' must be 'text' or 'json'")
        records = int(number(p, "records", 1, MAX_LOG_RECORDS, default=DEFAULT_LOG_RECORDS))
        unit, grep = LOGS[name]
        journalctl = shutil.which("journalctl")
        out = b""
        if unit is not None and journalctl is not None:
            cmd = [journalctl, "--no-pager", "-u", unit, "-n", str(records), "-a",
                   "-o", "json" if fmt == "json" else "short-precise"]
            if grep:
                cmd += ["-g", grep]
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.DEVNULL)
            out, _ = await proc.communicate()
        text = out.decode("utf-8", errors="replace")
        if fmt == "json":
            return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return text

    async def system_time(self, params: Any = None) -> dict:
        """``GET /system/time``: ``{data: {id: "time", systemTime: ISO 8601 UTC}, links: {}}``."""
        obj(params, set())
        return {"data": {"id": "time", "systemTime": _now()}, "links": {}}

    # ------------------------------------------------------------ stateless commands
    async def create_command(self, params: Any) -> dict:
        """``POST /commands?waitUntilComplete=&timeout=`` ``{data: {commandType, params,
        intent?}}``: run one command outside any run (HTTP 201 ``{data: command}``), the
        command types of :data:`~robot_server.ot2_facts.STATELESS_COMMANDS` with the engine's
        parameters (``home`` ``{axes?: ["x", "y", "leftZ", "rightZ", "leftPlunger",
        "rightPlunger"]}``, ``setRailLights`` ``{on}``, module commands ``{moduleId, ...}``:
        ``celsius`` °C, ``rpm``, magnet ``height`` mm), as the OT-2's robot-server/
        robot_server/commands/router.py. Motion goes through the same lock as every other.
        A module command acts on the attached module whose ``GET /modules`` ``id`` it names
        (through :mod:`~robot_server.module_reader`, validated as the engine does); for an
        id not attached it fails as the OT-2's engine fails it for an unknown module: status
        ``failed``, error ``ModuleNotLoadedError`` "Module <id> not found."
        (protocol_engine/errors/exceptions.py). ``waitUntilComplete`` waits up to
        ``timeout`` ms (> 0; default: no limit). The intent is always ``setup``. Errors: 422 ``InvalidRequest`` (unknown
        command type, missing or mistyped parameters), 409 ``RunActive`` while a run is open."""
        p = obj(params, {"data", "waitUntilComplete", "timeout"})
        if self.engine is not None and self.engine.runs.active() is not None:
            raise Ot2Error("RunActive", "Run Active", "There is an active run. Close the current run "
                           "to issue commands via POST /commands.", error_code=ROBOT_IN_USE_CODE)
        data = p.get("data")
        if not isinstance(data, dict):
            raise invalid("body.data: field required (the command request)")
        body = obj(data, {"commandType", "params", "intent", "key"})
        schemas = (await self.facts())["stateless_commands"]
        command_type = body.get("commandType")
        if not isinstance(command_type, str) or command_type not in schemas:
            raise invalid(f"body.data.commandType: unsupported command type {str(command_type)[:40]!r} "
                          f"(supported: {', '.join(schemas)})")
        cparams = body.get("params") or {}
        if not isinstance(cparams, dict):
            raise invalid("body.data.params must be an object")
        errors = param_errors(schemas[command_type], cparams)
        if command_type == "home" and not errors and not set(cparams.get("axes") or ()) <= set(ENGINE_AXES):
            errors = [f"axes: an OT-2 has only {', '.join(ENGINE_AXES)}"]
        if errors:
            raise invalid("; ".join(f"body.data.params.{e}" for e in errors))
        wait = boolean(p, "waitUntilComplete", default=False)
        timeout_ms = number(p, "timeout", 1, 3_600_000, default=None)
        command = {"id": str(uuid.uuid4()), "key": body.get("key") or str(uuid.uuid4()),
                   "commandType": command_type, "createdAt": _now(), "startedAt": None, "completedAt": None,
                   "status": "queued", "params": cparams, "result": None, "error": None,
                   "intent": "setup", "notes": []}
        self.commands[command["id"]] = command
        while len(self.commands) > MAX_COMMANDS:
            self.commands.pop(next(iter(self.commands)))
        task = asyncio.ensure_future(self._execute(command))
        if wait:
            try:
                await asyncio.wait_for(asyncio.shield(task), None if timeout_ms is None else timeout_ms / 1000)
            except asyncio.TimeoutError:
                pass
        return {"data": dict(command)}

    async def _execute(self, command: dict) -> None:
        command.update(status="running", startedAt=_now())
        command_type, cparams = command["commandType"], command["params"]
        result: dict = {}
        try:
            if command_type == "home":
                axes = cparams.get("axes")
                await self.svc.home({"axes": [ENGINE_AXES[a] for a in axes]} if axes else {})
            elif command_type == "setRailLights":
                await self.svc.set_lights({"on": cparams["on"]})
            else:
                result = await self._module_command(command_type, cparams)
        except API_ERRORS as exc:
            error = as_api_error(exc)
            command.update(status="failed", error={
                "id": str(uuid.uuid4()), "createdAt": _now(), "errorCode": GENERAL_ERROR_CODE,
                "errorType": error.code, "detail": error.message, "errorInfo": {}, "wrappedErrors": [],
                "isDefined": False})
        else:
            command.update(status="succeeded", result=result)
        command["completedAt"] = _now()

    async def _module_command(self, command_type: str, cparams: dict) -> dict:
        """A module command on the attached module ``moduleId`` (see
        :meth:`create_command`); its result. Raises ``ApiError`` with the engine's error
        type: ``ModuleNotLoadedError`` (no such module attached), ``RobotInUse`` (a lease
        holder has the modules), or what the module reader reports: a failed command's
        error, never an HTTP answer (so none of them is in :data:`~robot_server.errors.HTTP_STATUS`)."""
        if self._modules_busy():
            raise ApiError("RobotInUse", "A client of the G-code channel is using the robot and its modules.")
        module = next((m for m in await self.module_monitor.modules() if m["id"] == cparams["moduleId"]), None)
        if module is None:
            raise ApiError("ModuleNotLoadedError", f"Module {cparams['moduleId']} not found.")
        if command_type in RETRACT_BEFORE:
            await self.svc.home({"axes": RETRACT_BEFORE[command_type]})
        reply = await self.module_monitor.execute(module["usbPort"]["path"], command_type, cparams)
        if "error" in reply:
            raise ApiError(str(reply["error"]["errorType"]), str(reply["error"]["detail"]))
        return reply["result"]

    async def list_commands(self, params: Any = None) -> dict:
        """``GET /commands?cursor=&pageLength=``: the stateless commands, oldest first,
        ``{data, meta: {cursor, totalLength}}``; a page of ``pageLength`` (default 20)
        from ``cursor`` (default: the page ending with the newest)."""
        p = obj(params, {"cursor", "pageLength"})
        commands = list(self.commands.values())
        length = int(number(p, "pageLength", 1, MAX_COMMANDS, default=DEFAULT_PAGE_LENGTH))
        cursor = int(number(p, "cursor", 0, MAX_COMMANDS, default=max(0, len(commands) - length)))
        data = [dict(c) for c in commands[cursor:cursor + length]]
        return {"data": data, "meta": {"cursor": cursor, "totalLength": len(commands)}}

    async def get_command(self, params: Any) -> dict:
        """``GET /commands/{id}``: ``{data: command}``; unknown id: 404 ``CommandNotFound``."""
        p = obj(params, {"id"})
        command = self.commands.get(p.get("id"))
        if command is None:
            raise Ot2Error("StatelessCommandNotFound", "Stateless Command Not Found",
                           f"Command {str(p.get('id'))[:60]} not found.")
        return {"data": dict(command)}


# ---------------------------------------------------------------- command parameters
_JSON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "array": list,
               "object": dict}


def param_errors(schema: dict, params: dict) -> list[str]:
    """What a command's parameter schema (the engine's params model as JSON schema, from
    :mod:`~robot_server.ot2_facts`) refuses in ``params``: missing required fields, values
    of another JSON type or outside an enum. Unknown fields are ignored, as the engine's
    models ignore them; nested objects' fields are not checked."""
    defs = schema.get("$defs", {})

    def resolve(s: dict) -> dict:
        return defs.get(s["$ref"].rsplit("/", 1)[-1], {}) if "$ref" in s else s

    def errors(where: str, value: Any, s: dict) -> list[str]:
        s = resolve(s)
        if "anyOf" in s:
            return [] if any(not errors(where, value, o) for o in s["anyOf"]) else [f"{where}: invalid value"]
        kind = _JSON_TYPES.get(s.get("type")) if s.get("type") != "null" else type(None)
        if kind is None:
            return []
        if not isinstance(value, kind) or (isinstance(value, bool) and s.get("type") in ("number", "integer")):
            return [f"{where}: must be of type {s['type']}"]
        if "enum" in s and value not in s["enum"]:
            return [f"{where}: must be one of {', '.join(map(str, s['enum']))}"]
        if s.get("type") == "array" and "items" in s:
            return [e for i, v in enumerate(value) for e in errors(f"{where}.{i}", v, s["items"])]
        return []

    found = [f"{k}: field required" for k in schema.get("required", []) if k not in params]
    for key, value in params.items():
        if key in schema.get("properties", {}):
            found += errors(key, value, schema["properties"][key])
    return found


# ---------------------------------------------------------------- kernel network facts
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _default_gateways() -> dict[str, str]:
    """Interface -> default gateway from ``/proc/net/route`` (little-endian hex)."""
    found = {}
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":
            found[fields[0]] = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return found


def _ipv4_cidr(ifname: str) -> str | None:
    """The interface's IPv4 address with prefix (``10.0.0.5/24``), from the kernel
    (``SIOCGIFADDR``/``SIOCGIFNETMASK``); None if it has none."""
    req = struct.pack("256s", ifname.encode()[:15])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])
            mask = fcntl.ioctl(s.fileno(), 0x891B, req)[20:24]
    except OSError:
        return None
    prefix = sum(bin(b).count("1") for b in array.array("B", mask))
    return f"{addr}/{prefix}"


# ---------------------------------------------------------------- operations
def ot2_operations(svc: RobotService) -> list:
    """The OT-2 resources not in :func:`robot_server.api.operations`' own table."""
    r = svc.ot2
    return [
        Op("doorStatus", "GET", "/robot/door/status", r.door_status, "Door open/closed (OT-2 shape)",
           ot2=JSONAPI),
        Op("estopStatus", "GET", "/robot/control/estopStatus", r.estop_status,
           "E-stop status: 403 NotSupportedOnOT2", ot2=JSONAPI),
        Op("getPipettes", "GET", "/pipettes", r.pipettes, "Attached pipettes (from their EEPROM)",
           query={"refresh": {"type": "boolean"}}, ot2=LEGACY),
        Op("getInstruments", "GET", "/instruments", r.instruments, "Attached instruments", ot2=JSONAPI),
        Op("getModules", "GET", "/modules", r.modules, "Attached modules", ot2=JSONAPI),
        Op("getSettings", "GET", "/settings", r.get_settings, "Advanced settings (feature flags)", ot2=LEGACY),
        Op("postSettings", "POST", "/settings", r.set_setting, "Change an advanced setting",
           body={"type": "object", "additionalProperties": False, "required": ["id"], "properties": {
               "id": {"type": "string"}, "value": {"type": "boolean", "nullable": True}}}, ot2=LEGACY),
        Op("getRobotSettings", "GET", "/settings/robot", r.robot_settings, "Robot config", ot2=LEGACY),
        Op("getResetOptions", "GET", "/settings/reset/options", r.reset_options,
           "What POST /settings/reset could reset", ot2=LEGACY),
        Op("postReset", "POST", "/settings/reset", r.reset, "Reset stored robot data (runs and protocols, calibration)",
           body={"type": "object", "description": "reset option id (GET /settings/reset/options) -> true to reset it",
                 "additionalProperties": {"type": "boolean"}}, ot2=LEGACY),
        Op("calibrationStatus", "GET", "/calibration/status", r.calibration_status,
           "Deck calibration status", ot2=LEGACY),
        Op("networkingStatus", "GET", "/networking/status", r.networking_status,
           "Connectivity and interfaces", ot2=LEGACY),
        Op("wifiList", "GET", "/wifi/list", r.wifi_list, "Visible Wi-Fi networks",
           query={"rescan": {"type": "boolean"}}, ot2=LEGACY),
        Op("wifiConfigure", "POST", "/wifi/configure", r.wifi_configure,
           "Join a Wi-Fi network (this image has no Wi-Fi: 401 saying why)",
           body={"type": "object", "additionalProperties": False, "required": ["ssid"], "properties": {
               "ssid": {"type": "string"}, "hidden": {"type": "boolean"},
               "securityType": {"type": "string", "enum": list(WIFI_SECURITY_TYPES)},
               "psk": {"type": "string"},
               "eapConfig": {"type": "object", "required": ["eapType"],
                             "additionalProperties": {"type": "string"}}}},
           ot2=LEGACY, status=201, errors=((401, "the network could not be joined (no Wi-Fi here)"),)),
        Op("cameraPicture", "POST", "/camera/picture", r.camera_picture,
           "A picture from the robot's camera (none here: 500 as an OT-2 whose camera fails)",
           ot2=LEGACY, errors=((500, "the camera could not be read (none on this robot)"),)),
        Op("getLogs", "GET", "/logs/{log}", r.logs, "Journal lines of one log (text or JSON records)",
           query={"log": {"type": "string", "in": "path", "enum": list(LOGS)},
                  "format": {"type": "string", "enum": ["text", "json"]},
                  "records": {"type": "integer", "minimum": 1, "maximum": MAX_LOG_RECORDS}},
           ot2=LEGACY, version_header=False),
        Op("systemTime", "GET", "/system/time", r.system_time, "The robot's clock (UTC)", ot2=JSONAPI),
        Op("createCommand", "POST", "/commands", r.create_command,
           "Run a stateless command (home, rail lights, module commands)",
           query={"waitUntilComplete": {"type": "boolean"}, "timeout": {"type": "integer", "minimum": 1}},
           body={"type": "object", "required": ["data"], "properties": {"data": {
               "type": "object", "required": ["commandType"], "properties": {
                   "commandType": {"type": "string", "enum": list(ot2_facts.STATELESS_COMMANDS)},
                   "params": {"type": "object", "description": "the engine's parameters of that command type",
                              "properties": {
                                  "axes": {"type": "array", "items": {"type": "string", "enum": list(ENGINE_AXES)}},
                                  "on": {"type": "boolean"}, "moduleId": {"type": "string"},
                                  "celsius": {"type": "number"}, "rpm": {"type": "number"},
                                  "height": {"type": "number"}}},
                   "intent": {"type": "string"}}}}},
           ot2=JSONAPI, status=201),
        Op("listCommands", "GET", "/commands", r.list_commands, "Stateless commands run so far",
           query={"cursor": {"type": "integer", "minimum": 0},
                  "pageLength": {"type": "integer", "minimum": 1, "maximum": MAX_COMMANDS}}, ot2=JSONAPI),
        Op("getCommand", "GET", "/commands/{id}", r.get_command, "One stateless command",
           query={"id": {"type": "string", "in": "path"}}, ot2=JSONAPI),
    ]
