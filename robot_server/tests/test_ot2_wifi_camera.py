"""``/wifi/configure`` and ``/camera/picture`` on a robot without Wi-Fi or camera support,
answered as the OT-2 answers when joining fails or its camera cannot be read
(Opentrons/opentrons, robot-server/robot_server/service/legacy/routers/networking.py and
camera.py), over real HTTP on loopback."""
from __future__ import annotations

import pytest

from test_ot2_api import validate

PSK = "correct horse battery"


@pytest.fixture
def sysfs(shared_robot, tmp_path):
    """The robot reads its network interfaces from ``tmp_path`` (laid out as sysfs) for one test."""
    real = shared_robot.service.ot2.net_class
    shared_robot.service.ot2.net_class = tmp_path
    yield tmp_path
    shared_robot.service.ot2.net_class = real


def test_wifi_configure_without_a_wifi_interface(shared_robot, sysfs):
    (sysfs / "eth0").mkdir()
    status, body = shared_robot.post("/wifi/configure", {"ssid": "lab", "securityType": "wpa-psk", "psk": PSK})
    assert status == 401, body
    validate("legacy_error", body)
    assert body["errorCode"] == "4000" and "'lab'" in body["message"] and "no Wi-Fi interface" in body["message"]
    assert PSK not in body["message"]
    assert shared_robot.get("/wifi/list")[1] == {"list": []}


def test_wifi_configure_with_an_interface_the_image_cannot_drive(shared_robot, sysfs):
    (sysfs / "wlan0" / "wireless").mkdir(parents=True)
    status, body = shared_robot.post("/wifi/configure", {"ssid": "lab", "hidden": True})
    assert status == 401 and "wlan0 is present" in body["message"], body
    assert shared_robot.get("/networking/status")[1]["interfaces"]["wlan0"]["type"] == "wifi"


def test_wifi_configure_on_this_host(shared_robot):
    """Whatever interfaces this machine has, the answer is a clear 401, never a 5xx."""
    status, body = shared_robot.post("/wifi/configure", {"ssid": "lab"})
    assert status == 401 and "Could not join Wi-Fi network 'lab'" in body["message"], body


@pytest.mark.parametrize("body, text", [
    ({}, "ssid"),
    ({"ssid": 5}, "ssid"),
    ({"ssid": "lab", "securityType": "wep"}, "securityType"),
    ({"ssid": "lab", "securityType": "wpa-psk"}, "psk must be specified"),
    ({"ssid": "lab", "securityType": "wpa-eap"}, "eapConfig must be specified"),
    ({"ssid": "lab", "psk": PSK, "eapConfig": {"eapType": "peap/mschapv2"}}, "Cannot deduce security type"),
    ({"ssid": "lab", "eapConfig": {"identity": "me"}}, "eapType must be defined"),
    ({"ssid": "lab", "bssid": "x"}, "unknown field"),
])
def test_wifi_configure_bad_input(shared_robot, body, text):
    status, reply = shared_robot.post("/wifi/configure", body)
    assert status == 422 and text in reply["message"], reply
    validate("legacy_error", reply)


def test_camera_picture_without_a_camera(shared_robot):
    status, body = shared_robot.post("/camera/picture")
    assert status == 500, body
    validate("legacy_error", body)
    assert body["message"].startswith("Failed to communicate with camera") and body["errorCode"] == "1000"


def test_openapi_describes_wifi_and_camera(shared_robot):
    paths = shared_robot.get("/openapi.json")[1]["paths"]
    configure = paths["/wifi/configure"]["post"]
    assert configure["requestBody"]["content"]["application/json"]["schema"]["required"] == ["ssid"]
    assert {"201", "401", "422"} <= set(configure["responses"])
    assert "500" in paths["/camera/picture"]["post"]["responses"]
    assert "post" in paths["/settings/reset"]
