"""``GET /settings/reset/options`` and ``POST /settings/reset`` as the OT-2 answers them
(Opentrons/opentrons, robot-server/robot_server/service/legacy/routers/settings.py and
api/src/opentrons/config/reset.py), over real HTTP on loopback. Erasing runs and
protocols (``runsHistory``) is tested with real runs in test_engine_runs.py."""
from __future__ import annotations

import pytest

from test_ot2_api import validate

OT2_OPTIONS = ["bootScripts", "deckCalibration", "pipetteOffsetCalibrations", "tipLengthCalibrations",
               "runsHistory", "deckConfiguration"]


def test_reset_options_are_the_ot2s_but_ssh_keys(shared_robot):
    status, body = shared_robot.get("/settings/reset/options")
    assert status == 200
    assert [o["id"] for o in body["options"]] == OT2_OPTIONS
    assert all(set(o) == {"id", "name", "description"} for o in body["options"])


def test_reset_nothing_and_calibrations(shared_robot):
    assert shared_robot.post("/settings/reset", {}) == (200, {"message": "Nothing to do"})
    assert shared_robot.post("/settings/reset", {"deckCalibration": False}) == (200, {"message": "Nothing to do"})
    status, body = shared_robot.post("/settings/reset", {"deckCalibration": True, "tipLengthCalibrations": True})
    assert (status, body) == (200, {"message": "Options 'deck_calibration, tip_length_calibrations' were reset"})
    assert shared_robot.get("/calibration/status")[1]["deckCalibration"]["status"] == "IDENTITY"


@pytest.mark.parametrize("body, status, text", [
    ({"gripperOffsetCalibrations": True}, 403, "gripperOffsetCalibrations is not a valid reset option."),
    ({"onDeviceDisplay": False}, 403, "onDeviceDisplay is not a valid reset option."),
    ({"authorizedKeys": True}, 403, "SSH keys"),
    ({"everything": True}, 422, "unknown reset option"),
    ({"runsHistory": "yes"}, 422, "true or false"),
    (["runsHistory"], 422, "JSON object"),
])
def test_reset_bad_input(shared_robot, body, status, text):
    protocols_before = shared_robot.get("/protocols")[1]
    got, reply = shared_robot.post("/settings/reset", body)
    assert got == status and text in reply["message"] and reply["errorCode"] == "4000", reply
    validate("legacy_error", reply)
    assert shared_robot.get("/protocols")[1] == protocols_before


def test_reset_needs_the_version_header(shared_robot):
    status, body = shared_robot.post("/settings/reset", {}, headers={"Opentrons-Version": None})
    assert status == 422 and "errorCode" in body
