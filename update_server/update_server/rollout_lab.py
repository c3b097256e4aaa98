"""Test and bench tooling of the DDI client (update_server/ddi.py): gooseBit (PyPI
``goosebit``, a rollout server implementing hawkBit's DDI API) on loopback, from its own venv
(``make venv``: ``.venv-goosebit``, ci/requirements-goosebit.txt), and an HTTP proxy in
front of it that counts requests, drops downloads midway, and adds what hawkBit does and
gooseBit does not (cancel an action, deploy to any board).

Facts used, from gooseBit 0.2.12's source (https://github.com/UpstreamDataInc/goosebit):
settings are ``GOOSEBIT_*`` environment variables (``goosebit/settings/schema.py``); its
database is made by ``aerich upgrade`` with the migrations the package ships
(``goosebit/db/migrations``, config ``goosebit.db.config.TORTOISE_CONF``); the first user
comes from ``POST /setup``, a token from ``POST /login`` (OAuth2 password form); software
is uploaded with ``PUT /api/v1/software`` (multipart ``file``), a rollout created with
``PUT /api/v1/rollouts`` (``name``, ``feed``, ``software_id``), devices read with
``GET /api/v1/devices``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the repository (an editable install's source)
VENV = Path(os.environ.get("OT2_GOOSEBIT_VENV", ROOT / ".venv-goosebit"))
USER, PASSWORD = "admin@ot2.test", "e2e-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GooseBit:
    """A gooseBit server in ``workdir`` (SQLite, artifacts), polling interval ``poll_time``
    (``HH:MM:SS``); :meth:`stop` ends it."""

    def __init__(self, workdir: Path, poll_time: str = "00:00:01"):
        if not (VENV / "bin" / "aerich").exists():
            raise RuntimeError(f"no gooseBit in {VENV}: make venv (or set OT2_GOOSEBIT_VENV)")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = next((VENV / "lib").glob("python3*/site-packages"))
        self.env = {**os.environ, "GOOSEBIT_PORT": str(self.port), "GOOSEBIT_POLL_TIME": poll_time,
                    "GOOSEBIT_DB_URI": f"sqlite:///{workdir}/db.sqlite3",
                    "GOOSEBIT_ARTIFACTS_DIR": str(workdir / "artifacts"),
                    "GOOSEBIT_SECRET_KEY": uuid.uuid4().hex}
        (workdir / "pyproject.toml").write_text(
            '[tool.aerich]\ntortoise_orm = "goosebit.db.config.TORTOISE_CONF"\n'
            f'location = "{site}/goosebit/db/migrations"\nsrc_folder = "./."\n')
        subprocess.run([str(VENV / "bin" / "aerich"), "upgrade"], cwd=workdir, env=self.env, check=True,
                       capture_output=True, timeout=120)
        self.log = open(workdir / "goosebit.log", "wb")
        self.proc = subprocess.Popen([str(VENV / "bin" / "python"), "-m", "goosebit"], cwd=workdir,
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gooseBit did not start: {(workdir / 'goosebit.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        self._form("/setup", {"username": USER, "password": PASSWORD})
        self.token = self._form("/login", {"username": USER, "password": PASSWORD})["access_token"]

    def _form(self, path: str, fields: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=urllib.parse.urlencode(fields).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """A management API call (``/api/v1/...``) as the admin; the JSON answer."""
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def upload(self, bundle: Path) -> int:
        """Publishes a bundle file as software; its id."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{bundle.name}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + bundle.read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + "/api/v1/software", method="PUT", data=body,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["id"]

    def rollout(self, software_id: int, feed: str = "default") -> int:
        """A rollout of ``software_id`` to the devices of ``feed``; its id."""
        return self.api("PUT", "/api/v1/rollouts", {"name": f"rollout {software_id}", "feed": feed,
                                                    "software_id": software_id})["id"]

    def devices(self) -> dict:
        """``{device id: gooseBit's device record}`` (``sw_version``, ``last_state``, ...)."""
        return {d["id"]: d for d in self.api("GET", "/api/v1/devices")["devices"]}

    def device_log(self, device: str) -> str:
        return self.api("GET", f"/api/v1/devices/{device}/log")["log"] or ""

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class DdiProxy:
    """An HTTP proxy to gooseBit at ``target_port`` (``url`` is its address) that sees each
    request whole, whatever connection it comes on:

    - ``requests`` lists them (``"GET /path"``);
    - ``errors``: the first that many are answered 503, as by a server in trouble;
    - ``cut_after`` (bytes): the first ``cuts`` artifact downloads (``None``: all) end after
      that many bytes of their body, the connection closed: a download dropped midway;
      ``cut`` counts them;
    - ``rate`` (bytes/s): downloads are sent no faster;
    - ``flip_at`` (byte offset): that byte of every download is flipped;
    - ``cancel_after`` (bytes): once a deployment's download has passed it, the operator
      cancels that action, as hawkBit does and gooseBit cannot: the controller resource
      links ``cancelAction/{id}`` instead of ``deploymentBase``, which answers
      ``{"id", "cancelAction": {"stopId"}}``; the robot's feedback to it is kept in
      ``cancel_feedback``, after which the action is gone;
    - ``board``: the robot's ``configData`` reaches gooseBit with this ``hw_boardname``, so
      gooseBit deploys software made for that board, as hawkBit (which does not read
      artifacts) deploys whatever the operator assigns.

    ``sent`` counts the artifact bytes passed on. Resource shapes: hawkBit's DDI API,
    https://eclipse.dev/hawkbit/apis/ddi_api/.
    """

    def __init__(self, target_port: int, cut_after: int | None = None, cuts: int | None = None,
                 rate: int | None = None, cancel_after: int | None = None, board: str | None = None,
                 errors: int = 0, flip_at: int | None = None):
        self.target_port, self.cut_after, self.cuts_left = target_port, cut_after, cuts
        self.rate, self.cancel_after, self.board = rate, cancel_after, board
        self.errors_left, self.flip_at = errors, flip_at
        self.requests: list[str] = []
        self.cut = 0
        self.sent = 0
        self.action: str | None = None      # the deployment's action id, from its deploymentBase link
        self.stop_id: str | None = None     # the action cancelled
        self.cancel_feedback: list[dict] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_ForwardingHandler):
            lab = proxy

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take_cut(self) -> bool:
        """Whether the download starting now is to be cut."""
        with self._lock:
            if self.cut_after is None or self.cuts_left == 0:
                return False
            if self.cuts_left is not None:
                self.cuts_left -= 1
            self.cut += 1
            return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json_body(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


class _ForwardingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    lab: DdiProxy

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_GET

    def _reply(self, status: int, body: bytes = b"", content_type: str = "application/hal+json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        lab = self.lab
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        with lab._lock:
            lab.requests.append(f"{self.command} {path}")
            failing = lab.errors_left > 0
            lab.errors_left -= failing
        if failing:
            return self._reply(503, b'{"detail": "unavailable"}', "application/json")
        cancel = re.search(r"/cancelAction/([^/]+)(/feedback)?$", path)
        if cancel and lab.stop_id == cancel.group(1):
            if cancel.group(2):
                lab.cancel_feedback.append(_json_body(body))
                return self._reply(200)
            return self._reply(200, json.dumps({"id": lab.stop_id, "cancelAction": {"stopId": lab.stop_id}}).encode())
        if lab.board and path.endswith("/configData") and isinstance(data := _json_body(body), dict):
            data.setdefault("data", {})["hw_boardname"] = lab.board
            body = json.dumps(data).encode()
        if deployment := re.search(r"/deploymentBase/([^/]+)$", path):
            lab.action = deployment.group(1)
        upstream = http.client.HTTPConnection("127.0.0.1", lab.target_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        answer = upstream.getresponse()
        try:
            if path.endswith("/download"):
                return self._stream(answer)
            data = answer.read()
            if self.command == "GET" and re.search(r"/controller/v1/[^/]+$", path) and lab.stop_id:
                controller = json.loads(data)
                links = controller.get("_links", {})
                links.pop("deploymentBase", None)
                if not lab.cancel_feedback:
                    links["cancelAction"] = {"href": f"{lab.url}{path}/cancelAction/{lab.stop_id}"}
                data = json.dumps(controller).encode()
            self._reply(answer.status, data, answer.getheader("Content-Type", "application/json"))
        finally:
            upstream.close()

    def _stream(self, answer) -> None:
        lab = self.lab
        limit = lab.cut_after if lab.take_cut() else None
        self.send_response(answer.status)
        for name in ("Content-Type", "Content-Length", "Content-Range", "ETag", "Accept-Ranges"):
            if answer.getheader(name):
                self.send_header(name, answer.getheader(name))
        self.end_headers()
        sent = 0
        while chunk := answer.read(16 << 10):
            if lab.flip_at is not None and sent <= lab.flip_at < sent + len(chunk):
                at = lab.flip_at - sent
                chunk = chunk[:at] + bytes([chunk[at] ^ 0x01]) + chunk[at + 1:]
            if limit is not None and sent + len(chunk) >= limit:
                self.wfile.write(chunk[:limit - sent])
                self.close_connection = True   # the body ends short: a dropped download
                return
            try:
                self.wfile.write(chunk)
            except OSError:
                self.close_connection = True   # the robot hung up (a cancelled download)
                return
            sent += len(chunk)
            lab.sent += len(chunk)
            if lab.cancel_after is not None and lab.sent >= lab.cancel_after and lab.stop_id is None:
                lab.stop_id = lab.action
            if lab.rate:
                time.sleep(len(chunk) / lab.rate)
