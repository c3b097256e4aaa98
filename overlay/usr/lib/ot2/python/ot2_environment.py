"""Gives every Python process on the robot the robot's environment (/etc/ot2/environment).

Imported at start-up through ``ot2-environment.pth`` (written into Python's site directory
by board/common/post-build.sh), so that scripts run over SSH without a login shell,
notebooks, and protocol runs see the same defaults as login shells. A variable already set
in the process' environment wins.
"""
import os

ENVIRONMENT_FILE = "/etc/ot2/environment"


def apply(path: str = ENVIRONMENT_FILE) -> None:
    """Sets each ``KEY=VALUE`` line of ``path`` that is not already set; a missing file is no error."""
    try:
        with open(path) as lines:
            for line in lines:
                key, sep, value = line.strip().partition("=")
                if sep and key and not key.startswith("#"):
                    os.environ.setdefault(key, value)
    except OSError:
        pass


apply()
