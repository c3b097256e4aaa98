"""Gives every Python process on the robot the robot's environment (/etc/ot2/environment).

Imported at start-up through ``ot2-environment.pth`` (written into Python's site directory
by board/common/post-build.sh), so that scripts run over SSH without a login shell,
notebooks, and protocol runs see the same defaults as login shells. A variable already set
in the process' environment wins.

It also puts the packages installed with ``pip install`` into ``/data`` (the user site of
``PYTHONUSERBASE``) on ``sys.path``, where Python puts a user site: before the system's
packages. Interpreters started with ``-s`` or ``-I`` (the servers) never get it, so a
package in ``/data`` cannot replace one the servers import.
"""
import os
import site
import sys
import sysconfig

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


def user_site(userbase: str) -> str:
    """The site directory pip installs into with ``--user`` under ``userbase`` (this Python's
    version in its name: ``<userbase>/lib/python3.X/site-packages``)."""
    return sysconfig.get_path("purelib", f"{os.name}_user", vars={"userbase": userbase})


def add_user_site() -> None:
    """Puts ``PYTHONUSERBASE``'s site directory on ``sys.path`` before the system's packages.

    Python does this itself when ``PYTHONUSERBASE`` is set before it starts; this covers
    processes that get it only from :func:`apply` (services, notebooks). Nothing happens
    under ``-s``/``-I`` (``sys.flags.no_user_site``) or when the directory does not exist.
    ``site.USER_BASE``/``USER_SITE`` are set too, which pip reads for user installs.
    """
    userbase = os.environ.get("PYTHONUSERBASE")
    if sys.flags.no_user_site or not userbase:
        return
    path = user_site(userbase)
    site.USER_BASE, site.USER_SITE = userbase, path
    if path in sys.path or not os.path.isdir(path):
        return
    system = [i for i, p in enumerate(sys.path) if p.endswith(("site-packages", "dist-packages"))]
    sys.path.insert(system[0] if system else len(sys.path), path)
    site.addsitedir(path)      # its .pth files (already on the path, so not appended again)


apply()
add_user_site()
