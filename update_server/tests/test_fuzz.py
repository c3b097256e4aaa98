"""Fuzz every operation of ``/openapi.json`` with hypothesis: never a 5xx, errors are JSON."""

from __future__ import annotations

import json
import urllib.parse

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = 60

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
content_types = st.sampled_from([
    None, "application/json", "application/octet-stream", "text/plain",
    "multipart/form-data", "multipart/form-data; boundary=xyz", "application/x-tar",
])


def body_strategy(op: dict, schemas: dict):
    content = (op.get("requestBody") or {}).get("content", {})
    strategies = [st.binary(max_size=1500), st.none()]
    for media, spec in content.items():
        schema = spec.get("schema", {})
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        props = list(schema.get("properties", {}))
        if media == "application/json":
            objects = st.fixed_dictionaries({p: json_values for p in props}) if props else json_values
            strategies.append((objects | json_values).map(lambda v: json.dumps(v).encode()))
    return st.one_of(strategies)


def test_openapi_lists_every_route(rig):
    doc = rig.client.get("/openapi.json").body
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app_routes = set()
    for route in rig.server.runner.app.router.routes():
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter")
        path = path.replace("{fingerprint:.+}", "{fingerprint}")
        if route.method != "HEAD":
            app_routes.add((route.method, path))
    assert app_routes == documented


def test_fuzz_every_operation(rig):
    doc = rig.client.get("/openapi.json").body
    schemas = doc["components"]["schemas"]
    c = rig.client
    operations = [(m.upper(), p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    assert len(operations) >= 16

    for method, path, op in operations:
        fuzz_operation(c, method, path, op, schemas)()
    # the robot is still fine afterwards
    h = c.get("/health").body
    assert h["booted_slot"] == "A" and h["boot_order"][0] == "A"
    assert rig.slot_a_intact()


def fuzz_operation(c, method: str, path: str, op: dict, schemas: dict):
    """A hypothesis test sending random path values, bodies and content types."""
    params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(values=st.fixed_dictionaries({p: st.text(max_size=40) for p in params}),
           fresh=st.booleans(), body=body_strategy(op, schemas), ctype=content_types)
    def run(values, fresh, body, ctype):
        target = path
        for name, value in values.items():
            if name == "token" and fresh:
                c.post("/server/update/cancel")
                value = c.post("/server/update/begin").body["token"]
            target = target.replace("{" + name + "}", urllib.parse.quote(value, safe="") or "x")
        headers = {"Content-Type": ctype} if ctype else {}
        r = c.request(method, target, body=body, headers=headers)
        assert r.status < 500, (method, target, r.status, r.raw[:300])
        if r.status >= 400:
            assert isinstance(r.body, dict) and isinstance(r.body.get("error"), str), r.raw[:300]
            assert isinstance(r.body.get("message"), str)

    return run
