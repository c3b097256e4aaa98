"""The robot as a target of a rollout server: Eclipse hawkBit's Direct Device Integration
(DDI) API, which gooseBit implements too.

Off unless ``ddi_url`` is set. The update server polls
``{ddi_url}/{ddi_tenant}/controller/v1/{controller id}`` at the interval the server asks
for (``config.polling.sleep``), reports the robot's attributes as ``configData``, and for a
deployment streams the artifact (a bundle, ``update_server/README.md``) straight into an
update session, exactly as an upload: verified before anything is written, resumed with an
HTTP ``Range`` after a dropped connection. It sends feedback for each stage, selects the
slot, and reboots when the robot is idle; after the reboot it reports success once the new
slot is marked good, or failure if the bootloader rolled it back. It never starts an
install or a reboot while a protocol run holds the robot (the robot server's ``/health``
``lease``); it says so in its feedback and waits. It keeps polling during a download: a
``cancelAction`` for the deployment stops the install (nothing is selected) and is
confirmed. A deployment that failed here is not tried again for ``RETRY_FAILED_AFTER``
seconds if the server offers it again (gooseBit does; hawkBit closes it).

API reference: hawkBit's DDI documentation, https://eclipse.dev/hawkbit/apis/ddi_api/
(resources ``controller/v1/{id}``, ``configData``, ``deploymentBase/{actionId}`` and its
``feedback``, ``cancelAction/{actionId}`` and its ``feedback``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from pathlib import Path

import aiohttp

from . import state as state_mod
from .bundle import ChunkSource
from .errors import UpdateError
from .name import hostname_for

log = logging.getLogger(__name__)

DOWNLOAD_RETRIES = 5          # reconnections (with Range) in a row that bring no byte
RETRY_DELAY = 2.0             # s before a reconnection, doubled each time
BUSY_RECHECK = 10.0           # s between two looks at a lease that holds back a reboot
PROGRESS_STEP = 10            # % of the download between two progress feedbacks
RETRY_FAILED_AFTER = 900.0    # s before a deployment that failed here, offered again, is tried again
PENDING_FILE = "ddi-pending.json"
_SLEEP_RE = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
_ACTION_RE = re.compile(r"/deploymentBase/([^/?]+)")   # hawkBit: .../deploymentBase/{actionId}?c=...


def parse_sleep(text, default: float) -> float:
    """``"HH:MM:SS"`` (DDI's ``config.polling.sleep``) in seconds; ``default`` if malformed."""
    match = _SLEEP_RE.match(text) if isinstance(text, str) else None
    if not match:
        return default
    hours, minutes, seconds = map(int, match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def pick_artifact(deployment: dict) -> tuple[dict, str]:
    """The bundle of a ``deploymentBase`` answer: ``(artifact, download URL)``.

    One chunk with one artifact is expected (hawkBit's software module; gooseBit's one
    file); the URL is the ``download`` link, else ``download-http``. Raises ValueError.
    """
    artifacts = [a for chunk in deployment["deployment"]["chunks"] for a in chunk.get("artifacts", [])]
    if len(artifacts) != 1:
        raise ValueError(f"expected one artifact, the deployment has {len(artifacts)}")
    links = artifacts[0].get("_links", {})
    link = links.get("download") or links.get("download-http")
    if not link or not isinstance(link.get("href"), str):
        raise ValueError("the artifact has no download link")
    return artifacts[0], link["href"]


class Download:
    """An artifact streamed as a :class:`ChunkSource`, resumed with ``Range`` and
    ``If-Range`` (the first answer's ``ETag``) after a dropped connection, and hashed as it
    goes: ``hashes`` holds the SHA-256 and SHA-1 of the bytes handed out."""

    def __init__(self, http: aiohttp.ClientSession, url: str, headers: dict, size: int | None,
                 on_bytes=lambda received: None):
        self.http, self.url, self.headers, self.size = http, url, headers, size
        self.on_bytes = on_bytes
        self.received = 0
        self.hashes = {"sha256": hashlib.sha256(), "sha1": hashlib.sha1()}
        self._response: aiohttp.ClientResponse | None = None
        self._etag: str | None = None
        self._failures = 0

    async def _open(self) -> None:
        headers = dict(self.headers)
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
            if self._etag:
                headers["If-Range"] = self._etag
        response = await self.http.get(self.url, headers=headers)
        if response.status not in (200, 206) or (self.received and response.status != 206):
            response.release()
            raise UpdateError("truncated", f"download answered {response.status} at byte {self.received}")
        self._etag = self._etag or response.headers.get("ETag")
        self._response = response

    async def next_chunk(self) -> bytes:
        """The next bytes of the artifact; ``b""`` at its end. Raises UpdateError
        ``truncated`` once the reconnections are used up."""
        while True:
            try:
                if self._response is None:
                    await self._open()
                chunk = await self._response.content.readany()
            except (aiohttp.ClientError, asyncio.TimeoutError, UpdateError) as e:
                chunk, error = None, e
            if chunk:
                self._failures = 0    # progress: the retries count again from here
                self.received += len(chunk)
                for hasher in self.hashes.values():
                    hasher.update(chunk)
                self.on_bytes(self.received)
                return chunk
            if chunk is not None and (self.size is None or self.received >= self.size):
                return b""
            # dropped: the connection ended early or failed
            if self._response is not None:
                self._response.release()
                self._response = None
            self._failures += 1
            if self._failures > DOWNLOAD_RETRIES:
                detail = error if chunk is None else "connection closed early"
                raise UpdateError("truncated", f"download failed at byte {self.received}: {detail}")
            log.warning("ddi: download dropped at byte %d; resuming", self.received)
            await asyncio.sleep(RETRY_DELAY * 2 ** (self._failures - 1))

    def close(self) -> None:
        if self._response is not None:
            self._response.release()


class DdiClient:
    """Polls the rollout server and carries out its deployments (module docstring).

    ``server`` is the :class:`~update_server.api.UpdateServer` (its config, sessions, boot
    control, state store, robot name and reboot).
    """

    def __init__(self, server):
        self.server = server
        self.config = server.config
        self.pending_file = Path(self.config.state_dir) / PENDING_FILE
        base = self.config.ddi_url.rstrip("/")
        self.base = f"{base}/{self.config.ddi_tenant}/controller/v1/{self.controller_id()}"
        self.headers = {"Accept": "application/hal+json"}
        if self.config.ddi_target_token:
            self.headers["Authorization"] = f"TargetToken {self.config.ddi_target_token}"
        elif self.config.ddi_gateway_token:
            self.headers["Authorization"] = f"GatewayToken {self.config.ddi_gateway_token}"
        self.reported_config = False
        self.session_action: tuple[str, str] | None = None   # (session token, action id) installing
        self.cancelled: str | None = None                      # the action id a cancelAction stopped
        self.failed: dict[str, float] = {}                     # action id -> time.monotonic() it failed
        self.status = "idle"

    def controller_id(self) -> str:
        """``ddi_controller_id``, else the board's serial number, else the robot's hostname."""
        return (self.config.ddi_controller_id or self.server.boot.cmdline.serial()
                or hostname_for(self.server.names.get()))

    # ---- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Poll for ever; a failed poll is logged and retried at the default interval."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30,
                                                                       sock_read=60)) as http:
            await self._report_pending(http)
            while True:
                try:
                    sleep = await self.poll_once(http)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as e:
                    log.warning("ddi: poll of %s failed: %s", self.base, e)
                    self.status = f"poll failed: {e}"
                    sleep = self.config.ddi_poll_seconds
                await asyncio.sleep(sleep)

    async def _json(self, http, method: str, url: str, body=None):
        async with http.request(method, url, json=body, headers=self.headers) as response:
            if response.status >= 400:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                  message=(await response.text())[:200])
            return await response.json(content_type=None) if method == "GET" else None

    async def poll_once(self, http: aiohttp.ClientSession) -> float:
        """One poll of the controller resource; acts on its links; returns the seconds to
        the next poll."""
        answer = await self._json(http, "GET", self.base)
        sleep = parse_sleep(answer.get("config", {}).get("polling", {}).get("sleep"), self.config.ddi_poll_seconds)
        links = answer.get("_links", {})
        if "configData" in links or not self.reported_config:
            await self._json(http, "PUT", links.get("configData", {}).get("href", f"{self.base}/configData"),
                             {"mode": "merge", "data": self.attributes()})
            self.reported_config = True
            sleep = 0.0   # the interval was the one for a robot the server did not know yet
        if "cancelAction" in links:
            await self._cancel(http, links["cancelAction"]["href"])
        elif "deploymentBase" in links:
            await self._deploy(http, links["deploymentBase"]["href"])
        return sleep

    def attributes(self) -> dict:
        """The robot as ``configData``: version, board and slots (gooseBit matches software
        to ``hw_boardname`` and ``hw_revision``; ``sw_version`` is the booted version)."""
        version = self.config.system_version().get("version", "")
        slots = {name: device for name, device in self.config.slots.items()}
        return {"hw_boardname": self.config.effective_compatible(), "hw_revision": self.config.revision,
                "sw_version": version, "booted_slot": self.server.boot.booted_slot() or "",
                "slots": json.dumps(slots, sort_keys=True), "name": self.server.names.get()}

    async def _feedback(self, http, href: str, action_id: str, execution: str, finished: str, *details: str,
                        progress: tuple[int, int] | None = None) -> None:
        status = {"execution": execution, "result": {"finished": finished}, "details": list(details)}
        if progress:
            status["result"]["progress"] = {"cnt": progress[0], "of": progress[1]}
        await self._json(http, "POST", f"{href.split('?')[0]}/feedback", {"id": action_id, "status": status})

    # ---- deployments -------------------------------------------------------------------

    async def robot_busy(self) -> str | None:
        """Why the robot may not be updated now (a protocol run holds it), or None."""
        url = self.config.robot_health_url
        if not url:
            return None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                async with http.get(url) as response:
                    health = await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None   # no robot server: nothing to interrupt
        lease = health.get("lease") if isinstance(health, dict) else None
        return f"a protocol run holds the robot ({lease.get('holder', 'run')})" if lease else None

    def _settled(self, action_id: str) -> bool:
        """Whether deployment ``action_id`` needs nothing now: installed (rebooting, or the
        boot check will report it), cancelled, or failed here less than
        ``RETRY_FAILED_AFTER`` s ago (a server that offers a failed action again, as
        gooseBit does, is not hammered)."""
        pending = self._load_pending()
        failed_at = self.failed.get(action_id)
        return bool((pending and pending.get("action") == action_id) or action_id == self.cancelled
                    or (failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_AFTER))

    async def _deploy(self, http, href: str) -> None:
        # Judged from the link first: fetching a deployment tells the server the robot is
        # working on it (gooseBit then shows the device running again).
        linked = _ACTION_RE.search(href)
        if linked and self._settled(linked.group(1)):
            return
        deployment = await self._json(http, "GET", href)
        action_id = str(deployment["id"])
        if self._settled(action_id) or deployment["deployment"].get("download") == "skip":
            return
        try:
            artifact, url = pick_artifact(deployment)
        except (ValueError, KeyError, TypeError) as e:
            self.failed[action_id] = time.monotonic()
            await self._feedback(http, href, action_id, "closed", "failure", f"refused: {e}")
            return
        busy = await self.robot_busy()
        if busy:
            self.status = f"deployment {action_id} waits: {busy}"
            await self._feedback(http, href, action_id, "proceeding", "none", f"waiting: {busy}")
            return
        await self._install(http, href, action_id, artifact, url)

    async def _install(self, http, href: str, action_id: str, artifact: dict, url: str) -> None:
        sessions = self.server.sessions
        try:
            session = sessions.begin(allow_downgrade=False)
        except UpdateError as e:
            await self._feedback(http, href, action_id, "proceeding", "none", f"waiting: {e.message}")
            return
        self.session_action = (session.token, action_id)
        size = artifact.get("size") if isinstance(artifact.get("size"), int) else None
        steps = iter(range(PROGRESS_STEP, 100, PROGRESS_STEP))
        next_step = [next(steps)]
        reports: list = []

        def on_bytes(received: int) -> None:
            if size and received * 100 >= next_step[0] * size:
                percent = received * 100 // size
                reports.append(asyncio.ensure_future(self._feedback(
                    http, href, action_id, "proceeding", "none", f"Downloaded {percent}%",
                    progress=(percent, 100))))
                next_step[0] = next((s for s in steps if s > percent), 101)

        download = Download(http, url, self.headers, size, on_bytes)
        self.status = f"installing deployment {action_id}"
        await self._feedback(http, href, action_id, "proceeding", "none", f"downloading {artifact.get('filename')}")

        async def open_source() -> ChunkSource:
            return ChunkSource(download.next_chunk)

        watch = asyncio.ensure_future(self._poll_during_install(http, action_id))
        try:
            await sessions.upload(session.token, open_source)
            for name, expected in (artifact.get("hashes") or {}).items():
                if name in download.hashes and download.hashes[name].hexdigest() != str(expected).lower():
                    await sessions.cancel(session.token, trusted=True)
                    raise UpdateError("hash-mismatch", f"the download's {name} is not the server's")
            await sessions.commit(session.token)
        except UpdateError as e:
            await asyncio.gather(*reports, return_exceptions=True)
            if self.cancelled == action_id:
                self.status = f"deployment {action_id} cancelled by the server"
                return   # the cancelAction's feedback closed it
            self.status = f"deployment {action_id} failed: {e.code}"
            self.failed[action_id] = time.monotonic()
            await self._feedback(http, href, action_id, "closed", "failure", f"{e.code}: {e.message}")
            return
        finally:
            if self.cancelled == action_id:
                await asyncio.gather(watch, return_exceptions=True)   # it sends the cancel's feedback
            else:
                watch.cancel()
            download.close()
            self.session_action = None
        await asyncio.gather(*reports, return_exceptions=True)
        progress = session.progress
        self._save_pending({"action": action_id, "href": href, "slot": progress.target_slot,
                            "version": progress.version})
        await self._feedback(http, href, action_id, "proceeding", "none",
                             "Downloaded 100%", f"{progress.version} written to slot {progress.target_slot}; "
                             "rebooting when the robot is idle", progress=(100, 100))
        while busy := await self.robot_busy():
            self.status = f"deployment {action_id} installed; reboot waits: {busy}"
            await asyncio.sleep(BUSY_RECHECK)
        self.status = f"deployment {action_id} installed; rebooting"
        await self.server.reboot(f"deployment {action_id}")

    async def _poll_during_install(self, http, action_id: str) -> None:
        """Polls on while deployment ``action_id`` downloads, for a ``cancelAction`` of it
        (hawkBit sends one when an operator cancels); failed polls are retried."""
        while self.cancelled != action_id:
            await asyncio.sleep(self.config.ddi_poll_seconds)
            try:
                links = (await self._json(http, "GET", self.base)).get("_links", {})
                if "cancelAction" in links:
                    await self._cancel(http, links["cancelAction"]["href"])
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as e:
                log.warning("ddi: poll during the install failed: %s", e)

    async def _cancel(self, http, href: str) -> None:
        """A ``cancelAction``: stop the install if it is that action's (nothing written
        to the inactive slot is selected), forget a pending one, and confirm."""
        answer = await self._json(http, "GET", href)
        action_id = str(answer["cancelAction"]["stopId"])
        running = self.session_action
        if running and running[1] == action_id:
            self.cancelled = action_id
            await self.server.sessions.cancel(running[0], trusted=True)
        pending = self._load_pending()
        if pending and pending.get("action") == action_id:
            self._save_pending(None)
        await self._feedback(http, href, str(answer["id"]), "closed", "success", f"cancelled action {action_id}")

    # ---- after the reboot --------------------------------------------------------------

    def _load_pending(self) -> dict | None:
        try:
            pending = json.loads(self.pending_file.read_text())
        except (OSError, ValueError):
            return None
        return pending if isinstance(pending, dict) else None

    def _save_pending(self, pending: dict | None) -> None:
        if pending is None:
            self.pending_file.unlink(missing_ok=True)
        else:
            state_mod.atomic_write(self.pending_file, json.dumps(pending).encode(), 0o600)

    async def _report_pending(self, http) -> None:
        """The result of the deployment installed before this boot: success once its slot
        is booted and marked good, failure if the bootloader went back to the other."""
        pending = self._load_pending()
        if not pending:
            return
        while True:
            state = self.server.store.load()
            booted = self.server.boot.booted_slot()
            good = (booted and not state_mod.is_trial(state, booted, self.server.boot_id())
                    and (state["slots"].get(booted) or {}).get("confirmed"))
            if booted != pending["slot"]:
                result = ("failure", f"rolled back: slot {pending['slot']} ({pending['version']}) did not "
                                     f"become healthy; slot {booted} runs")
                break
            if good:
                result = ("success", f"{pending['version']} runs from slot {booted}, marked good")
                break
            await asyncio.sleep(self.config.boot_check_interval)
        while True:
            try:
                await self._feedback(http, pending["href"], pending["action"], "closed", *result)
                break
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                log.warning("ddi: result of deployment %s not sent yet: %s", pending["action"], e)
                await asyncio.sleep(self.config.ddi_poll_seconds)
        self._save_pending(None)
