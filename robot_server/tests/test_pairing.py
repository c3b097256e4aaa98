"""Pairing with the front button (``docs/security.md``, "Pairing"): the real server over
loopback (not trusted here: the client is a LAN host), the button pressed and its light
watched through the simulated GPIO backend, tokens checked in the real token file."""
from __future__ import annotations

import time

import pytest

from conftest import start_robot, stop_robot
from test_channel import ChannelClient, lease_of, wait_for
from update_server.tokens import TokenStore, tokens_path

STEADY = {"red": False, "green": False, "blue": True}   # the button light of an idle robot


@pytest.fixture
def lan_robot(tmp_path):
    r = start_robot(tmp_path, trusted_interfaces=["usb*"], pairing_timeout=5.0)
    r.wait_connected()
    r.tokens = TokenStore(tokens_path(tmp_path))
    yield r
    stop_robot(r)


def press(robot) -> None:
    robot.gpio.set_button(True)
    robot.gpio.set_button(False)


def blue_seen(robot, seconds: float = 1.5) -> set:
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(robot.gpio.button_light()["blue"])
        time.sleep(0.05)
    return seen


def test_button_press_approves_and_the_token_is_given_once(lan_robot):
    r = lan_robot
    status, started = r.post("/pair", {"client": "ot2 on lab-pc-3"})
    assert status == 202 and started["expires_in"] == 5 and len(started["pairing_id"]) == 32
    pairing = started["pairing_id"]
    assert blue_seen(r) == {True, False}                     # blinking
    status, state = r.get(f"/pair/{pairing}")
    assert status == 200 and state["status"] == "waiting" and 0 < state["expires_in"] <= 5
    press(r)
    state = wait_for(lambda: (s := r.get(f"/pair/{pairing}")[1])["status"] != "waiting" and s, what="approval")
    assert state["status"] == "approved" and state["token"].startswith("ot2_")
    record = r.tokens.verify(state["token"])
    assert record == {"id": state["id"], "client": "ot2 on lab-pc-3", "created": record["created"], "via": "button"}
    assert state["token"] not in r.tokens.path.read_text()   # stored hashed
    status, gone = r.get(f"/pair/{pairing}")
    assert status == 404 and gone["error"] == "bad-pairing"   # given out once
    assert r.gpio.button_light() == STEADY and blue_seen(r, 0.6) == {True}
    auth = {"Authorization": f"Bearer {state['token']}"}
    assert r.post("/robot/lights", {"on": True})[0] == 401
    assert r.post("/robot/lights", {"on": True}, headers=auth)[0] == 200


def test_unpressed_request_expires(tmp_path):
    r = start_robot(tmp_path, trusted_interfaces=["usb*"], pairing_timeout=1.0)
    try:
        pairing = r.post("/pair", {"client": "patient"})[1]["pairing_id"]
        time.sleep(1.6)
        assert r.get(f"/pair/{pairing}")[1] == {"status": "expired"}
        assert r.gpio.button_light() == STEADY
        press(r)                                             # too late: nothing is issued
        time.sleep(0.2)
        assert TokenStore(tokens_path(tmp_path)).list() == []
        assert r.post("/pair", {"client": "again"})[0] == 202  # the next one may ask
    finally:
        stop_robot(r)


def test_withdrawn_request_is_forgotten(lan_robot):
    r = lan_robot
    pairing = r.post("/pair", {"client": "gave up"})[1]["pairing_id"]
    status, body = r.request("DELETE", f"/pair/{pairing}")
    assert status == 200 and body == {"withdrawn": True}
    assert r.get(f"/pair/{pairing}")[0] == 404
    time.sleep(0.6)
    assert r.gpio.button_light() == STEADY
    press(r)
    time.sleep(0.2)
    assert r.tokens.list() == []
    assert r.request("DELETE", f"/pair/{pairing}")[1]["error"] == "bad-pairing"


def test_press_that_stops_a_run_denies_the_request(lan_robot):
    """The button's first meaning is stop: a request made while someone reaches for it
    never gets that press."""
    r = lan_robot
    channel = ChannelClient(r.service.channel.port)       # a run's lease of the motor board
    try:
        channel.command("M114.2")
        wait_for(lambda: lease_of(r), what="lease")
        pairing = r.post("/pair", {"client": "sneaky"})[1]["pairing_id"]
        press(r)
        wait_for(lambda: lease_of(r) is None, what="lease end")
        assert r.get(f"/pair/{pairing}")[1] == {"status": "denied"}
        assert r.tokens.list() == []
    finally:
        channel.close()


def test_one_request_at_a_time_and_rate_limited(lan_robot):
    r = lan_robot
    first = r.post("/pair", {"client": "first"})[1]["pairing_id"]
    status, body = r.post("/pair", {"client": "second"})
    assert status == 409 and body["error"] == "pairing-in-progress"
    r.request("DELETE", f"/pair/{first}")
    for i in range(3):                                        # 5 requests in all so far
        pairing = r.post("/pair", {"client": f"n{i}"})
        assert pairing[0] == 202, pairing
        r.request("DELETE", f"/pair/{pairing[1]['pairing_id']}")
    status, body = r.post("/pair", {"client": "sixth"})
    assert status == 429 and body["error"] == "too-many-requests"


@pytest.mark.parametrize("body", [{}, {"client": ""}, {"client": "x" * 101}, {"client": "bell\x07"},
                                  {"client": 5}, [1]])
def test_bad_label_refused(lan_robot, body):
    status, reply = lan_robot.post("/pair", body)
    assert status == 422 and reply["error"] == "invalid-request"
    assert lan_robot.gpio.button_light() == STEADY
