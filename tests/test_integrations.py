"""Lab equipment on the robot, the parts that run without QEMU: pip into /data with the
image's pip configuration, the servers' isolation from what it installs, the report of
packages left behind by a Python change, and USB drives that cannot be mounted.

pip is Debian's (/usr/bin/python3 -m pip, the same Debian release as the QEMU board's
image) with the image's /etc/pip.conf (PIP_CONFIG_FILE); wheels are built by the tests and
served from a directory (``--no-index --find-links``), as a robot without internet would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wheelmaker import make_wheel

ROOT = Path(__file__).resolve().parents[1]
OT2_PYTHON = ROOT / "overlay" / "usr" / "lib" / "ot2" / "python"
PIP_CONF = ROOT / "overlay" / "etc" / "pip.conf"
DEBIAN_PYTHON = "/usr/bin/python3"

sys.path.insert(0, str(OT2_PYTHON))
import ot2_python_packages  # noqa: E402
import ot2_usbdrive  # noqa: E402


def debian_pip_available() -> bool:
    return subprocess.run([DEBIAN_PYTHON, "-m", "pip", "--version"], capture_output=True).returncode == 0


needs_pip = pytest.mark.skipif(not os.path.exists(DEBIAN_PYTHON) or not debian_pip_available(),
                               reason="Debian's python3-pip is not installed")


def pip_install(userbase: Path, wheels: Path, *names: str) -> subprocess.CompletedProcess:
    """`pip install NAMES` as on the robot: the image's pip.conf, PYTHONUSERBASE, no index."""
    env = dict(os.environ, PIP_CONFIG_FILE=str(PIP_CONF), PYTHONUSERBASE=str(userbase),
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([DEBIAN_PYTHON, "-m", "pip", "install", *names], env=env,
                          capture_output=True, text=True, timeout=120)


def run_python(code: str, *flags: str, userbase: Path | None = None) -> subprocess.CompletedProcess:
    """Runs `code` in an interpreter that imports ot2_environment the way the image's .pth
    does, after PYTHONUSERBASE is set as /etc/ot2/environment sets it (not at start-up).
    The test's own Python 3.11 (it has aiohttp, as the image's has), with `flags`."""
    prelude = (f"import os, sys; os.environ['PYTHONUSERBASE'] = {str(userbase)!r}; "
               f"sys.path.insert(0, {str(OT2_PYTHON)!r}); import ot2_environment; ")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUSERBASE"}
    return subprocess.run([sys.executable, *flags, "-c", prelude + code], env=env,
                          capture_output=True, text=True, timeout=60)


@needs_pip
def test_pip_installs_into_the_user_base_and_python_finds_it(tmp_path):
    wheels, userbase = tmp_path / "wheels", tmp_path / "data-python"
    make_wheel(wheels, "labscale", "1.0", {"labscale/__init__.py": "GRAMS = 12.5\n"})
    done = pip_install(userbase, wheels, "labscale")
    assert done.returncode == 0, done.stderr
    site = Path(userbase, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    assert (site / "labscale" / "__init__.py").exists()
    seen = run_python("import labscale; print(labscale.GRAMS, labscale.__file__)", userbase=userbase)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split()[0] == "12.5" and seen.stdout.split()[1].startswith(str(userbase))


@needs_pip
def test_pip_install_of_a_package_that_does_not_exist_fails_clearly_and_writes_nothing(tmp_path):
    wheels, userbase = tmp_path / "wheels", tmp_path / "data-python"
    make_wheel(wheels, "labscale", "1.0", {"labscale/__init__.py": ""})
    done = pip_install(userbase, wheels, "no-such-instrument-driver")
    assert done.returncode != 0
    assert "No matching distribution found for no-such-instrument-driver" in done.stderr
    assert not userbase.exists() or not any(userbase.rglob("*.py"))


@needs_pip
def test_data_full_during_pip_install_fails_and_keeps_what_was_installed(tmp_path):
    userbase = tmp_path / "data-python"
    userbase.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(userbase)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs as /data here: {mounted.stderr.strip()}")
    try:
        wheels = tmp_path / "wheels"
        make_wheel(wheels, "labscale", "1.0", {"labscale/__init__.py": "GRAMS = 1\n"})
        assert pip_install(userbase, wheels, "labscale").returncode == 0
        # 4 MiB of data that does not compress: more than the 2 MiB "/data" holds.
        make_wheel(wheels, "bigcal", "1.0", {"bigcal/__init__.py": "", "bigcal/table.bin": os.urandom(4 << 20)})
        done = pip_install(userbase, wheels, "bigcal")
        assert done.returncode != 0
        assert "No space left on device" in done.stderr, done.stderr
        still = run_python("import labscale; print(labscale.GRAMS)", userbase=userbase)
        assert still.returncode == 0 and still.stdout.strip() == "1", still.stderr
        broken = run_python("import bigcal, importlib.metadata as m; print(m.version('bigcal'))", userbase=userbase)
        assert broken.returncode != 0     # no half-installed package passes for an installed one
    finally:
        subprocess.run(["umount", str(userbase)], check=True)


@needs_pip
def test_a_package_in_data_shadowing_aiohttp_does_not_reach_the_servers(tmp_path):
    wheels, userbase = tmp_path / "wheels", tmp_path / "data-python"
    make_wheel(wheels, "aiohttp", "99.0", {"aiohttp/__init__.py": "raise ImportError('the shadow from /data')\n"})
    assert pip_install(userbase, wheels, "aiohttp").returncode == 0
    code = "import aiohttp; print(aiohttp.__file__)"
    user = run_python(code, userbase=userbase)
    assert user.returncode != 0 and "the shadow from /data" in user.stderr
    # The servers' interpreters: `python3 -I` (ot2-robot-server.service, ot2-update-server.service).
    server = run_python(code, "-I", userbase=userbase)
    assert server.returncode == 0, server.stderr
    assert not server.stdout.startswith(str(userbase))
    units = ROOT / "overlay" / "usr" / "lib" / "systemd" / "system"
    for unit in ("ot2-robot-server.service", "ot2-update-server.service"):
        assert "ExecStart=/usr/bin/python3 -I -m" in (units / unit).read_text(), unit


def test_packages_installed_for_another_python_are_named_with_the_command_to_reinstall(tmp_path):
    def dist(version_dir: str, name: str, version: str) -> None:
        info = tmp_path / "lib" / version_dir / "site-packages" / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")

    dist("python3.10", "PyVISA", "1.14.1")
    dist("python3.10", "labscale", "1.0")
    dist("python3.11", "current", "2.0")
    stale = ot2_python_packages.stale_packages(tmp_path, (3, 11))
    assert stale == {"3.10": ["labscale==1.0", "PyVISA==1.14.1"]}
    text = ot2_python_packages.report(stale, (3, 11))
    assert "Python 3.10" in text and "Python 3.11" in text
    assert text.splitlines()[-1] == "Install them again with: pip install labscale PyVISA"
    assert ot2_python_packages.stale_packages(tmp_path, (3, 10)) == {"3.11": ["current==2.0"]}
    assert ot2_python_packages.report({}) == ""


def test_the_report_command_writes_and_clears_its_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run" / "python-packages.txt"
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "base"))
    assert ot2_python_packages.main(["--write", str(out)]) == 0 and not out.exists()
    info = tmp_path / "base" / "lib" / "python3.9" / "site-packages" / "old-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: old\nVersion: 1.0\n")
    assert ot2_python_packages.main(["--write", str(out)]) == 1
    assert "pip install old" in out.read_text() and "old==1.0" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["random bytes", "FAT boot sector wiped", "unformatted"])
def test_a_usb_drive_with_a_corrupt_filesystem_is_not_mounted_and_is_reported(tmp_path, damage):
    image = tmp_path / "stick.img"
    mountpoint = tmp_path / "usbdrive"
    mountpoint.mkdir()
    if damage == "random bytes":
        image.write_bytes(os.urandom(4 << 20))
    else:
        subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
        if damage == "FAT boot sector wiped":
            subprocess.run(["mkfs.vfat", "-n", "STICK", str(image)], check=True, capture_output=True)
            assert ot2_usbdrive.probe(str(image))["TYPE"] == "vfat"
            with open(image, "r+b") as f:
                f.write(bytes(512))
    with pytest.raises(ot2_usbdrive.NotMountable) as raised:
        ot2_usbdrive.mount("sdz1", str(image), str(mountpoint))
    message, report = raised.value.args
    assert "no filesystem found" in message
    assert report["device"] == "sdz1" and report["mountpoint"] is None and report["error"] == message
    assert ot2_usbdrive.mounted_source(str(mountpoint)) is None
    ot2_usbdrive.write_report(tmp_path / "state", "sdz1", report)
    assert (tmp_path / "state" / "sdz1.json").exists()


def test_a_filesystem_we_do_not_mount_is_reported_by_name(tmp_path):
    image = tmp_path / "stick.img"
    subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["mkswap", str(image)], check=True, capture_output=True)
    with pytest.raises(ot2_usbdrive.NotMountable, match="filesystem swap is not supported"):
        ot2_usbdrive.mount("sdz", str(image), str(tmp_path))
