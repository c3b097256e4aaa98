"""The protocol API: :class:`ProtocolContext` (passed to ``run(protocol)``) and
:class:`InstrumentContext` (a pipette), with the names and behaviour of the OT-2's Python
Protocol API v2 for the everyday subset.

Units: volumes in µL, flow rates in µL/s, positions and distances in mm (deck
coordinates: origin at slot 1's front-left corner, Z up from the deck), speeds in mm/s,
times in s.

Geometry (facts from ``shared/reference/ot2-facts.md`` and the OT-2's published
definitions): a mount's deck position is its machine position (X, Y, and Z for the left
mount / A for the right one) plus the mount offset (left mount: ``left_mount_offset``,
default [-34, 0, 0] mm, right mount: 0). The pipette's nozzle is at the mount point plus
the pipette's ``nozzle_offset_mm``; with a tip, the tip's end is ``tip_length -
tip_overlap`` below the nozzle. Liquid handling moves the plunger (B left, C right) from
its ``bottom`` position up by ``volume / ul_per_mm(volume)`` mm; the plunger speed is
``flow_rate / ul_per_mm(max_volume)`` mm/s.

Motion between locations is an arc: retract to a travel height (10 mm above the tallest
labware on the deck, or 5 mm above the current labware when staying in it), move X/Y,
then lower. Every motion is checked against the soft limits before it is sent.
"""
from __future__ import annotations

import bisect
import difflib
import math
import sys
import threading
import time
from typing import Any, Callable, Iterable

from ..driver import SOFT_LIMITS
from ..gcode import ACCELERATION, HOMED_POSITION, MAX_SPEED
from .errors import (APIVersionError, InstrumentError, LabwareError, LocationError, NoTipAttachedError,
                     OutOfTipsError, ProtocolAPIError, ProtocolStopped, TipAttachedError, UnknownInstrumentError,
                     UnreachableError, VolumeError)
from .hardware import Hardware, SimulatedHardware
from .labware import Deck, Labware, Well, deck_definition, from_ot2_definition, labware_definition, pipette_definitions
from .types import Location, Mount, Point, as_point, mount_name

#: Highest API level we accept (``metadata["apiLevel"]``); the default when none is given.
MAX_API_VERSION = (2, 20)
DEFAULT_API_VERSION = (2, 15)
#: Gantry (X/Y) speed for travel moves, mm/s (the OT-2's default).
GANTRY_SPEED = 400.0
#: Mount (Z/A) speed, mm/s (the axis' maximum).
Z_SPEED = MAX_SPEED["Z"]
#: Speed of the nozzle pressing into a tip, mm/s.
PICK_UP_SPEED = 30.0
#: Plunger speed while ejecting a tip, mm/s.
DROP_TIP_SPEED = 5.0
#: Travel clearance above the tallest labware (mm), and above the current labware (mm).
DECK_CLEARANCE = 10.0
SAME_LABWARE_CLEARANCE = 5.0
#: Default height of aspirate/dispense above a well's bottom (mm).
WELL_BOTTOM_CLEARANCE = 1.0


def parse_api_version(value: Any) -> tuple[int, int]:
    """``"2.15"`` -> (2, 15). Raises :class:`APIVersionError`."""
    if isinstance(value, tuple) and len(value) == 2:
        return value
    text = str(value).strip()
    try:
        major, minor = (int(p) for p in text.split("."))
    except ValueError:
        raise APIVersionError(f"apiLevel must look like '2.15', got {value!r}") from None
    if major != 2:
        raise APIVersionError(f"apiLevel {text}: only the Python Protocol API version 2 is supported")
    if (major, minor) > MAX_API_VERSION:
        raise APIVersionError(f"apiLevel {text} is newer than this robot supports "
                              f"({MAX_API_VERSION[0]}.{MAX_API_VERSION[1]})")
    return major, minor


class RunControl:
    """Pause / resume / stop for a running protocol, checked before every command.

    ``request_*`` may be called from another thread or a signal handler. A stop raises
    :class:`ProtocolStopped` at the next command (or inside a delay/pause)."""

    def __init__(self) -> None:
        self.paused = False
        self.stop_requested = False
        self.pause_reason: str | None = None
        self._wake = threading.Event()
        self.on_state: Callable[[str, str | None], None] | None = None   # ("paused"|"running", reason)

    def request_pause(self, reason: str | None = None) -> None:
        self.paused = True
        self.pause_reason = reason

    def request_resume(self) -> None:
        self.paused = False
        self._wake.set()

    def request_stop(self) -> None:
        self.stop_requested = True
        self._wake.set()

    def check(self) -> None:
        """Raise if stopped; block while paused."""
        if self.stop_requested:
            raise ProtocolStopped("stop requested")
        if self.paused:
            if self.on_state:
                self.on_state("paused", self.pause_reason)
            while self.paused and not self.stop_requested:
                self._wake.wait(0.1)
                self._wake.clear()
            if self.stop_requested:
                raise ProtocolStopped("stop requested")
            if self.on_state:
                self.on_state("running", None)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; time spent paused does not count; a stop interrupts."""
        remaining = seconds
        last = time.monotonic()
        while remaining > 0:
            self.check()
            self._wake.wait(min(remaining, 0.1))
            self._wake.clear()
            now = time.monotonic()
            if not self.paused:
                remaining -= now - last
            last = now
        self.check()


def _move_time(dist: float, speed: float, accel: float) -> float:
    """Seconds for a trapezoidal move of ``dist`` mm at ``speed`` mm/s, ``accel`` mm/s²."""
    if dist <= 0:
        return 0.0
    if dist >= speed * speed / accel:
        return dist / speed + speed / accel
    return 2.0 * math.sqrt(dist / accel)


def _fmt_vol(v: float) -> str:
    return f"{float(v)}"


def _fmt_rate(v: float) -> str:
    return f"{round(float(v), 2):g}" if float(v) != int(v) else f"{float(v)}"


def _describe(loc: Any) -> str:
    if isinstance(loc, Well):
        return str(loc)
    if isinstance(loc, Location):
        obj = loc.labware.object
        return str(obj) if obj is not None else f"({loc.point.x:.2f}, {loc.point.y:.2f}, {loc.point.z:.2f})"
    if isinstance(loc, Labware):
        return str(loc)
    if isinstance(loc, (list, tuple)):
        wells = _flatten(loc)
        if len(wells) == 1:
            return _describe(wells[0])
        if all(isinstance(w, Well) for w in wells) and len({id(w.parent) for w in wells}) == 1:
            return f"{wells[0].well_name}..{wells[-1].well_name} ({len(wells)} wells) of {wells[0].parent}"
        return ", ".join(_describe(w) for w in wells)
    return str(loc)


def _flatten(items: Any) -> list:
    if isinstance(items, (Well, Location)):
        return [items]
    out: list = []
    for it in items:
        if isinstance(it, (list, tuple)):
            out.extend(_flatten(it))
        else:
            out.append(it)
    return out


class _Rates:
    """``pipette.flow_rate``: ``aspirate``, ``dispense``, ``blow_out`` in µL/s (settable)."""

    def __init__(self, rates: dict) -> None:
        self.aspirate = float(rates["aspirate"])
        self.dispense = float(rates["dispense"])
        self.blow_out = float(rates["blow_out"])

    def __setattr__(self, key: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ProtocolAPIError(f"flow_rate.{key} must be a positive number of uL/s, got {value!r}")
        object.__setattr__(self, key, float(value))


class _Clearances:
    """``pipette.well_bottom_clearance``: mm above a well's bottom for ``aspirate`` / ``dispense``."""

    def __init__(self) -> None:
        self.aspirate = WELL_BOTTOM_CLEARANCE
        self.dispense = WELL_BOTTOM_CLEARANCE


class InstrumentContext:
    """A pipette on a mount. Volumes in µL, flow rates in µL/s, speeds in mm/s.
    Methods return the pipette itself so calls can be chained."""

    def __init__(self, ctx: "ProtocolContext", name: str, mount: str, definition: dict,
                 tip_racks: list[Labware]) -> None:
        self._ctx = ctx
        self.name = name
        self.model = name
        self.mount = mount
        self._def = definition
        self.channels = int(definition.get("channels", 1))
        self.max_volume = float(definition["max_volume_ul"])
        self.min_volume = float(definition["min_volume_ul"])
        self._plunger_pos = dict(definition["plunger_mm"])
        self._nozzle = Point(*definition["nozzle_offset_mm"])
        table = sorted((float(v), float(u)) for v, u in definition["ul_per_mm"])
        self._upm_v = [v for v, _ in table]
        self._upm_u = [u for _, u in table]
        rates = definition["flow_rate_ul_s"] if ctx.api_version >= (2, 6) else definition["flow_rate_ul_s_before_2_6"]
        self.flow_rate = _Rates(rates)
        self.well_bottom_clearance = _Clearances()
        self.tip_racks: list[Labware] = list(tip_racks)
        self.starting_tip: Well | None = None
        self.trash_container: Labware = ctx.fixed_trash
        self.default_speed = GANTRY_SPEED
        self.z_axis, self.plunger_axis = ("Z", "B") if mount == "left" else ("A", "C")
        self.current_volume = 0.0
        self._tip: tuple[Well | None, float] | None = None      # (picked from, effective length mm)
        self._tip_capacity = self.max_volume
        self._ready = False            # plunger at the bottom, nothing aspirated
        self._last: Any = None         # the well/labware the pipette was last moved to
        self._last_loc: Location | None = None
        self._picked_from: Well | None = None

    # ------------------------------------------------------------ properties
    @property
    def has_tip(self) -> bool:
        return self._tip is not None

    @property
    def hw_pipette(self) -> dict:
        return {"name": self.name, "model": self.model, "max_volume": self.max_volume,
                "has_tip": self.has_tip, "current_volume": self.current_volume}

    @property
    def type(self) -> str:
        return "single" if self.channels == 1 else "multi"

    @property
    def api_version(self):
        return self._ctx.api_version

    def __str__(self) -> str:
        return f"{self._def['display_name']} on {self.mount} mount"

    __repr__ = __str__

    # ------------------------------------------------------------ plunger maths
    def ul_per_mm(self, volume: float) -> float:
        """µL per mm of plunger travel at ``volume`` µL (linear between calibration points)."""
        v, u = self._upm_v, self._upm_u
        if volume <= v[0]:
            return u[0]
        if volume >= v[-1]:
            return u[-1]
        i = bisect.bisect_left(v, volume)
        f = (volume - v[i - 1]) / (v[i] - v[i - 1])
        return u[i - 1] + f * (u[i] - u[i - 1])

    def plunger_position(self, volume: float) -> float:
        """Plunger axis position (mm) holding ``volume`` µL: bottom + volume / µL-per-mm."""
        if volume <= 0:
            return self._plunger_pos["bottom"]
        return self._plunger_pos["bottom"] + volume / self.ul_per_mm(volume)

    def plunger_speed(self, flow_rate: float) -> float:
        """Plunger speed (mm/s) for ``flow_rate`` µL/s, capped at the axis' maximum."""
        return min(flow_rate / self.ul_per_mm(self.max_volume), MAX_SPEED[self.plunger_axis])

    # ------------------------------------------------------------ location helpers
    def _tip_length(self) -> float:
        return self._tip[1] if self._tip else 0.0

    def _mount_targets(self, point: Point) -> dict[str, float]:
        """Machine targets (X, Y, mount axis) putting the tip end (or nozzle) at ``point``."""
        off = self._ctx._mount_offset(self.mount)
        mx = point.x - self._nozzle.x - off.x
        my = point.y - self._nozzle.y - off.y
        mz = point.z - self._nozzle.z + self._tip_length() - off.z
        return {"X": mx, "Y": my, self.z_axis: mz}

    def _resolve(self, location: Any, default: Callable[[Well], Location] | None, what: str) -> tuple[Location, Any]:
        """(Location, object for travel planning) from a Well, Location or None (current)."""
        if location is None:
            if self._last_loc is None or self._ctx._last_instrument is not self:
                raise LocationError(f"{what} needs a location: this pipette has not moved to one yet")
            return self._last_loc, self._last
        if isinstance(location, Well):
            loc = default(location) if default is not None else location.top()
            return loc, location
        if isinstance(location, Location):
            return location, location.labware.object
        if hasattr(location, "point") and hasattr(location, "labware"):       # the real opentrons Location
            return Location(as_point(location.point), None), None
        if isinstance(location, Labware):
            return location.top(), location
        raise LocationError(f"{what}: {location!r} is not a well or a location")

    def _move(self, loc: Location, obj: Any, *, direct: bool = False, speed: float | None = None,
              minimum_z_height: float | None = None) -> None:
        ctx = self._ctx
        ctx._ensure_homed()
        target = self._mount_targets(loc.point)
        ctx._retract_other(self)
        pos = ctx._pos
        z_top = SOFT_LIMITS[self.z_axis][1]
        same_place = obj is not None and obj is self._last_obj()
        if direct or (same_place and isinstance(obj, Well)):
            changed = {k: v for k, v in target.items() if pos.get(k) is None or abs(pos[k] - v) > 1e-6}
            if changed:
                default = Z_SPEED if set(changed) == {self.z_axis} else self.default_speed
                ctx._motion(changed, speed or default, what=loc)
        else:
            lw = obj.parent if isinstance(obj, Well) else obj
            last = self._last_obj()
            last_lw = last.parent if isinstance(last, Well) else last
            if lw is not None and lw is last_lw and isinstance(lw, Labware):
                travel = lw.highest_z + SAME_LABWARE_CLEARANCE
            else:
                travel = ctx.deck.highest_z() + DECK_CLEARANCE
            if minimum_z_height is not None:
                travel = max(travel, float(minimum_z_height))
            travel_mz = min(max(travel, loc.point.z) - self._nozzle.z + self._tip_length()
                            - ctx._mount_offset(self.mount).z, z_top)
            cur_z = pos.get(self.z_axis)
            if cur_z is None or cur_z < travel_mz - 1e-6:
                ctx._motion({self.z_axis: travel_mz}, Z_SPEED, what=loc)
            if any(pos.get(ax) is None or abs(pos[ax] - target[ax]) > 1e-6 for ax in ("X", "Y")):
                ctx._motion({"X": target["X"], "Y": target["Y"]}, speed or self.default_speed, what=loc)
            if abs(pos[self.z_axis] - target[self.z_axis]) > 1e-6:
                ctx._motion({self.z_axis: target[self.z_axis]}, min(speed or Z_SPEED, Z_SPEED), what=loc)
        self._last = obj
        self._last_loc = loc
        ctx._last_instrument = self

    def _last_obj(self) -> Any:
        if self._ctx._last_instrument is not self:
            return None
        return self._last

    def _plunger(self, target: float, speed: float) -> None:
        self._ctx._motion({self.plunger_axis: target}, speed, what=None)

    def _require_tip(self, action: str) -> None:
        if not self.has_tip:
            raise NoTipAttachedError(f"cannot {action} without a tip: call {self.name}.pick_up_tip() first")

    @staticmethod
    def _volume(value: Any, what: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise VolumeError(f"{what} volume must be a number of uL >= 0, got {value!r}")
        return float(value)

    # ------------------------------------------------------------ liquid handling
    def aspirate(self, volume: float | None = None, location: Any = None, rate: float = 1.0) -> "InstrumentContext":
        """Draw ``volume`` µL (default: as much as fits) at ``location`` (a well: its bottom
        + ``well_bottom_clearance.aspirate``; default: where the pipette is) at
        ``rate`` x ``flow_rate.aspirate`` µL/s."""
        vol = self._volume(volume, "aspirate")
        self._require_tip("aspirate")
        room = self._tip_capacity - self.current_volume
        if vol is None or vol == 0:
            vol = room
        if vol > room + 1e-9:
            raise VolumeError(f"cannot aspirate {vol} uL: {self.name} with this tip holds at most "
                              f"{self._tip_capacity:g} uL and already holds {self.current_volume:g} uL")
        loc, obj = self._resolve(location, lambda w: w.bottom(self.well_bottom_clearance.aspirate), "aspirate")
        flow = self.flow_rate.aspirate * float(rate)
        self._ctx._log("aspirate", f"Aspirating {_fmt_vol(vol)} uL from {_describe(loc)} at {_fmt_rate(flow)} uL/sec",
                       loc.point, volume=vol, flow_rate=flow, mount=self.mount)
        if not self._ready:
            if isinstance(obj, Well):
                self._move(obj.top(), obj)
            self._plunger(self._plunger_pos["bottom"], self.plunger_speed(self.flow_rate.blow_out))
            self._ready = True
        self._move(loc, obj)
        self.current_volume += vol
        self._plunger(self.plunger_position(self.current_volume), self.plunger_speed(flow))
        self._ctx.stats["aspirated_ul"] += vol
        return self

    def dispense(self, volume: float | None = None, location: Any = None, rate: float = 1.0,
                 push_out: float | None = None) -> "InstrumentContext":
        """Push out ``volume`` µL (default: everything held; more than held is clipped) at
        ``location`` (a well: bottom + ``well_bottom_clearance.dispense``) at ``rate`` x
        ``flow_rate.dispense`` µL/s."""
        vol = self._volume(volume, "dispense")
        self._require_tip("dispense")
        if vol is None or vol == 0 or vol > self.current_volume:
            vol = self.current_volume
        loc, obj = self._resolve(location, lambda w: w.bottom(self.well_bottom_clearance.dispense), "dispense")
        flow = self.flow_rate.dispense * float(rate)
        self._ctx._log("dispense", f"Dispensing {_fmt_vol(vol)} uL into {_describe(loc)} at {_fmt_rate(flow)} uL/sec",
                       loc.point, volume=vol, flow_rate=flow, mount=self.mount)
        self._move(loc, obj)
        self.current_volume = max(0.0, self.current_volume - vol)
        self._plunger(self.plunger_position(self.current_volume), self.plunger_speed(flow))
        self._ctx.stats["dispensed_ul"] += vol
        return self

    def blow_out(self, location: Any = None) -> "InstrumentContext":
        """Push the plunger past the bottom to empty the tip (at a well's top by default)."""
        self._require_tip("blow out")
        loc, obj = self._resolve(location, lambda w: w.top(), "blow_out")
        self._ctx._log("blow_out", f"Blowing out at {_describe(loc)}", loc.point, mount=self.mount)
        self._move(loc, obj)
        self._plunger(self._plunger_pos["blow_out"], self.plunger_speed(self.flow_rate.blow_out))
        self.current_volume = 0.0
        self._ready = False
        return self

    def mix(self, repetitions: int = 1, volume: float | None = None, location: Any = None,
            rate: float = 1.0) -> "InstrumentContext":
        """Aspirate and dispense ``volume`` µL (default: the pipette's maximum)
        ``repetitions`` times at ``location``."""
        self._require_tip("mix")
        vol = self._volume(volume, "mix") or (self._tip_capacity - self.current_volume)
        if isinstance(repetitions, bool) or not isinstance(repetitions, int) or repetitions < 0:
            raise ProtocolAPIError(f"mix repetitions must be a whole number >= 0, got {repetitions!r}")
        loc, obj = self._resolve(location, lambda w: w.bottom(self.well_bottom_clearance.aspirate), "mix")
        self._ctx._log("mix", f"Mixing {repetitions} times with a volume of {_fmt_vol(vol)} ul", loc.point,
                       volume=vol, mount=self.mount)
        with self._ctx._nested():
            target = obj if isinstance(obj, Well) and (location is None or isinstance(location, Well)) else loc
            for _ in range(repetitions):
                self.aspirate(vol, target, rate)
                self.dispense(vol, target, rate)
        return self

    def air_gap(self, volume: float | None = None, height: float | None = None) -> "InstrumentContext":
        """Aspirate ``volume`` µL of air ``height`` mm (default 5) above the current well's top."""
        self._require_tip("air gap")
        last = self._last_obj()
        if not isinstance(last, Well):
            raise LocationError("air_gap needs the pipette to be in a well first")
        vol = self._volume(volume, "air gap")
        self._ctx._log("air_gap", "Air gap", None, volume=vol, mount=self.mount)
        with self._ctx._nested():
            self.move_to(last.top(5.0 if height is None else height))
            self.aspirate(vol)
        return self

    def touch_tip(self, location: Any = None, radius: float = 1.0, v_offset: float = -1.0,
                  speed: float = 60.0) -> "InstrumentContext":
        """Touch the tip to the four sides of a well ``v_offset`` mm below its top, at
        ``radius`` x the well's half size, moving at ``speed`` mm/s."""
        self._require_tip("touch tip")
        well = location if isinstance(location, Well) else self._last_obj()
        if not isinstance(well, Well):
            raise LocationError("touch_tip needs a well")
        top = well.top(v_offset)
        self._ctx._log("touch_tip", f"Touching tip at {_describe(well)}", top.point, mount=self.mount)
        self._move(top, well)
        hx = (well.length or 0) / 2 * radius
        hy = (well.width or 0) / 2 * radius
        c = top.point
        for dx, dy in ((hx, 0), (-hx, 0), (0, hy), (0, -hy)):
            self._ctx._motion(self._mount_targets(Point(c.x + dx, c.y + dy, c.z)), speed, what=top)
        self._ctx._motion(self._mount_targets(c), speed, what=top)
        return self

    # ------------------------------------------------------------ tips
    def _next_tip(self) -> Well:
        if not self.tip_racks:
            raise OutOfTipsError(f"{self.name} has no tip racks: pass tip_racks=[...] to load_instrument "
                                 "or give pick_up_tip() a location")
        started = self.starting_tip is None
        for rack in self.tip_racks:
            start = None
            if not started:
                if self.starting_tip.parent is rack:
                    start, started = self.starting_tip, True
                else:
                    continue
            tip = rack.next_tip(starting_tip=start)
            if tip is not None:
                return tip
        raise OutOfTipsError(f"{self.name} is out of tips: every tip in "
                             f"{', '.join(str(r) for r in self.tip_racks)} has been used "
                             "(add a tip rack or call reset_tipracks())")

    def pick_up_tip(self, location: Any = None, presses: Any = None, increment: Any = None,
                    prep_after: Any = None) -> "InstrumentContext":
        """Pick up a tip: the next unused one from ``tip_racks`` (A1, B1, ... H1, A2, ...),
        a given well of a tip rack, or the next one of a given rack."""
        if self.has_tip:
            raise TipAttachedError(f"{self.name} already has a tip: drop_tip() or return_tip() first")
        if location is None:
            well = self._next_tip()
        elif isinstance(location, Well):
            well = location
        elif isinstance(location, Labware):
            well = location.next_tip()
            if well is None:
                raise OutOfTipsError(f"no tips left in {location}")
        elif isinstance(location, Location) and isinstance(location.labware.object, Well):
            well = location.labware.object
        else:
            raise LocationError(f"pick_up_tip: {location!r} is not a tip rack well")
        rack = well.parent
        if not rack.is_tiprack:
            raise LabwareError(f"cannot pick up a tip from {well}: {rack.load_name} is not a tip rack")
        top = well.top()
        self._ctx._log("pick_up_tip", f"Picking up tip from {well}", top.point, mount=self.mount)
        self._move(top, well)
        pressed = self._mount_targets(top.point)[self.z_axis] - rack.tip_overlap
        self._ctx._motion({self.z_axis: pressed}, PICK_UP_SPEED, what=top)
        rack.use_tips(well)
        self._tip = (well, rack.tip_length - rack.tip_overlap)
        self._tip_capacity = min(self.max_volume, well.max_volume or self.max_volume)
        self._picked_from = well
        self._ctx.stats["tips_used"] += 1
        self._ctx._motion({self.z_axis: min(pressed + rack.tip_length, SOFT_LIMITS[self.z_axis][1])},
                          Z_SPEED, what=top)
        return self

    def drop_tip(self, location: Any = None, home_after: bool | None = None) -> "InstrumentContext":
        """Eject the tip into the fixed trash (default) or a given well/location, then home
        the plunger (``home_after``, default True)."""
        self._require_tip("drop a tip")
        if location is None:
            well = self.trash_container.wells()[0]
            loc, obj = well.top(), well
        elif isinstance(location, Well):
            if location.parent.is_tiprack:
                loc = location.top(-self._tip_length() / 2)
            else:
                loc = location.top()
            obj = location
        elif isinstance(location, Labware):
            obj = location.wells()[0]
            loc = obj.top()
        elif isinstance(location, Location):
            loc, obj = location, location.labware.object
        else:
            raise LocationError(f"drop_tip: {location!r} is not a well or a location")
        self._ctx._log("drop_tip", f"Dropping tip into {_describe(obj if obj is not None else loc)}", loc.point,
                       mount=self.mount)
        self._move(loc, obj)
        self._plunger(self._plunger_pos["drop_tip"], DROP_TIP_SPEED)
        if isinstance(obj, Well) and obj.parent.is_tiprack:
            obj.parent.return_tips(obj)
        self._tip = None
        self.current_volume = 0.0
        self._ready = False
        if home_after is None or home_after:
            self._ctx._home_axes(self.plunger_axis)
        else:
            self._plunger(self._plunger_pos["bottom"], DROP_TIP_SPEED)
        return self

    def return_tip(self, home_after: bool | None = None) -> "InstrumentContext":
        """Put the tip back where it was picked up."""
        self._require_tip("return a tip")
        if self._picked_from is None:
            raise LocationError("return_tip: the tip's origin is not known")
        self._ctx._log("return_tip", "Returning tip", None, mount=self.mount)
        with self._ctx._nested():
            self.drop_tip(self._picked_from, home_after=home_after)
        return self

    def reset_tipracks(self) -> None:
        """Mark every tip in this pipette's tip racks unused."""
        for rack in self.tip_racks:
            rack.reset()

    # ------------------------------------------------------------ motion
    def move_to(self, location: Any, force_direct: bool = False, minimum_z_height: float | None = None,
                speed: float | None = None, publish: bool = True) -> "InstrumentContext":
        """Move the tip end (or nozzle) to ``location`` (a Location, e.g. ``well.top(2)``)."""
        if isinstance(location, Well):
            location = location.top()
        loc, obj = self._resolve(location, None, "move_to")
        if publish:
            self._ctx._log("move_to", f"Moving to {_describe(loc)}", loc.point, mount=self.mount)
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed <= 0):
            raise ProtocolAPIError(f"speed must be a positive number of mm/s, got {speed!r}")
        self._move(loc, obj, direct=force_direct, speed=speed, minimum_z_height=minimum_z_height)
        return self

    def home(self) -> "InstrumentContext":
        """Home this mount's Z axis and its plunger."""
        self._ctx._log("home", f"Homing {self.mount} mount", None, mount=self.mount)
        self._ctx._home_axes(self.z_axis + self.plunger_axis)
        self._ready = False
        return self

    def home_plunger(self) -> "InstrumentContext":
        self._ctx._home_axes(self.plunger_axis)
        self._ready = False
        return self

    # ------------------------------------------------------------ complex commands
    def transfer(self, volume: Any, source: Any, dest: Any, trash: bool = True, **kwargs: Any) -> "InstrumentContext":
        """Move ``volume`` µL (a number, a list per well, or a (start, end) gradient) from
        each source to each destination (one-to-one, one-to-many or many-to-one).

        Options: ``new_tip`` ``"once"`` (default) | ``"always"`` | ``"never"``;
        ``mix_before`` / ``mix_after`` ``(repetitions, volume)``; ``touch_tip``;
        ``blow_out`` (into ``blowout_location`` ``"trash"`` | ``"source well"`` |
        ``"destination well"``, default the trash); ``air_gap`` µL. Volumes above the
        pipette's capacity are split into equal parts."""
        known = {"new_tip", "mix_before", "mix_after", "touch_tip", "blow_out", "blowout_location",
                 "air_gap", "disposal_volume", "carryover", "gradient", "trash"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ProtocolAPIError(f"transfer: unsupported option(s) {', '.join(unknown)}")
        srcs = _flatten(source if isinstance(source, (list, tuple)) else [source])
        dsts = _flatten(dest if isinstance(dest, (list, tuple)) else [dest])
        if not srcs or not dsts:
            raise LocationError("transfer needs at least one source and one destination")
        if len(srcs) == 1 and len(dsts) > 1:
            srcs = srcs * len(dsts)
        elif len(dsts) == 1 and len(srcs) > 1:
            dsts = dsts * len(srcs)
        elif len(srcs) != len(dsts):
            raise LocationError(f"transfer: {len(srcs)} sources and {len(dsts)} destinations; "
                                "give equal numbers, or one of either")
        n = len(srcs)
        if isinstance(volume, tuple) and len(volume) == 2:
            a, b = (self._volume(v, "transfer") for v in volume)
            vols = [a + (b - a) * i / max(1, n - 1) for i in range(n)]
        elif isinstance(volume, (list, tuple)):
            if len(volume) != n:
                raise VolumeError(f"transfer: {len(volume)} volumes for {n} transfers")
            vols = [self._volume(v, "transfer") for v in volume]
        else:
            vols = [self._volume(volume, "transfer")] * n
        new_tip = kwargs.get("new_tip", "once")
        if new_tip not in ("once", "always", "never"):
            raise ProtocolAPIError(f"new_tip must be 'once', 'always' or 'never', got {new_tip!r}")
        air = self._volume(kwargs.get("air_gap", 0), "air gap") or 0.0
        cap = (self._tip_capacity if self.has_tip else self._capacity_of_next_tip()) - air
        if cap <= 0:
            raise VolumeError("transfer: the air gap leaves no room for liquid")
        mix_before, mix_after = kwargs.get("mix_before"), kwargs.get("mix_after")
        blow = kwargs.get("blow_out", False)
        blow_loc = kwargs.get("blowout_location")
        touch = kwargs.get("touch_tip", False)
        # the OT-2's wording names the first source and destination
        self._ctx._log("transfer", f"Transferring {_fmt_vol(vols[0])} from {_describe(srcs[0])} to {_describe(dsts[0])}",
                       None, mount=self.mount, wells=len(srcs))
        with self._ctx._nested():
            if new_tip == "never":
                self._require_tip("transfer with new_tip='never'")
            elif new_tip == "once" and not self.has_tip:
                self.pick_up_tip()
            for src, dst, vol in zip(srcs, dsts, vols):
                if vol <= 0:
                    continue
                parts = max(1, math.ceil(vol / cap - 1e-9))
                for _ in range(parts):
                    part = vol / parts
                    if new_tip == "always":
                        if self.has_tip:
                            self.drop_tip() if trash else self.return_tip()
                        self.pick_up_tip()
                    if mix_before:
                        self.mix(mix_before[0], mix_before[1], src)
                    self.aspirate(part, src)
                    if touch:
                        self.touch_tip()
                    if air:
                        self.air_gap(air)
                    self.dispense(part + air, dst)
                    if mix_after:
                        self.mix(mix_after[0], mix_after[1], dst)
                    if blow:
                        if blow_loc == "source well":
                            self.blow_out(src)
                        elif blow_loc == "destination well":
                            self.blow_out(dst)
                        else:
                            self.blow_out(self.trash_container.wells()[0])
                    if touch:
                        self.touch_tip()
            if new_tip != "never" and self.has_tip:
                self.drop_tip() if trash else self.return_tip()
        return self

    def _capacity_of_next_tip(self) -> float:
        try:
            well = self._next_tip()
        except OutOfTipsError:
            return self.max_volume
        return min(self.max_volume, well.max_volume or self.max_volume)

    def distribute(self, volume: Any, source: Any, dest: Any, **kwargs: Any) -> "InstrumentContext":
        """One source to many destinations (done as a transfer, one tip)."""
        kwargs.pop("disposal_volume", None)
        return self.transfer(volume, source, dest, **kwargs)

    def consolidate(self, volume: Any, source: Any, dest: Any, **kwargs: Any) -> "InstrumentContext":
        """Many sources to one destination (done as a transfer, one tip)."""
        return self.transfer(volume, source, dest, **kwargs)


class ProtocolContext:
    """What ``run(protocol)`` receives: the deck, loaded labware and pipettes, and the
    run-level commands. ``hardware``: a :class:`~.hardware.Hardware` (default: simulator).
    ``on_command(entry)``: called before each command with a dict (``index``, ``kind``,
    ``text``, ``line``, ``depth``, ``point`` [x, y, z] mm or None, ``volume`` µL ...)."""

    def __init__(self, hardware: Hardware | None = None, *, api_version: Any = DEFAULT_API_VERSION,
                 left_mount_offset: Iterable[float] = (-34.0, 0.0, 0.0), control: RunControl | None = None,
                 on_command: Callable[[dict], None] | None = None, protocol_file: str | None = None,
                 keep_log: int = 100000) -> None:
        self._hw = hardware or SimulatedHardware()
        self.api_version = parse_api_version(api_version)
        self._left_offset = Point(*left_mount_offset)
        self._control = control or RunControl()
        self._on_command = on_command
        self._protocol_file = protocol_file
        self._keep_log = keep_log
        self.commands: list[dict] = []
        self.stats = {"commands": 0, "tips_used": 0, "aspirated_ul": 0.0, "dispensed_ul": 0.0,
                      "duration_s": 0.0, "moves": 0}
        self._depth = 0
        self.deck = Deck()
        self._instruments: dict[str, InstrumentContext | None] = {"left": None, "right": None}
        self._last_instrument: InstrumentContext | None = None
        self._pos: dict[str, float | None] = {ax: None for ax in "XYZABC"}
        self._homed_once = False
        self._lights = False
        trash = deck_definition()["fixed_trash"]
        self.fixed_trash = self._place(labware_definition(trash["load_name"]), trash["slot"], None)
        self.bundled_data: dict = {}
        self.params = None

    # ------------------------------------------------------------ internals
    def _mount_offset(self, mount: str) -> Point:
        return self._left_offset if mount == "left" else Point()

    def _protocol_line(self) -> int | None:
        if self._protocol_file is None:
            return None
        f = sys._getframe(2)
        while f is not None:
            if f.f_code.co_filename == self._protocol_file:
                return f.f_lineno
            f = f.f_back
        return None

    def _log(self, kind: str, text: str, point: Point | None, **data: Any) -> dict:
        self._control.check()
        self.stats["commands"] += 1
        entry = {"index": self.stats["commands"], "kind": kind, "text": text, "depth": self._depth,
                 "line": self._protocol_line(),
                 "point": [round(point.x, 2), round(point.y, 2), round(point.z, 2)] if point is not None else None}
        entry.update({k: v for k, v in data.items() if v is not None})
        if len(self.commands) < self._keep_log:
            self.commands.append(entry)
        if self._on_command is not None:
            self._on_command(entry)
        return entry

    class _Nest:
        def __init__(self, ctx: "ProtocolContext") -> None:
            self.ctx = ctx

        def __enter__(self) -> None:
            self.ctx._depth += 1

        def __exit__(self, *exc: Any) -> None:
            self.ctx._depth -= 1

    def _nested(self) -> "_Nest":
        return ProtocolContext._Nest(self)

    def _ensure_homed(self) -> None:
        if self._homed_once:
            return
        self._homed_once = True
        self._home_axes("XYZABC")

    def _home_axes(self, axes: str) -> None:
        self._homed_once = True
        self._hw.home(axes)
        t = 0.0
        for ax in axes:
            cur = self._pos.get(ax)
            dist = abs(HOMED_POSITION[ax] - cur) if cur is not None else 0.0
            t = max(t, _move_time(dist, MAX_SPEED[ax] / 2, ACCELERATION[ax]))
            self._pos[ax] = HOMED_POSITION[ax]
        self.stats["duration_s"] += t + 1.0

    def _motion(self, targets: dict[str, float], speed: float, what: Any) -> None:
        """Check ``targets`` (machine mm) against the soft limits, send them, track time."""
        self._ensure_homed()
        for ax, val in targets.items():
            lo, hi = SOFT_LIMITS[ax]
            if not (lo - 1e-6 <= val <= hi + 1e-6) or not math.isfinite(val):
                where = f" for {_describe(what)}" if what is not None else ""
                raise UnreachableError(f"out of reach{where}: axis {ax} would go to {val:.2f} mm, "
                                       f"its travel is {lo:g}..{hi:g} mm")
        targets = {ax: min(max(val, SOFT_LIMITS[ax][0]), SOFT_LIMITS[ax][1]) for ax, val in targets.items()}
        speed = min(float(speed), max(MAX_SPEED[ax] for ax in targets))
        t = 0.0
        for ax, val in targets.items():
            cur = self._pos.get(ax)
            if cur is not None:
                t = max(t, _move_time(abs(val - cur), min(speed, MAX_SPEED[ax]), ACCELERATION[ax]))
        self._hw.move(targets, speed)
        self._pos.update(targets)
        self.stats["duration_s"] += t
        self.stats["moves"] += 1

    def _retract_other(self, inst: InstrumentContext) -> None:
        for other in self._instruments.values():
            if other is not None and other is not inst:
                z = self._pos.get(other.z_axis)
                top = SOFT_LIMITS[other.z_axis][1]
                if z is not None and z < top - 1e-6:
                    self._motion({other.z_axis: top}, Z_SPEED, what=None)

    def _place(self, definition: dict, slot: Any, label: str | None) -> Labware:
        name = self.deck.check_free(slot)
        lw = Labware(definition, name, self.deck.slot_origins[name], label)
        dict.__setitem__(self.deck, name, lw)
        return lw

    # ------------------------------------------------------------ loading
    def load_labware(self, load_name: str, location: Any, label: str | None = None,
                     namespace: str | None = None, version: int | None = None, adapter: str | None = None) -> Labware:
        """Put labware ``load_name`` (e.g. ``"corning_96_wellplate_360ul_flat"``) on deck
        slot ``location`` (1-11). Raises for unknown labware, bad or occupied slots."""
        if adapter is not None:
            raise LabwareError("labware adapters are not supported")
        slot = self.deck.check_free(location)
        lw = self._place(labware_definition(load_name), slot, label)
        self._log("load", f"Loading {lw.load_name} in slot {slot}", None)
        return lw

    def load_labware_from_definition(self, labware_def: dict, location: Any, label: str | None = None) -> Labware:
        """Load labware from a definition dict (ours, or the OT-2's labware JSON schema)."""
        if not isinstance(labware_def, dict):
            raise LabwareError("labware definition must be a dict (parsed JSON)")
        defn = labware_def if str(labware_def.get("format", "")).startswith("ot2-edge/labware") \
            else from_ot2_definition(labware_def)
        lw = self._place(defn, location, label)
        self._log("load", f"Loading {lw.load_name} in slot {lw.slot}", None)
        return lw

    def load_instrument(self, instrument_name: str, mount: Any, tip_racks: list[Labware] | None = None,
                        replace: bool = False) -> InstrumentContext:
        """Attach pipette ``instrument_name`` (``"p300_single_gen2"``, ``"p20_single_gen2"``,
        ``"p1000_single_gen2"``) on ``mount`` (``"left"``/``"right"``) using ``tip_racks``."""
        defs = pipette_definitions()
        if instrument_name not in defs:
            close = difflib.get_close_matches(str(instrument_name), list(defs), n=2, cutoff=0.5)
            raise UnknownInstrumentError(f"unknown pipette {instrument_name!r}"
                                         + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                                         + f" (known: {', '.join(sorted(defs))})")
        m = mount_name(mount)
        if m is None:
            raise InstrumentError(f"mount must be 'left' or 'right', got {mount!r}")
        if self._instruments[m] is not None and not replace:
            raise InstrumentError(f"the {m} mount already has {self._instruments[m].name}")
        racks = list(tip_racks or [])
        for r in racks:
            if not isinstance(r, Labware) or not r.is_tiprack:
                raise LabwareError(f"tip_racks must be tip racks, got {r!r}")
        inst = InstrumentContext(self, instrument_name, m, defs[instrument_name], racks)
        self._instruments[m] = inst
        self._log("load", f"Loading {instrument_name} on {m} mount", None)
        return inst

    def load_module(self, module_name: str, location: Any = None, configuration: Any = None):
        raise ProtocolAPIError(f"hardware modules ({module_name!r}) are not supported by this robot server")

    # ------------------------------------------------------------ run-level commands
    @property
    def loaded_labwares(self) -> dict[int, Labware]:
        return {int(k): v for k, v in dict.items(self.deck) if v is not None}

    @property
    def loaded_instruments(self) -> dict[str, InstrumentContext]:
        return {k: v for k, v in self._instruments.items() if v is not None}

    def is_simulating(self) -> bool:
        """True when simulating (``robot-simulate``, upload analysis), False on the robot."""
        return self._hw.simulating

    def home(self) -> None:
        """Home every axis (Z A B C, then X, then Y)."""
        self._log("home", "Homing", None)
        self._home_axes("XYZABC")
        for inst in self._instruments.values():
            if inst is not None:
                inst._ready = False

    def delay(self, seconds: float = 0, minutes: float = 0, msg: str | None = None) -> None:
        """Wait ``minutes`` * 60 + ``seconds`` s (no wait when simulating)."""
        for v in (seconds, minutes):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ProtocolAPIError(f"delay needs a number of seconds/minutes >= 0, got {v!r}")
        total = float(minutes) * 60.0 + float(seconds)
        m, s = divmod(total, 60.0)
        text = f"Delaying for {int(m)} minutes and {round(s, 3)} seconds" + (f". {msg}" if msg else "")
        self._log("delay", text, None, seconds=total)
        self.stats["duration_s"] += total
        if not self.is_simulating():
            self._control.sleep(total)

    def pause(self, msg: str | None = None) -> None:
        """Pause until resumed (``POST /runs/{id}/actions {"action": "resume"}``); no-op when simulating."""
        self._log("pause", "Pausing robot operation" + (f": {msg}" if msg else ""), None)
        if not self.is_simulating():
            self._control.request_pause(msg or "paused by the protocol")
            self._control.check()

    def resume(self) -> None:
        self._control.request_resume()

    def comment(self, msg: str) -> None:
        """Add ``msg`` to the run log."""
        self._log("comment", str(msg), None)

    def set_rail_lights(self, on: bool) -> None:
        self._lights = bool(on)
        self._hw.set_lights(bool(on))

    @property
    def rail_lights_on(self) -> bool:
        return self._lights

    @property
    def max_speeds(self) -> dict:
        return dict(MAX_SPEED)

    def summary(self) -> dict:
        """Counts of the run so far: commands, tips used, µL aspirated/dispensed, moves,
        estimated duration (s)."""
        s = dict(self.stats)
        s["aspirated_ul"] = round(s["aspirated_ul"], 3)
        s["dispensed_ul"] = round(s["dispensed_ul"], 3)
        s["duration_s"] = round(s["duration_s"], 1)
        return s
