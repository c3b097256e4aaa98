#!/usr/bin/env python3
"""Check that Buildroot keeps every option a defconfig of this tree sets.

Kconfig silently drops an option whose dependencies are not met, or whose
name does not exist; "make <name>_defconfig" then succeeds all the same.
For each defconfig this runs that make target of a Buildroot source tree
(offline: Kconfig only, nothing is downloaded or built) into a scratch
output directory and compares the resulting .config with the defconfig,
option by option.

Usage: check-defconfig.py BUILDROOT_SRC [DEFCONFIG_NAME...]
(default: every configs/*_defconfig of this tree). Prints one line per
defconfig, OK or the options that did not survive; exits 1 on any loss.
"""

import os
import re
import subprocess
import sys
import tempfile

TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SET_RE = re.compile(r"^(BR2_\w+)=(.*)$")
UNSET_RE = re.compile(r"^# (BR2_\w+) is not set$")


def parse(path):
    """Return {symbol: value} of a defconfig or .config ('n' for unset)."""
    values = {}
    duplicates = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            m = SET_RE.match(line)
            if m:
                name, value = m.group(1), m.group(2)
            else:
                m = UNSET_RE.match(line)
                if not m:
                    continue
                name, value = m.group(1), "n"
            if name in values:
                duplicates.append(name)
            values[name] = value
    return values, duplicates


def check(buildroot, name):
    """Return a list of problems of configs/<name> (empty when all kept)."""
    wanted, duplicates = parse(os.path.join(TREE, "configs", name))
    problems = ["{} is set twice".format(d) for d in duplicates]
    with tempfile.TemporaryDirectory(prefix="br-check-") as out:
        cmd = ["make", "-s", "-C", buildroot, "O=" + out,
               "BR2_EXTERNAL=" + TREE, name]
        run = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        if run.returncode != 0:
            return problems + ["make {} failed:\n{}".format(name, run.stdout)]
        got, _ = parse(os.path.join(out, ".config"))
    for symbol, value in sorted(wanted.items()):
        actual = got.get(symbol)
        if value == "n":
            if actual not in (None, "n"):
                problems.append("{}: wanted unset, got {}".format(symbol, actual))
        elif actual is None:
            problems.append("{}={}: dropped (unknown symbol or unmet "
                            "dependencies)".format(symbol, value))
        elif actual != value:
            problems.append("{}: wanted {}, got {}".format(symbol, value, actual))
    return problems


def main(argv):
    if len(argv) < 2:
        sys.stderr.write(__doc__)
        return 2
    buildroot = os.path.abspath(argv[1])
    names = argv[2:] or sorted(n for n in os.listdir(os.path.join(TREE, "configs"))
                               if n.endswith("_defconfig"))
    failed = False
    for name in names:
        wanted, _ = parse(os.path.join(TREE, "configs", name))
        problems = check(buildroot, name)
        if problems:
            failed = True
            print("{}: {} of {} options not kept".format(name, len(problems),
                                                         len(wanted)))
            for p in problems:
                print("  " + p)
        else:
            print("{}: OK ({} options kept)".format(name, len(wanted)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
