"""Points, locations and mounts, with the names OT-2 protocols use (``opentrons.types``).

All coordinates are deck coordinates in mm: origin at the front-left corner of slot 1,
X to the right, Y to the back, Z up from the deck surface.
"""
from __future__ import annotations

import enum
from typing import Any, NamedTuple


class Point(NamedTuple):
    """A point or offset in deck coordinates (mm). Supports ``+``, ``-`` and ``* number``."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0

    def __add__(self, other: Any) -> "Point":            # type: ignore[override]
        if not _is_point(other):
            return NotImplemented
        return Point(self.x + other.x, self.y + other.y, self.z + other.z)

    def __sub__(self, other: Any) -> "Point":
        if not _is_point(other):
            return NotImplemented
        return Point(self.x - other.x, self.y - other.y, self.z - other.z)

    def __mul__(self, k: Any) -> "Point":                # type: ignore[override]
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Point(self.x * k, self.y * k, self.z * k)

    __rmul__ = __mul__

    def __str__(self) -> str:
        return f"({self.x:.2f}, {self.y:.2f}, {self.z:.2f})"


def _is_point(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("x", "y", "z"))


def as_point(obj: Any) -> Point:
    """A :class:`Point` from ours, the real ``opentrons.types.Point`` or an (x, y, z) triple."""
    if isinstance(obj, Point):
        return obj
    if _is_point(obj):
        return Point(float(obj.x), float(obj.y), float(obj.z))
    x, y, z = obj
    return Point(float(x), float(y), float(z))


class Location:
    """A point in deck coordinates (mm) plus what it belongs to (a :class:`Well`, a
    labware, or ``None`` for a free point), as returned by ``well.top()``."""

    __slots__ = ("point", "labware")

    def __init__(self, point: Any, labware: Any) -> None:
        self.point = as_point(point)
        self.labware = LocationLabware(labware)

    def move(self, offset: Any) -> "Location":
        """The same location shifted by ``offset`` (a :class:`Point`, mm)."""
        loc = Location(self.point + as_point(offset), None)
        loc.labware = self.labware
        return loc

    def __iter__(self):          # unpacking: point, labware = location
        return iter((self.point, self.labware.object))

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, Location) and other.point == self.point
                and other.labware.object is self.labware.object)

    def __repr__(self) -> str:
        return f"Location(point={self.point!r}, labware={self.labware.object!r})"


class LocationLabware:
    """What a :class:`Location` refers to; ``as_well()`` / ``as_labware()`` like the OT-2's."""

    __slots__ = ("object",)

    def __init__(self, obj: Any) -> None:
        self.object = obj.object if isinstance(obj, LocationLabware) else obj

    @property
    def is_well(self) -> bool:
        from .labware import Well
        return isinstance(self.object, Well)

    @property
    def is_labware(self) -> bool:
        from .labware import Labware
        return isinstance(self.object, Labware)

    def as_well(self):
        return self.object if self.is_well else None

    def as_labware(self):
        if self.is_labware:
            return self.object
        if self.is_well:
            return self.object.parent
        return None

    def __repr__(self) -> str:
        return repr(self.object)


class Mount(enum.Enum):
    LEFT = "left"
    RIGHT = "right"

    def __str__(self) -> str:
        return self.name


def mount_name(mount: Any) -> str | None:
    """``"left"``/``"right"`` from a string or a ``Mount`` (ours or the real one); else None."""
    value = getattr(mount, "value", mount)
    if isinstance(value, str) and value.lower() in ("left", "right"):
        return value.lower()
    return None
