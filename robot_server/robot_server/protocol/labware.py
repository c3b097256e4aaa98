"""Labware, wells, the deck and the pipette definitions.

Definitions are our own JSON files shipped in ``definitions/`` (package data):

* ``labware/<load_name>.json`` (``ot2-edge/labware/1``): ``display_name``, ``kind``,
  ``dimensions_mm`` [x, y, z], ``well`` (``shape`` circular/rectangular, ``diameter_mm`` or
  ``x_mm``/``y_mm``, ``depth_mm``, ``bottom_z_mm`` above the labware's base, ``volume_ul``),
  ``grid`` (``rows``, ``columns``, ``a1_xy_mm`` centre of A1 from the labware's front-left
  corner, ``column_pitch_mm``, ``row_pitch_mm``: rows go towards the front), optional
  ``tiprack`` (``tip_length_mm``, ``tip_overlap_mm``: how far the nozzle goes into a tip).
  Geometry follows the SBS/ANSI footprint standard (127.76 x 85.48 mm, 9 mm pitch).
* ``pipettes.json``: per pipette model, volume range (µL), plunger positions (mm on the
  plunger axis), nozzle offset from the mount (mm), µL per mm of plunger travel, default
  flow rates (µL/s).
* ``deck_ot2.json``: the slot origins (mm) of the OT-2 deck, 1-11 plus the fixed trash in 12.

A definition in the OT-2's own labware schema (``wells``/``ordering``/``metadata``) can be
converted with :func:`from_ot2_definition` (``load_labware_from_definition``).
"""
from __future__ import annotations

import difflib
import json
import os
import re
import string
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .errors import DeckSlotError, LabwareError, SlotOccupiedError, UnknownLabwareError
from .types import Location, Point

DEFINITIONS = Path(__file__).with_name("definitions")
#: Extra directories searched for labware JSON (ours or the OT-2 schema), ``:``-separated.
LABWARE_PATH_ENV = "OT2_LABWARE_PATH"


# ---------------------------------------------------------------- definitions
@lru_cache(maxsize=None)
def deck_definition() -> dict:
    with open(DEFINITIONS / "deck_ot2.json", encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=None)
def pipette_definitions() -> dict:
    with open(DEFINITIONS / "pipettes.json", encoding="utf-8") as fh:
        return json.load(fh)["pipettes"]


def _labware_dirs() -> list[Path]:
    dirs = [DEFINITIONS / "labware"]
    for part in os.environ.get(LABWARE_PATH_ENV, "").split(os.pathsep):
        if part:
            dirs.append(Path(part))
    return dirs


def labware_names() -> list[str]:
    """Every load name we have a definition for (shipped and on ``OT2_LABWARE_PATH``)."""
    names = set()
    for d in _labware_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


@lru_cache(maxsize=64)
def _read_definition(path: str, mtime: float) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def labware_definition(load_name: str) -> dict:
    """The definition for ``load_name`` in our format. Raises :class:`UnknownLabwareError`
    naming close matches."""
    if not isinstance(load_name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", load_name):
        raise UnknownLabwareError(f"labware load name must be a string like 'corning_96_wellplate_360ul_flat', "
                                  f"got {load_name!r}")
    for d in _labware_dirs():
        p = d / f"{load_name}.json"
        if p.is_file():
            data = _read_definition(str(p), p.stat().st_mtime)
            return data if data.get("format", "").startswith("ot2-edge/labware") else from_ot2_definition(data)
    close = difflib.get_close_matches(load_name, labware_names(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownLabwareError(f"unknown labware {load_name!r}{hint} (known: {len(labware_names())} "
                              f"definitions, see `robot-simulate --list-labware`)")


def from_ot2_definition(defn: dict) -> dict:
    """Convert a labware definition in the OT-2's schema (v2: ``metadata``, ``dimensions``,
    ``wells`` with x/y/z per well, ``ordering`` by column) into our format with an
    explicit ``wells`` list. Raises :class:`LabwareError` if it does not look like one."""
    try:
        params = defn.get("parameters", {})
        dims = defn["dimensions"]
        wells = []
        for column in defn["ordering"]:
            for name in column:
                w = defn["wells"][name]
                entry = {"name": name, "xyz_mm": [w["x"], w["y"], w["z"]], "depth_mm": w["depth"],
                         "volume_ul": w.get("totalLiquidVolume", 0), "shape": w.get("shape", "circular")}
                if entry["shape"] == "circular":
                    entry["diameter_mm"] = w["diameter"]
                else:
                    entry["x_mm"], entry["y_mm"] = w["xDimension"], w["yDimension"]
                wells.append(entry)
        out = {"format": "ot2-edge/labware/1", "load_name": params["loadName"],
               "display_name": defn["metadata"]["displayName"],
               "kind": "tiprack" if params.get("isTiprack") else defn["metadata"].get("displayCategory", "other"),
               "dimensions_mm": [dims["xDimension"], dims["yDimension"], dims["zDimension"]],
               "corner_offset_mm": [defn.get("cornerOffsetFromSlot", {}).get(k, 0.0) for k in "xyz"],
               "wells": wells, "source": "converted from an OT-2 schema definition"}
        if params.get("isTiprack"):
            out["tiprack"] = {"tip_length_mm": params["tipLength"], "tip_overlap_mm": params.get("tipOverlap", 0.0)}
        return out
    except (KeyError, TypeError, AttributeError) as exc:
        raise LabwareError(f"not a labware definition (missing {exc})") from None


def _expand_wells(defn: dict) -> list[dict]:
    """Wells in column order (A1, B1, ... H1, A2 ...), each with ``name`` and ``xyz_mm``
    (centre of the bottom, relative to the labware's front-left-bottom corner)."""
    if "wells" in defn:
        return defn["wells"]
    g, w = defn["grid"], defn["well"]
    ax, ay = g["a1_xy_mm"]
    wells = []
    for c in range(g["columns"]):
        for r in range(g["rows"]):
            e = dict(w)
            e["name"] = f"{string.ascii_uppercase[r]}{c + 1}"
            e["xyz_mm"] = [round(ax + c * g["column_pitch_mm"], 4), round(ay - r * g["row_pitch_mm"], 4),
                           w["bottom_z_mm"]]
            wells.append(e)
    return wells


# ---------------------------------------------------------------- wells and labware
_WELL_NAME = re.compile(r"([A-Z]+)(\d+)$")


class Well:
    """One well (or tip position) of a :class:`Labware`. Coordinates in mm."""

    def __init__(self, parent: "Labware", spec: dict) -> None:
        self.parent = parent
        self.well_name: str = spec["name"]
        self._rel = Point(*spec["xyz_mm"])        # bottom centre, relative to the labware
        self.depth: float = float(spec["depth_mm"])
        self.max_volume: float = float(spec.get("volume_ul", 0.0))
        self.shape: str = spec.get("shape", "circular")
        self.diameter: float | None = spec.get("diameter_mm")
        self.length: float | None = spec.get("x_mm", self.diameter)
        self.width: float | None = spec.get("y_mm", self.diameter)
        self.has_tip: bool = parent.is_tiprack
        m = _WELL_NAME.match(self.well_name)
        self._row, self._col = (m.group(1), m.group(2)) if m else (self.well_name, "1")

    @property
    def display_name(self) -> str:
        return f"{self.well_name} of {self.parent}"

    def _bottom_point(self) -> Point:
        return self.parent._origin() + self._rel

    def top(self, z: float = 0.0) -> Location:
        """The centre of the well's rim, ``z`` mm above it (negative: below)."""
        b = self._bottom_point()
        return Location(Point(b.x, b.y, b.z + self.depth + z), self)

    def bottom(self, z: float = 0.0) -> Location:
        """The centre of the well's bottom, ``z`` mm above it."""
        b = self._bottom_point()
        return Location(Point(b.x, b.y, b.z + z), self)

    def center(self) -> Location:
        """The centre of the well's volume (half its depth)."""
        b = self._bottom_point()
        return Location(Point(b.x, b.y, b.z + self.depth / 2.0), self)

    def from_center_cartesian(self, x: float, y: float, z: float) -> Point:
        """A point relative to the centre, ``x``/``y``/``z`` as fractions of the half sizes."""
        c = self.center().point
        return Point(c.x + x * (self.length or 0) / 2, c.y + y * (self.width or 0) / 2, c.z + z * self.depth / 2)

    def __str__(self) -> str:
        return self.display_name

    def __repr__(self) -> str:
        return self.display_name


class Labware:
    """A labware on a deck slot: ``labware["A1"]``, ``wells()``, ``rows()``, ``columns()``.
    Coordinates in mm; the labware's origin is its slot's front-left corner (plus an
    offset set with :meth:`set_offset`)."""

    def __init__(self, definition: dict, slot: str, slot_origin: Point, label: str | None = None) -> None:
        self._definition = definition
        self.load_name: str = definition["load_name"]
        self._display = label or definition["display_name"]
        self.slot = slot
        self._slot_origin = slot_origin
        self._corner = Point(*definition.get("corner_offset_mm", (0.0, 0.0, 0.0)))
        self._offset = Point()
        tr = definition.get("tiprack")
        self.is_tiprack = bool(tr)
        self.tip_length: float = float(tr["tip_length_mm"]) if tr else 0.0
        self.tip_overlap: float = float(tr.get("tip_overlap_mm", 0.0)) if tr else 0.0
        self.height: float = float(definition["dimensions_mm"][2])
        self._wells = [Well(self, spec) for spec in _expand_wells(definition)]
        self._by_name = {w.well_name: w for w in self._wells}
        rows: dict[str, list[Well]] = {}
        cols: dict[str, list[Well]] = {}
        for w in self._wells:
            rows.setdefault(w._row, []).append(w)
            cols.setdefault(w._col, []).append(w)
        self._rows = {k: sorted(v, key=lambda w: int(w._col) if w._col.isdigit() else 0)
                      for k, v in sorted(rows.items(), key=lambda kv: (len(kv[0]), kv[0]))}
        self._cols = cols

    # -- names
    @property
    def name(self) -> str:
        return self.load_name

    @property
    def uri(self) -> str:
        return f"ot2-edge/{self.load_name}/{self._definition.get('version', 1)}"

    @property
    def parent(self) -> str:
        return self.slot

    @property
    def parameters(self) -> dict:
        return {"loadName": self.load_name, "isTiprack": self.is_tiprack,
                "tipLength": self.tip_length, "tipOverlap": self.tip_overlap}

    def __str__(self) -> str:
        return f"{self._display} on slot {self.slot}"

    __repr__ = __str__

    # -- geometry
    def _origin(self) -> Point:
        return self._slot_origin + self._corner + self._offset

    def set_offset(self, x: float, y: float, z: float) -> None:
        """Shift every well of this labware by (x, y, z) mm (labware position check)."""
        self._offset = Point(float(x), float(y), float(z))

    @property
    def highest_z(self) -> float:
        """The top of the labware above the deck (mm)."""
        return self._origin().z + self.height

    # -- wells
    def __getitem__(self, name: str) -> Well:
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise LabwareError(f"{self} has no well {name!r} (wells {self._wells[0].well_name}"
                               f"..{self._wells[-1].well_name})") from None

    def well(self, idx: int | str) -> Well:
        if isinstance(idx, int):
            return self.wells()[idx]
        return self[idx]

    def wells(self, *names: str) -> list[Well]:
        """All wells in column order (A1, B1, ... H1, A2, ...), or just the named ones."""
        if names:
            return [self[n] for n in names]
        return list(self._wells)

    def wells_by_name(self) -> dict[str, Well]:
        return dict(self._by_name)

    well_by_name = wells_by_name

    def rows(self, *idx: int | str) -> list[list[Well]]:
        """Wells by row: ``rows()[0]`` is row A (A1..A12)."""
        rows = [list(v) for v in self._rows.values()]
        return [rows[i] if isinstance(i, int) else self._rows[i] for i in idx] if idx else rows

    def rows_by_name(self) -> dict[str, list[Well]]:
        return {k: list(v) for k, v in self._rows.items()}

    def columns(self, *idx: int | str) -> list[list[Well]]:
        """Wells by column: ``columns()[0]`` is column 1 (A1..H1)."""
        cols = [list(v) for v in self._cols.values()]
        return [cols[i] if isinstance(i, int) else self._cols[str(i)] for i in idx] if idx else cols

    def columns_by_name(self) -> dict[str, list[Well]]:
        return {k: list(v) for k, v in self._cols.items()}

    def top(self, z: float = 0.0) -> Location:
        o = self._origin()
        return Location(Point(o.x, o.y, o.z + self.height + z), self)

    # -- tips
    def next_tip(self, num_tips: int = 1, starting_tip: Well | None = None) -> Well | None:
        """The first well that still has a tip (column order), from ``starting_tip`` on."""
        started = starting_tip is None
        for w in self._wells:
            if not started and w is starting_tip:
                started = True
            if started and w.has_tip:
                return w
        return None

    def use_tips(self, start_well: Well, num_channels: int = 1) -> None:
        start_well.has_tip = False

    def return_tips(self, start_well: Well, num_channels: int = 1) -> None:
        start_well.has_tip = True

    def reset(self) -> None:
        """Refill a tip rack."""
        for w in self._wells:
            w.has_tip = self.is_tiprack


class Deck(dict):
    """Slot name (``"1"``..``"12"``) -> :class:`Labware`. ``deck[3]`` works too."""

    def __init__(self) -> None:
        super().__init__()
        self.slot_origins = {k: Point(*v) for k, v in deck_definition()["slots"].items()}

    @staticmethod
    def slot_name(slot: Any) -> str:
        if isinstance(slot, bool) or not isinstance(slot, (int, str)):
            raise DeckSlotError(f"deck slot must be a number 1-11, got {slot!r}")
        name = str(slot).strip()
        if name not in deck_definition()["slots"]:
            raise DeckSlotError(f"no deck slot {slot!r}: the OT-2 deck has slots 1-11 (12 is the fixed trash)")
        return name

    def __getitem__(self, slot: Any):
        return super().get(self.slot_name(slot))

    def check_free(self, slot: Any) -> str:
        name = self.slot_name(slot)
        if dict.get(self, name) is not None:
            raise SlotOccupiedError(f"slot {name} is already occupied by {dict.get(self, name)}")
        return name

    def highest_z(self, exclude: Iterable = ()) -> float:
        ex = set(map(id, exclude))
        return max((lw.highest_z for lw in self.values() if lw is not None and id(lw) not in ex), default=0.0)
