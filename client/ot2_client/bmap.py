"""Block maps (``bmaptool create``'s XML, format 1.x and 2.x): which blocks of an image hold data.

Only the mapped ranges need writing; every range may carry a checksum (SHA-256 in
format 2, SHA-1 in 1.x) and the file carries a checksum of itself
(``BmapFileChecksum``, computed with its own value replaced by zeros).
"""

from __future__ import annotations

import hashlib
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .errors import UsageError


@dataclass(frozen=True)
class Range:
    first: int  # block numbers, inclusive
    last: int
    checksum: str | None


@dataclass
class Bmap:
    path: str
    image_size: int  # bytes
    block_size: int  # bytes
    blocks: int
    mapped_blocks: int
    checksum_type: str | None
    ranges: list

    @property
    def mapped_bytes(self) -> int:
        return sum(self.byte_range(r)[1] - self.byte_range(r)[0] for r in self.ranges)

    def byte_range(self, r: Range) -> tuple:
        """``(start, end)`` bytes of a range (end exclusive, clipped to the image size)."""
        return r.first * self.block_size, min((r.last + 1) * self.block_size, self.image_size)


def find_bmap(image: str) -> str | None:
    """``IMAGE.bmap`` or ``IMAGE`` with its suffix replaced by ``.bmap``, if it exists."""
    root, _ = os.path.splitext(image)
    for candidate in (image + ".bmap", root + ".bmap"):
        if os.path.isfile(candidate):
            return candidate
    return None


def _int(root, tag: str, path: str) -> int:
    node = root.find(tag)
    try:
        return int(node.text.strip())
    except (AttributeError, ValueError):
        raise UsageError("bad-bmap", f"{path}: missing or bad <{tag}>") from None


def parse(path: str) -> Bmap:
    """Read and check a bmap file; :class:`UsageError` ``bad-bmap`` when it is damaged."""
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise UsageError("bad-bmap", f"{path}: {e.strerror or e}") from None
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as e:
        raise UsageError("bad-bmap", f"{path}: not a bmap file: {e}") from None
    if root.tag != "bmap":
        raise UsageError("bad-bmap", f"{path}: not a bmap file")
    version = root.get("version", "1.0")
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    if major not in (1, 2):
        raise UsageError("bad-bmap", f"{path}: unsupported bmap version {version}")
    ctype_node = root.find("ChecksumType")
    ctype = ctype_node.text.strip() if ctype_node is not None else ("sha1" if major == 1 else "sha256")
    if ctype not in ("sha1", "sha256"):
        raise UsageError("bad-bmap", f"{path}: unsupported checksum type {ctype}")
    node = root.find("BmapFileChecksum")
    if node is None:
        node = root.find("BmapFileSHA1")
    if node is not None and node.text:
        stored = node.text.strip()
        zeroed = raw.replace(stored.encode(), b"0" * len(stored), 1)
        actual = hashlib.new(ctype, zeroed).hexdigest()
        if actual != stored:
            raise UsageError("bad-bmap", f"{path}: the bmap file's own checksum does not match "
                                         f"(calculated {actual}, it says {stored}): the file is damaged")
    bmap = Bmap(path, _int(root, "ImageSize", path), _int(root, "BlockSize", path),
                _int(root, "BlocksCount", path), _int(root, "MappedBlocksCount", path), ctype, [])
    if bmap.block_size <= 0 or bmap.block_size % 512:
        raise UsageError("bad-bmap", f"{path}: bad block size {bmap.block_size}")
    for r in root.iter("Range"):
        m = re.fullmatch(r"\s*(\d+)(?:\s*-\s*(\d+))?\s*", r.text or "")
        if not m:
            raise UsageError("bad-bmap", f"{path}: bad range {r.text!r}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if last < first or last >= bmap.blocks:
            raise UsageError("bad-bmap", f"{path}: range {first}-{last} outside the image")
        bmap.ranges.append(Range(first, last, r.get("chksum") or r.get("sha1")))
    return bmap
