"""Fuzz the HTTP API (and the bridge) from /openapi.json: nothing a client sends yields a 5xx
(but the one an operation documents for hardware this robot lacks: the camera's 500)."""
import json
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BridgeClient

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def from_schema(schema: dict) -> st.SearchStrategy:
    """A strategy of values mostly matching ``schema`` (OpenAPI subset), sometimes not."""
    if "oneOf" in schema:
        strat = st.one_of(*(from_schema(sub) for sub in schema["oneOf"]))
    elif "enum" in schema:
        strat = st.sampled_from(schema["enum"])
    else:
        t = schema.get("type")
        if t == "boolean":
            strat = st.booleans()
        elif t == "number":
            lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
            hi = schema.get("maximum", 200)
            strat = (st.floats(lo, hi) | st.floats(lo, hi) | st.integers(-1000, 1000) | st.floats(-1e6, 1e6)
                     | st.sampled_from([0, -0.0, 1e308, 418, 419]))
        elif t == "string":
            strat = st.text(max_size=10)
        elif t == "array":
            strat = st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0),
                             max_size=schema.get("maxItems", 6))
        elif t == "object":
            props = {k: from_schema(v) for k, v in schema.get("properties", {}).items()}
            required = {k: props.pop(k) for k in schema.get("required", []) if k in props}
            strat = st.fixed_dictionaries(required, optional=props)
        else:
            strat = JUNK
    return st.one_of(strat, strat, strat, JUNK)     # mostly well-typed


def operations(doc: dict):
    for path, methods in doc["paths"].items():
        if path in ("/events", "/openapi.json"):
            continue
        for method, op in methods.items():
            yield path, method.upper(), op


@pytest.fixture(scope="module")
def api_doc(shared_robot):
    status, doc = shared_robot.get("/openapi.json")
    assert status == 200
    return doc


def request_strategy(op: dict) -> st.SearchStrategy:
    query = {p["name"]: from_schema(p["schema"]) for p in op.get("parameters", []) if p["in"] == "query"}
    q = st.fixed_dictionaries({}, optional={k: v.map(lambda x: json.dumps(x) if not isinstance(x, str) else x)
                                            for k, v in query.items()})
    body_schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))
    if body_schema is None:
        body = st.none() | st.just(b"") | JUNK.map(lambda v: json.dumps(v).encode())
    else:
        body = (from_schema(body_schema).map(lambda v: json.dumps(v).encode())
                | st.binary(max_size=40) | st.none())
    return st.tuples(q, body)


#: ``Opentrons-Version`` values: mostly valid, sometimes missing, outdated or garbage.
VERSIONS = st.sampled_from(["*", "*", "*", "4", "3", "2", "100"]) | st.sampled_from([None, "1", "0", "-5", "abc", ""]) \
    | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=6)


def check_error_shape(op: dict, status: int, reply) -> None:
    """An error body has the shape the operation documents: ours ``{"error", "message"}``,
    or the OT-2's (legacy ``{"message", "errorCode"}`` or ``{"errors": [...]}``)."""
    documented = op["responses"].get(str(status), op["responses"]["422"])
    schema = documented["content"]["application/json"]["schema"]
    assert isinstance(reply, dict) and set(schema["required"]) <= set(reply), (status, reply)
    if "OT-2 HTTP API" not in op.get("tags", []):
        assert set(reply) == {"error", "message"}, reply
    elif "errors" in reply:
        assert all({"id", "title", "detail", "errorCode"} <= set(e) for e in reply["errors"]), reply


def test_fuzz_http_no_5xx(shared_robot, api_doc):
    ops = list(operations(api_doc))
    assert len(ops) >= 30

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def run(data):
        path, method, op = data.draw(st.sampled_from(ops))
        query, body = data.draw(request_strategy(op))
        version = data.draw(VERSIONS)
        for p in op.get("parameters", []):
            if p["in"] == "path":       # a documented value or any non-empty one
                value = data.draw(st.sampled_from(p["schema"].get("enum", ["x"])) | st.text(min_size=1, max_size=8))
                path = path.replace("{%s}" % p["name"], urllib.parse.quote(value, safe=""))
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        status, reply = shared_robot.request(method, url, raw=body, headers={"Opentrons-Version": version})
        assert status < 500 or str(status) in op["responses"], (method, url, body, version, reply)
        if status >= 400:
            check_error_shape(op, status, reply)
        else:
            assert isinstance(reply, (dict, list) if op["operationId"] == "getLogs" else dict) \
                or op["operationId"] == "getLogs", reply

    shared_robot.gpio.set_door(False)
    run()
    shared_robot.gpio.set_door(False)
    assert shared_robot.get("/health")[0] == 200


def test_fuzz_bridge(shared_robot, api_doc):
    ops = [(op["operationId"], op) for _, _, op in operations(api_doc)]
    client = BridgeClient(shared_robot.bridge_port)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def run(data):
        name, op = data.draw(st.sampled_from(ops))
        _, body = data.draw(request_strategy(op))
        params = None
        if body:
            try:
                params = json.loads(body)
            except ValueError:
                params = body.decode("latin-1")
        client.send({"id": 1, "command": name, "params": params})
        reply = client.reply()
        assert reply is not None and reply["type"] == "reply"
        assert reply["ok"] or reply["error"] != "internal-error", reply

    try:
        run()
    finally:
        client.close()
        shared_robot.gpio.set_door(False)
