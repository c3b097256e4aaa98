"""``update-server boot-check``: confirm healthy boots, reboot failed trial boots."""

from __future__ import annotations

import dataclasses
import socket

from test_install import install
from conftest import make_image
from update_server import bootcheck
from update_server.bootmodel import BootEnv


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/health"


def check_config(rig, urls, timeout=5.0):
    return dataclasses.replace(rig.config, health_urls=urls, boot_check_timeout=timeout,
                               boot_check_interval=0.1)


def trial_boot(rig, keys):
    token, _ = install(rig, keys["trusted"], make_image(100_000), version="4.0.0")
    assert rig.client.post(f"/server/update/{token}/commit").status == 200
    rig.stop()
    assert rig.bootloader_boots() == "B"
    rig.start()
    assert rig.client.get("/health").body["slots"]["B"]["state"] == "trial"


def test_healthy_trial_is_confirmed(rig, keys):
    trial_boot(rig, keys)
    url = f"http://127.0.0.1:{rig.server.port}/health"
    assert bootcheck.run(check_config(rig, [url, url])) == 0
    h = rig.client.get("/health").body
    assert h["slots"]["B"]["state"] == "good" and h["slots"]["B"]["tries_left"] == 3
    assert not rig.reboot_marker.exists()


def test_unhealthy_trial_reboots(rig, keys):
    trial_boot(rig, keys)
    url = f"http://127.0.0.1:{rig.server.port}/health"
    assert bootcheck.run(check_config(rig, [url, closed_port_url()], timeout=0.5)) == 2
    assert rig.reboot_marker.exists()
    env = rig.env()
    assert env.tries["B"] == 2 and env.order == ("B", "A")  # tries keep running out


def test_unhealthy_confirmed_slot_does_not_reboot(rig):
    assert bootcheck.run(check_config(rig, [closed_port_url()], timeout=0.3)) == 1
    assert not rig.reboot_marker.exists()
    assert rig.env() == BootEnv(("A", "B"), {"A": 3, "B": 3})


def test_healthy_confirmed_slot_gets_tries_back(rig):
    rig.stop()
    assert [rig.bootloader_boots() for _ in range(2)] == ["A", "A"]
    assert rig.env() == BootEnv(("A", "B"), {"A": 1, "B": 3})
    rig.start()
    url = f"http://127.0.0.1:{rig.server.port}/health"
    assert bootcheck.run(check_config(rig, [url])) == 0
    assert rig.env().tries["A"] == 3
