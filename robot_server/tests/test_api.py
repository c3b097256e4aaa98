"""The HTTP API over real loopback HTTP, with the emulator on a real pty."""
import http.client
import json
import threading
import time

import pytest

from conftest import start_robot, stop_robot
from robot_server.emulator import SmoothieEmulator, TcpServer


def test_health_shape(shared_robot):
    status, h = shared_robot.health()
    assert status == 200
    assert h["robot_model"] == "OT-2 Standard" and h["gpio_backend"] == "sim"
    mb = h["motor_board"]
    assert mb["connected"] is True and mb["firmware"].startswith("edge-ot2emu")
    assert set(mb["homed"]) == set("XYZABC")


def test_health_without_board(tmp_path):
    r = start_robot(tmp_path, serial_port=str(tmp_path / "no-such-tty"))
    try:
        status, h = r.health()
        assert status == 200
        assert h["motor_board"]["connected"] is False and h["motor_board"]["firmware"] is None
        time.sleep(0.1)
        assert "does not exist" in r.health()[1]["motor_board"]["error"]
        status, body = r.post("/robot/home", {})
        assert status == 409 and body["error"] == "board-not-connected"
        assert r.get("/robot/positions")[0] == 200
    finally:
        stop_robot(r)


def test_home_move_positions(homed):
    status, body = homed.post("/robot/move", {"target": "mount", "mount": "right", "point": [100, 120, 150],
                                              "speed": 300})
    assert status == 200, body
    assert body["position"]["X"] == 100 and body["position"]["A"] == 150
    assert body["mounts"]["right"] == [100, 120, 150]
    status, body = homed.post("/robot/move", {"mount": "left", "point": [100, 120, 150]})
    assert status == 200
    assert body["position"]["X"] == 134 and body["position"]["Z"] == 150   # left mount offset -34
    status, pos = homed.get("/robot/positions?refresh=true")
    assert status == 200 and pos["mounts"]["left"] == [100, 120, 150]
    assert homed.emulator.state.position["Z"] == 150
    status, body = homed.post("/robot/move", {"axes": {"B": 2.5, "c": 3}, "speed": 20})
    assert status == 200 and body["position"]["B"] == 2.5 and body["position"]["C"] == 3


def test_home_variants(homed):
    status, body = homed.post("/robot/home", {"target": "pipette", "mount": "left"})
    assert status == 200 and body["axes"] == "ZB"
    assert homed.post("/robot/home", {"target": "mount", "mount": "right"})[1]["axes"] == "A"
    assert homed.post("/robot/home", {"axis": "x"})[1]["axes"] == "X"
    assert homed.post("/robot/home", {"axes": ["Y", "C"]})[1]["axes"] == "YC"
    assert homed.post("/robot/home")[0] == 200      # no body = home everything


def test_arc_move_segments(homed):
    homed.post("/robot/move", {"mount": "right", "point": [50, 50, 50]})
    n = len(homed.emulator.log)
    status, _ = homed.post("/robot/move", {"mount": "right", "point": [200, 200, 60], "strategy": "arc"})
    assert status == 200
    moves = [ln for ln in homed.emulator.log[n:] if ln.startswith("G0")]
    assert moves == ["G0 A218 F24000", "G0 X200 Y200 F24000", "G0 A60 F24000"]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("body,status,code", [
    ({"mount": "right", "point": [500, 100, 100]}, 422, "soft-limit"),
    ({"mount": "right", "point": [100, -1, 100]}, 422, "soft-limit"),
    ({"mount": "left", "point": [400, 100, 100]}, 422, "soft-limit"),     # 434 on X after offset
    ({"axes": {"Z": 219}}, 422, "soft-limit"),
    ({"axes": {"Q": 1}}, 422, "unknown-axis"),
    ({"axes": {"xy": 1}}, 422, "unknown-axis"),
    ({"axes": {"X": 10}, "speed": -1}, 422, "invalid-speed"),
    ({"axes": {"X": 10}, "speed": 0}, 422, "invalid-speed"),
    ({"axes": {"X": 10}, "speed": 1e9}, 422, "invalid-speed"),
    ({"axes": {"B": 10}, "speed": 100}, 422, "invalid-speed"),
    ({"axes": {"X": 10}, "speed": "fast"}, 422, "invalid-speed"),
    ({"axes": {"X": "10"}}, 422, "soft-limit"),
    ({"axes": {}}, 422, "invalid-request"),
    ({"axes": [1, 2]}, 422, "invalid-request"),
    ({"mount": "middle", "point": [1, 2, 3]}, 422, "invalid-request"),
    ({"mount": "left", "point": [1, 2]}, 422, "invalid-request"),
    ({"mount": "left", "point": [1, 2, "3"]}, 422, "invalid-request"),
    ({"mount": "left", "point": [1, 2, True]}, 422, "invalid-request"),
    ({"point": [1, 2, 3]}, 422, "invalid-request"),
    ({"mount": "left", "point": [1, 2, 3], "strategy": "zigzag"}, 422, "invalid-request"),
    ({"mount": "left", "point": [1, 2, 3], "bogus": 1}, 422, "invalid-request"),
    ({"axes": {"X": 1}, "mount": "left"}, 422, "invalid-request"),
    ([1, 2, 3], 422, "invalid-request"),
    ("move", 422, "invalid-request"),
])
def test_move_bad_input(homed, body, status, code):
    n = len(homed.emulator.log)
    got, reply = homed.post("/robot/move", body)
    assert (got, reply["error"]) == (status, code), reply
    assert isinstance(reply["message"], str)
    assert not any(ln.startswith("G0") for ln in homed.emulator.log[n:])


def test_nan_and_infinity_in_json(homed):
    for raw in (b'{"axes": {"X": NaN}}', b'{"axes": {"X": Infinity}}', b'{"axes": {"X": 1e999}}',
                b'{"axes": {"X": 10}, "speed": NaN}'):
        status, reply = homed.request("POST", "/robot/move", raw=raw)
        assert status == 422, (raw, reply)


@pytest.mark.parametrize("raw", [b"{", b"{'a': 1}", b"\xff\xfe", b"[" * 50000, b'{"on": tru}'])
def test_malformed_json(homed, raw):
    """The OT-2 answers a body that is not JSON as a validation error (422) on its endpoints."""
    for path in ("/robot/move", "/robot/lights", "/robot/home", "/motors/disengage"):
        status, reply = homed.request("POST", path, raw=raw)
        assert status == 422 and reply["error"] == "invalid-json", (path, raw[:10], reply)
        assert reply["errorCode"] == "4000" and reply["message"]
    status, reply = homed.request("POST", "/robot/sim/gpio", raw=raw)     # ours
    assert status == 400 and set(reply) == {"error", "message"}


def test_too_large_body(homed):
    status, reply = homed.request("POST", "/robot/move", raw=b"{" + b" " * 70000 + b"}")
    assert status == 413 and reply["error"] == "request-too-large"


def test_not_found_and_method(homed):
    status, reply = homed.get("/nope")
    assert status == 404 and reply["error"] == "not-found"
    status, reply = homed.request("DELETE", "/robot/move")
    assert status == 405 and reply["error"] == "method-not-allowed"


@pytest.mark.parametrize("body", [{"target": "moon"}, {"target": "pipette"}, {"target": "pipette", "mount": 3},
                                  {"axis": "Q"}, {"axes": []}, {"axes": "XY"}, {"axis": "X", "axes": ["Y"]},
                                  {"mount": "left"}, {"extra": 1}])
def test_home_bad_input(homed, body):
    status, reply = homed.post("/robot/home", body)
    assert 400 <= status < 500 and reply["error"] in ("invalid-request", "unknown-axis"), reply


def test_move_before_homing(robot):
    status, reply = robot.post("/robot/move", {"mount": "right", "point": [10, 10, 10]})
    assert status == 409 and reply["error"] == "not-homed"


def test_board_timeout(robot):
    robot.post("/robot/home", {})
    robot.emulator.mute = True
    status, reply = robot.post("/robot/move", {"axes": {"X": 100}})
    assert status == 409 and reply["error"] == "board-timeout"
    h = robot.health()[1]
    assert h["motor_board"]["homed"]["X"] is False
    robot.emulator.mute = False
    assert robot.post("/robot/move", {"axes": {"X": 100}})[1]["error"] == "not-homed"
    assert robot.post("/robot/home", {})[0] == 200
    assert robot.post("/robot/move", {"axes": {"X": 100}})[0] == 200


def test_board_error_alarm_and_halt(robot):
    robot.post("/robot/home", {})
    robot.emulator.fail_next = "bad things"
    status, reply = robot.post("/robot/move", {"axes": {"X": 100}})
    assert status == 409 and reply["error"] == "board-error" and "bad things" in reply["message"]
    robot.emulator.alarm_next = "Hard limit +Y"
    status, reply = robot.post("/robot/move", {"axes": {"Y": 100}})
    assert status == 409 and reply["error"] == "board-alarm"
    assert robot.gpio.reset_count >= 2          # start-up pulse + recovery pulse
    robot.post("/robot/home", {})
    robot.emulator.halt()
    status, reply = robot.post("/robot/move", {"axes": {"X": 100}})
    assert status == 409 and reply["error"] == "board-halted"
    assert robot.post("/robot/home", {})[0] == 200


def test_unplugged_mid_command_and_reconnect(tmp_path):
    emu = SmoothieEmulator()
    tcp = TcpServer(emu).start()
    r = start_robot(tmp_path, emulator=emu, serial_port=tcp.url)
    try:
        r.wait_connected()
        assert r.post("/robot/home", {})[0] == 200
        emu.mute = True
        threading.Timer(0.1, tcp.drop_client).start()
        status, reply = r.post("/robot/move", {"axes": {"X": 100}})
        assert status == 409 and reply["error"] == "board-disconnected", reply
        emu.mute = False
        h = r.wait_connected(True)           # server reconnects to the next connection
        assert h["motor_board"]["homed"]["X"] is True   # re-read from the board (G28.6)
    finally:
        stop_robot(r)
        tcp.close()


def test_pty_unplugged(robot):
    robot.post("/robot/home", {})
    robot.emulator.mute = True
    threading.Timer(0.1, robot.pty.unplug).start()
    status, reply = robot.post("/robot/move", {"axes": {"X": 100}})
    assert status == 409 and reply["error"] == "board-disconnected"
    h = robot.wait_connected(False)
    assert h["motor_board"]["error"]


def test_lights_and_identify(shared_robot):
    assert shared_robot.post("/robot/lights", {"on": True})[1]["on"] is True
    assert shared_robot.gpio.lights_on()
    assert shared_robot.get("/robot/lights")[1]["on"] is True
    status, body = shared_robot.post("/robot/lights", {"button": {"red": True}})
    assert status == 200 and body["button"] == {"red": True, "green": False, "blue": True}
    assert shared_robot.post("/robot/lights", {"on": "yes"})[0] == 422
    assert shared_robot.post("/robot/lights", {})[0] == 422
    assert shared_robot.post("/identify?seconds=1")[0] == 200
    assert shared_robot.post("/identify?seconds=0")[0] == 422
    assert shared_robot.post("/identify?seconds=abc")[0] == 422
    shared_robot.post("/robot/lights", {"on": False})


def test_motors_engaged_disengage_endstops(homed):
    status, eng = homed.get("/motors/engaged")
    assert status == 200 and eng["x"] == {"enabled": True} and set(eng) == {"x", "y", "z_l", "z_r", "p_l", "p_r"}
    status, eng = homed.post("/motors/disengage", {"axes": ["x", "Y"]})
    assert status == 200 and eng["x"]["enabled"] is False and eng["z_l"]["enabled"] is True
    assert eng["message"] == "Disengaged axes: x, Y"
    assert not homed.emulator.state.engaged["Y"]
    assert homed.post("/motors/disengage", {"axes": ["W"]})[1]["error"] == "unknown-axis"
    assert homed.post("/motors/disengage", {"axes": "X"})[0] == 422
    status, ends = homed.get("/robot/endstops")
    assert status == 200 and ends["endstops"]["Z"] is True


def test_door_pauses_motion(tmp_path):
    emu = SmoothieEmulator(time_scale=1.0)
    r = start_robot(tmp_path, emulator=emu)
    try:
        r.wait_connected()
        emu.time_scale = 0
        assert r.post("/robot/home", {})[0] == 200
        assert r.post("/robot/move", {"axes": {"Z": 100}})[0] == 200
        emu.time_scale = 0.5
        result = {}

        def move():
            # arc: Z up 118 mm at 125 mm/s (~0.5 s scaled), then X/Y, then Z down
            result["reply"] = r.post("/robot/move", {"mount": "left", "point": [300, 300, 168],
                                                    "strategy": "arc", "speed": 400})

        t = threading.Thread(target=move)
        t.start()
        time.sleep(0.1)
        assert r.post("/robot/sim/gpio", {"door_open": True})[0] == 200
        door = r.get("/robot/door")[1]
        assert door["open"] is True
        time.sleep(0.6)
        door = r.get("/robot/door")[1]
        assert door == {"open": True, "status": "open", "paused": True}
        door = r.get("/robot/door/status")[1]
        assert door == {"data": {"status": "open", "doorRequiredClosedForProtocol": False}}
        assert "reply" not in result
        assert r.post("/robot/move", {"axes": {"X": 10}})[1]["error"] == "door-open"
        assert r.post("/robot/home", {})[1]["error"] == "door-open"
        r.post("/robot/sim/gpio", {"door_open": False})
        t.join(10)
        status, body = result["reply"]
        assert status == 200 and body["paused_s"] > 0.1
        assert body["mounts"]["left"] == [300, 300, 168]
        assert r.get("/robot/door")[1]["paused"] is False
    finally:
        stop_robot(r)


def _sse_events(port: int, stop_after: int, timeout: float = 5.0) -> list:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    events = []
    name = None
    while len(events) < stop_after:
        line = resp.fp.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    conn.close()
    return events


def test_event_stream(homed):
    got = {}

    def listen():
        got["events"] = _sse_events(homed.port, 5)

    t = threading.Thread(target=listen)
    t.start()
    time.sleep(0.2)
    homed.post("/robot/move", {"axes": {"X": 123}})
    homed.gpio.set_door(True)
    homed.gpio.set_door(False)
    homed.gpio.set_button(True)
    t.join(5)
    names = [n for n, _ in got["events"]]
    assert names[:2] == ["door", "position"]               # initial state
    assert ("position", 123.0) in [(n, e["data"]["position"]["X"]) for n, e in got["events"] if n == "position"]
    assert "door" in names[2:]
    homed.gpio.set_button(False)


def test_openapi(shared_robot):
    status, doc = shared_robot.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/health", "/robot/lights", "/robot/home", "/robot/move", "/robot/positions",
                 "/motors/engaged", "/motors/disengage", "/robot/door", "/events"):
        assert path in doc["paths"], path
    assert doc["paths"]["/robot/move"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_sim_gpio_bad_value(shared_robot):
    assert shared_robot.post("/robot/sim/gpio", {"door_open": "maybe"})[0] == 422


def test_sim_gpio_refused_on_real_backend(tmp_path, pty):
    """A hardware-like backend (not the simulator): inputs cannot be forced over HTTP."""
    import asyncio

    from robot_server.gpio import SimulatedGPIO
    from robot_server.errors import ApiError
    from robot_server.service import RobotService

    class HardwareLike(SimulatedGPIO.__bases__[0]):
        name = "hw"

        def setup(self): pass
        def set_lights(self, on): pass
        def lights_on(self): return False
        def set_button_light(self, r, g, b): pass
        def button_light(self): return {"red": False, "green": False, "blue": False}
        def door_open(self): return False
        def button_pressed(self): return False
        def pulse_reset(self): pass
        def pulse_halt(self): pass

    from conftest import make_config

    async def scenario():
        svc = RobotService(make_config(tmp_path, pty.slave_path), HardwareLike())
        await svc.start()
        try:
            with pytest.raises(ApiError) as exc:
                await svc.sim_gpio({"door_open": True})
            assert exc.value.status == 409 and exc.value.code == "not-simulated"
        finally:
            await svc.stop()

    asyncio.run(scenario())
