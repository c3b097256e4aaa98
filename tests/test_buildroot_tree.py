"""Static checks of the Buildroot external tree (offline, no Buildroot needed).

- every package directory has its .mk, included by external.mk; every
  target package also has its Config.in, sourced from the top Config.in
  (host-only packages, the build tools, have none);
- every downloaded package has a .hash with the sha256 of its source and
  of each license file, and downloads from $(OT2_PYPI_PACKAGES);
- python-opentrons, python-opentrons-shared-data and the robot server's
  pyproject.toml name one opentrons version;
- every Config.in parses with kconfiglib, the Buildroot symbols it uses
  being stubbed (the stubs are derived from the files themselves);
- every symbol of this tree that a defconfig names exists, and can be set;
- every $(BR2_EXTERNAL_OT2_PATH)/... path a defconfig names exists.

The real resolution against the pinned Buildroot is mk/check-defconfig.py
(make br-check).
"""

import glob
import os
import re
import subprocess

import kconfiglib
import pytest

TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTERNAL_NAME = "OT2"
PATH_VAR = "BR2_EXTERNAL_{}_PATH".format(EXTERNAL_NAME)

PACKAGES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(TREE, "package", "*"))
                  if os.path.isdir(p))
EVAL_RE = re.compile(r"^\$\(eval \$\(([\w-]+)\)\)$", re.M)
DEFCONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(TREE, "configs", "*_defconfig")))

# Files of the lead's part of the tree that a defconfig may name before they are written.
LEAD_OWNED = ("board/common/post-build.sh", "board/common/post-image.sh", "board/qemu/", "overlay")

SYMBOL_RE = re.compile(r"\bBR2_\w+")
CONFIG_RE = re.compile(r"^\s*(?:menu)?config\s+(BR2_\w+)", re.M)
SOURCE_RE = re.compile(r'^\s*source\s+"([^"]+)"', re.M)
DEFCONFIG_LINE_RE = re.compile(r"^(BR2_\w+)=(.*)$|^# (BR2_\w+) is not set$")


def read(path):
    with open(path) as f:
        return f.read()


def package_symbol(package):
    return "BR2_PACKAGE_" + package.upper().replace("-", "_")


def package_prefix(package):
    return package.upper().replace("-", "_")


def package_mk(package):
    return read(os.path.join(TREE, "package", package, package + ".mk"))


def infrastructures(package):
    """The package infrastructures the .mk instantiates, e.g. ["python-package"]."""
    return EVAL_RE.findall(package_mk(package))


def is_host_only(package):
    return all(i.startswith("host-") for i in infrastructures(package))


def mk_variable(package, name):
    """The value of <PREFIX>_<name> in the package's .mk (None if not set)."""
    m = re.search(r"^{}_{} = (.+)$".format(package_prefix(package), name), package_mk(package), re.M)
    return m.group(1) if m else None


TARGET_PACKAGES = [p for p in PACKAGES if not is_host_only(p)]
DOWNLOADED_PACKAGES = [p for p in PACKAGES if mk_variable(p, "SITE_METHOD") != "local"]


def config_in_files():
    """The top Config.in and every file it sources, recursively."""
    seen = []
    todo = [os.path.join(TREE, "Config.in")]
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.append(path)
        for target in SOURCE_RE.findall(read(path)):
            todo.append(expand(target))
    return seen


def expand(path):
    return path.replace("$" + PATH_VAR, TREE).replace("$(" + PATH_VAR + ")", TREE)


def parse_defconfig(name):
    values = {}
    for line in read(os.path.join(TREE, "configs", name)).splitlines():
        m = DEFCONFIG_LINE_RE.match(line.strip())
        if m:
            if m.group(1):
                values[m.group(1)] = m.group(2)
            else:
                values[m.group(3)] = "n"
    return values


def tree_symbols():
    symbols = set()
    for path in config_in_files():
        symbols.update(CONFIG_RE.findall(read(path)))
    return symbols


def load_kconfig(tmp_path, with_stubs=True):
    """Parse the tree's Config.in under a wrapper that stubs Buildroot's symbols."""
    defined = tree_symbols()
    used = set()
    for path in config_in_files():
        for line in read(path).splitlines():
            if re.match(r"^\s*(select|depends on|imply|default|if|visible if)\b", line) \
                    or re.match(r"^\s*(bool|tristate|string|int|hex)\s+\".*\"\s+if\b", line):
                used.update(SYMBOL_RE.findall(line.split("#", 1)[0]))
    stubs = sorted(used - defined) if with_stubs else []
    wrapper = ["mainmenu \"stub\""]
    for symbol in stubs:
        wrapper += ["config " + symbol, "\tbool", "\tdefault y"]
    wrapper.append('source "$' + PATH_VAR + '/Config.in"')
    kconfig = tmp_path / "Kconfig"
    kconfig.write_text("\n".join(wrapper) + "\n")
    os.environ[PATH_VAR] = TREE
    os.environ["KCONFIG_WARN_UNDEF"] = "y"
    return kconfiglib.Kconfig(str(kconfig), warn_to_stderr=False), stubs


def test_external_desc():
    desc = read(os.path.join(TREE, "external.desc"))
    assert re.search(r"^name: {}$".format(EXTERNAL_NAME), desc, re.M)
    assert re.search(r"^desc: \S", desc, re.M)


def test_there_are_packages():
    for package in ("python-ot2-update-server", "python-ot2-robot-server", "python-opentrons",
                    "python-opentrons-shared-data", "python-aionotify"):
        assert package in TARGET_PACKAGES
    for package in ("python-hatch-vcs-tunable", "python-hatch-dependency-coversion"):
        assert package in PACKAGES and is_host_only(package)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_has_mk_and_config_in(package):
    directory = os.path.join(TREE, "package", package)
    assert os.path.isfile(os.path.join(directory, package + ".mk"))
    assert infrastructures(package), "{}.mk instantiates no package infrastructure".format(package)
    config_in = os.path.join(directory, "Config.in")
    if is_host_only(package):
        assert not os.path.exists(config_in), "a host-only package has no Config.in"
    else:
        assert re.search(r"^config {}$".format(package_symbol(package)), read(config_in), re.M)
    # Buildroot's naming: every variable of the .mk starts with the package's prefix.
    prefix = package_prefix(package) + "_"
    for m in re.finditer(r"^(\w+)\s*[+:?]?=", package_mk(package), re.M):
        assert m.group(1).startswith((prefix, "HOST_" + prefix)), m.group(1)


@pytest.mark.parametrize("package", DOWNLOADED_PACKAGES)
def test_downloaded_package_hashes_source_and_licenses(package):
    version = mk_variable(package, "VERSION")
    source = mk_variable(package, "SOURCE")
    version_ref = "$({}_VERSION)".format(package_prefix(package))
    assert version and version_ref in source
    source = source.replace(version_ref, version)
    hashes = {}
    for line in read(os.path.join(TREE, "package", package, package + ".hash")).splitlines():
        if line and not line.startswith("#"):
            kind, digest, name = line.split()
            assert kind == "sha256" and re.fullmatch(r"[0-9a-f]{64}", digest), line
            hashes[name] = digest
    licenses = (mk_variable(package, "LICENSE_FILES") or "").split()
    assert licenses, "{} names no license file".format(package)
    assert sorted(hashes) == sorted([source] + licenses)
    # PyPI's address is written once, in external.mk.
    assert mk_variable(package, "SITE").startswith("$(OT2_PYPI_PACKAGES)/")


def test_pypi_site_comes_from_buildroot():
    external = read(os.path.join(TREE, "external.mk"))
    assert re.search(r"^OT2_PYPI_PACKAGES = .*\$\(PYTHON_SETUPTOOLS_SITE\)", external, re.M)
    # Defined before the packages that use it are included.
    assert external.index("OT2_PYPI_PACKAGES =") < external.index("include ")


def test_opentrons_versions_agree():
    version = mk_variable("python-opentrons", "VERSION")
    assert mk_variable("python-opentrons-shared-data", "VERSION") == version
    pyproject = read(os.path.join(TREE, "robot_server", "pyproject.toml"))
    assert re.findall(r'"opentrons==([^"]+)"', pyproject) == [version]


@pytest.mark.parametrize("package", TARGET_PACKAGES)
def test_package_is_sourced_from_top_config_in(package):
    wanted = os.path.join(TREE, "package", package, "Config.in")
    assert wanted in config_in_files()
    assert '"$' + PATH_VAR + '/package/' + package + '/Config.in"' in read(os.path.join(TREE, "Config.in"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_is_included_by_external_mk(package):
    wanted = os.path.join(TREE, "package", package, package + ".mk")
    included = set()
    for m in re.finditer(r"^-?include\s+(.+)$", read(os.path.join(TREE, "external.mk")), re.M):
        spec = m.group(1).strip()
        w = re.fullmatch(r"\$\(sort \$\(wildcard (.+)\)\)|\$\(wildcard (.+)\)", spec)
        for pattern in (w.group(1) or w.group(2)).split() if w else spec.split():
            included.update(glob.glob(expand(pattern)))
    assert wanted in included


def test_config_in_files_parse_with_kconfiglib(tmp_path):
    kconf, stubs = load_kconfig(tmp_path)
    assert kconf.warnings == []
    for symbol in tree_symbols():
        assert symbol in kconf.syms and kconf.syms[symbol].nodes
    # The stubs are what the files reference: without them kconfiglib sees undefined symbols.
    assert "BR2_PACKAGE_PYTHON3" in stubs
    bare, _ = load_kconfig(tmp_path, with_stubs=False)
    assert any("undefined symbol" in w for w in bare.warnings)


@pytest.mark.parametrize("package", TARGET_PACKAGES)
def test_package_can_be_enabled(tmp_path, package):
    kconf, _ = load_kconfig(tmp_path)
    symbol = kconf.syms[package_symbol(package)]
    assert symbol.set_value(2)
    assert symbol.tri_value == 2
    assert symbol.nodes[0].help, "Config.in of {} has no help text".format(package)


@pytest.mark.parametrize("defconfig", DEFCONFIGS)
def test_defconfig_symbols_of_this_tree_exist(defconfig):
    ours = tree_symbols()
    prefixes = tuple(package_symbol(p) for p in TARGET_PACKAGES) + ("BR2_OT2_", "BR2_PACKAGE_PYTHON_OT2_")
    named = parse_defconfig(defconfig)
    for symbol in named:
        if symbol.startswith(prefixes):
            assert symbol in ours, "{} names {}, which this tree does not define".format(defconfig, symbol)
    # Both boards run both servers, and the robot server's protocol engine.
    for package in PACKAGES:
        if package.startswith("python-ot2-") or package == "python-opentrons":
            assert named.get(package_symbol(package)) == "y", (defconfig, package)


@pytest.mark.parametrize("defconfig", DEFCONFIGS)
def test_defconfig_paths_exist(defconfig):
    missing = []
    for symbol, value in parse_defconfig(defconfig).items():
        for rel in re.findall(r"\$\(" + PATH_VAR + r"\)/([^\s\"]+)", value):
            if os.path.exists(os.path.join(TREE, rel)):
                continue
            if rel.startswith(LEAD_OWNED):
                continue
            missing.append("{}: {}".format(symbol, rel))
    assert missing == []


@pytest.mark.parametrize("defconfig", DEFCONFIGS)
def test_defconfig_post_script_args_name_a_board(defconfig):
    values = parse_defconfig(defconfig)
    board = values["BR2_ROOTFS_POST_SCRIPT_ARGS"].strip('"')
    assert os.path.isdir(os.path.join(TREE, "board", board))
    assert "board/{}/rootfs-overlay".format(board) in values["BR2_ROOTFS_OVERLAY"]
    assert values.get("BR2_TARGET_ROOTFS_SQUASHFS") == "y"
    assert "BR2_TARGET_ROOTFS_EXT2" not in values or values["BR2_TARGET_ROOTFS_EXT2"] == "n"
    assert values.get("BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW") == "n"
    assert values.get("BR2_LINUX_KERNEL_INSTALL_TARGET") == "y"
    assert values.get("BR2_INIT_SYSTEMD") == "y"


@pytest.mark.parametrize("package", [p for p in PACKAGES if p not in DOWNLOADED_PACKAGES])
def test_local_python_package_site_is_a_setuptools_project(package):
    site = mk_variable(package, "SITE")
    project = expand(site.replace("$(" + PATH_VAR + ")", "$" + PATH_VAR))
    pyproject = read(os.path.join(project, "pyproject.toml"))
    if mk_variable(package, "SETUP_TYPE") == "setuptools":
        assert "setuptools.build_meta" in pyproject


def test_robot_server_brings_the_protocol_engine(tmp_path):
    kconf, _ = load_kconfig(tmp_path)
    assert kconf.syms["BR2_PACKAGE_PYTHON_OT2_ROBOT_SERVER"].set_value(2)
    for package in ("python-opentrons", "python-opentrons-shared-data", "python-aionotify"):
        assert kconf.syms[package_symbol(package)].tri_value == 2, package


def test_pi_boot_files(tmp_path):
    board = os.path.join(TREE, "board", "ot2")
    config = read(os.path.join(board, "config.txt"))
    for line in ("kernel=u-boot.bin", "enable_uart=1", "dtoverlay=disable-bt"):
        assert re.search("^" + line + "$", config, re.M)
    rendered = tmp_path / "boot.cmd"
    subprocess.run([os.path.join(TREE, "board", "common", "render-boot-script.sh"), "ot2", str(rendered)],
                   check=True)
    script = rendered.read_text()
    for word in ("uboot.env", "uboot.env.bak", "sqfsload mmc 0:", "bootz", "ot2.slot=", "rootfstype=squashfs",
                 "root=/dev/mmcblk0p${ot2_part}", "${fdt_addr}", "env import -c", "env export -c -s"):
        assert word in script
    assert "setexpr" not in re.sub(r"#.*", "", script)
    fragment = read(os.path.join(board, "uboot.fragment"))
    assert "CONFIG_CMD_SQUASHFS=y" in fragment
