"""Comparing system versions, to refuse downgrades.

Accepted shapes (a leading ``v`` is ignored, and so are ``+local`` and ``-dirty``):

* release numbers: ``1.4``, ``1.4.0``, ``2.0.0.1`` (``1.4`` == ``1.4.0``);
* PEP 440 pre-releases and dev releases, below the release: ``1.4.0rc1``,
  ``1.4.0-beta.2``, ``1.4.0.dev3``; post-releases above it: ``1.4.0.post1``;
* ``git describe`` output, above its tag: ``1.4.0-12-gabc1234`` (12 commits after 1.4.0);
* any other suffix is a SemVer pre-release label, below the release and ordered by
  its text: ``1.0.0-e2e`` < ``1.0.0``.

Anything else (a bare commit hash such as ``3655de3``) cannot be compared:
:func:`is_downgrade` then answers ``False`` (the signature still decides) and the caller
logs it.  Sources: PEP 440 "Version specifiers" (pre-, post- and dev-release ordering);
SemVer 2.0.0 §11 (pre-release precedence); git-describe(1) (``<tag>-<n>-g<hash>``).
"""

from __future__ import annotations

import re

_GIT_DESCRIBE = re.compile(r"^(?P<tag>.+)-(?P<n>\d+)-g[0-9a-f]{4,40}$")
_RELEASE = re.compile(r"^v?(?P<release>\d+(?:\.\d+)*)(?P<rest>.*)$", re.IGNORECASE)
_SUFFIX = re.compile(r"^[-._]?(?P<kind>dev|a|alpha|b|beta|c|rc|pre|preview|post|rev|r)[-._]?(?P<n>\d*)$",
                     re.IGNORECASE)
_RANK = {"dev": 0, "a": 1, "alpha": 1, "b": 2, "beta": 2, "c": 3, "rc": 3, "pre": 3, "preview": 3,
         "post": 6, "rev": 6, "r": 6}
LABEL, FINAL, DESCRIBED = 4, 5, 7


def version_key(text: str) -> tuple | None:
    """A sort key for ``text`` (see the module docstring), or ``None`` if it is not a version."""
    if not isinstance(text, str):
        return None
    text = text.strip().split("+", 1)[0]
    if text.endswith("-dirty"):
        text = text[: -len("-dirty")]
    commits = 0
    described = _GIT_DESCRIBE.match(text)
    if described:
        text, commits = described["tag"], int(described["n"])
    m = _RELEASE.match(text)
    if not m:
        return None
    release = [int(x) for x in m["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    rest = m["rest"]
    if not rest:
        tail = (FINAL, 0, "")
    elif (s := _SUFFIX.match(rest)) is not None:
        tail = (_RANK[s["kind"].lower()], int(s["n"] or 0), "")
    elif rest[0] in "-.":
        tail = (LABEL, 0, rest[1:])
    else:
        return None
    return (tuple(release), *tail, DESCRIBED if described else 0, commits)


def is_downgrade(new: str, running: str | None) -> bool:
    """Whether version ``new`` is lower than ``running`` (``False`` if either cannot be compared)."""
    a, b = version_key(new), version_key(running) if running else None
    return a is not None and b is not None and a < b
