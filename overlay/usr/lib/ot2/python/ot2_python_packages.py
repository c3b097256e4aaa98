"""Packages installed with pip into /data for a Python version other than the image's.

pip installs into ``$PYTHONUSERBASE/lib/python3.X/site-packages`` (/etc/pip.conf), a
directory named after Python's minor version: after an update to an image with another
Python, those packages are no longer on the path (their compiled parts would not load
anyway). This names them, so they can be installed again, instead of an ImportError in the
middle of a protocol. Run at boot by ot2-python-packages.service (the report goes to the
journal and to /run/ot2/python-packages.txt, shown at login), and by hand as
``ot2-python-packages``. Exit status: 0 when nothing needs reinstalling, 1 otherwise.
"""
from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

VERSIONED_SITE = re.compile(r"python(\d+)\.(\d+)$")


def stale_packages(userbase: Path, version: tuple[int, int] = sys.version_info[:2]) -> dict[str, list[str]]:
    """``{"3.10": ["pyvisa==1.14.1", ...]}``: the distributions under ``userbase/lib/python3.X``
    for every X other than ``version``'s, sorted by name; versions without any are left out."""
    found: dict[str, list[str]] = {}
    for lib in sorted((userbase / "lib").glob("python*")):
        match = VERSIONED_SITE.search(lib.name)
        if not match or (int(match[1]), int(match[2])) == tuple(version):
            continue
        dists = {f"{d.metadata['Name']}=={d.version}"
                 for d in metadata.distributions(path=[str(lib / "site-packages")])
                 if d.metadata["Name"]}
        if dists:
            found[f"{match[1]}.{match[2]}"] = sorted(dists, key=str.lower)
    return found


def report(stale: dict[str, list[str]], version: tuple[int, int] = sys.version_info[:2]) -> str:
    """The text shown to users: which packages to install again, and the command; "" if none."""
    if not stale:
        return ""
    lines = []
    for old, dists in stale.items():
        lines.append(f"Packages installed in /data with pip for Python {old} are not used by this "
                     f"system's Python {version[0]}.{version[1]}: {', '.join(dists)}")
    names = sorted({d.split("==")[0] for dists in stale.values() for d in dists}, key=str.lower)
    lines.append(f"Install them again with: pip install {' '.join(names)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``ot2-python-packages [--write FILE]``: prints the report (and writes it to FILE, or
    removes FILE when nothing is stale). Returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    userbase = Path(os.environ.get("PYTHONUSERBASE", "/data/python"))
    text = report(stale_packages(userbase))
    if args[:1] == ["--write"] and len(args) == 2:
        target = Path(args[1])
        if text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        else:
            target.unlink(missing_ok=True)
    sys.stdout.write(text or f"Every package in {userbase} is installed for this Python.\n")
    return 1 if text else 0


if __name__ == "__main__":
    sys.exit(main())
