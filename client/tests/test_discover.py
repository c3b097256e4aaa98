"""mDNS: ``ot2 discover`` and ROBOT given by name, with the update server's own advertiser."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from ot2_client.cli import main


@pytest.fixture
def advertised(fleet, loop):
    """A robot listening on every address, advertised over mDNS under a unique name."""
    from update_server.name import Advertiser

    robot = fleet(1, listen="0.0.0.0")[0]
    name = f"ot2 test {uuid.uuid4().hex[:8]}"
    adv = Advertiser(31950, "OT-2 Standard")
    if loop.run(adv.advertise(name)) is None:
        pytest.skip("mDNS advertisement not possible here")
    loop.run(asyncio.sleep(0.5))
    yield robot, name
    loop.run(adv.close())


def test_discover_and_use_name(advertised, good_bundle, capsys, monkeypatch):
    from update_server.tokens import TokenStore

    robot, name = advertised
    # the name resolves to a LAN address: changes need a paired client's token
    monkeypatch.setenv("OT2_TOKEN", TokenStore(robot.config.tokens_file).issue("test", "button")[0])
    code = main(["discover", "--json", "--wait", "2", "--port", str(robot.port)])
    found = json.loads(capsys.readouterr().out)
    assert code == 0
    mine = [r for r in found if r["name"] == name]
    if not mine:
        pytest.skip("no multicast loopback here")
    assert mine[0]["version"] == "1.0.0" and mine[0]["booted_slot"] == "A" and mine[0]["reachable"]
    assert mine[0]["robotModel"] == "OT-2 Standard"

    code = main(["status", "--json", "--port", str(robot.port), name])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out[0]["ok"] and out[0]["health"]["version"] == "1.0.0"

    code = main(["push", "--json", "--port", str(robot.port), str(good_bundle), name])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["results"][0]["ok"]
    assert robot.health()["boot_order"] == ["B", "A"]

    code = main(["discover", "--wait", "1.5", "--port", str(robot.port)])
    assert code == 0 and name in capsys.readouterr().out
