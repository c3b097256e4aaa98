"""Protocol analysis benchmark: upload-to-analysis over HTTP (the robot server's warm,
sandboxed analysis worker) next to a cold ``opentrons_simulate`` of the same file, in
one run; plus the robot server's resident memory.

    python robot_server/bench/bench_analysis.py [--repeat 5]

Starts ``robot-server`` as its own process (simulated GPIO, no board needed for
analysis), waits until its analysis worker is warm, then for each repetition uploads a
96-well transfer protocol (multipart ``files``) and polls ``GET /protocols/{id}`` until
its analysis is ``completed``; the cold figure is the wall time of ``opentrons_simulate``
(the engine imported from scratch each time). Prints medians (s), the ratio (target
<= 0.25) and the server's RSS (MB, ``VmRSS`` in ``/proc/<pid>/status``) with and without
its analysis worker (a separate process).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROTOCOL = b'''
metadata = {"protocolName": "96-well transfer", "apiLevel": "2.20"}
def run(ctx):
    tips = ctx.load_labware("opentrons_96_tiprack_300ul", 1)
    source = ctx.load_labware("nest_12_reservoir_15ml", 2)
    plate = ctx.load_labware("corning_96_wellplate_360ul_flat", 3)
    pipette = ctx.load_instrument("p300_single_gen2", "right", tip_racks=[tips])
    for i, well in enumerate(plate.wells()):
        pipette.pick_up_tip()
        pipette.aspirate(100, source.wells()[i // 8])
        pipette.dispense(100, well)
        pipette.blow_out()
        pipette.drop_tip()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Opentrons-Version": "*", **({"Content-Type": ctype} if ctype else {})}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def upload_to_analysis(port: int) -> float:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"transfer.py\"\r\n\r\n"
            .encode() + PROTOCOL + f"\r\n--{boundary}--\r\n".encode())
    t0 = time.perf_counter()
    status, reply = request(port, "POST", "/protocols", body, f"multipart/form-data; boundary={boundary}")
    assert status == 201, reply
    pid = reply["data"]["id"]
    while True:
        status, reply = request(port, "GET", f"/protocols/{pid}")
        summary = reply["data"]["analysisSummaries"][0]
        if summary["status"] == "completed":
            elapsed = time.perf_counter() - t0
            break
        time.sleep(0.01)
    status, analysis = request(port, "GET", f"/protocols/{pid}/analyses/{summary['id']}")
    assert analysis["data"]["result"] == "ok", analysis["data"]["errors"]
    return elapsed


def cold_simulate(path: Path) -> float:
    simulate = shutil.which("opentrons_simulate", path=os.path.dirname(sys.executable))
    t0 = time.perf_counter()
    subprocess.run([simulate, str(path)], check=True, capture_output=True,
                   env=dict(os.environ, OT_API_CONFIG_DIR=str(path.parent / "ot-config")))
    return time.perf_counter() - t0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="ot2-bench-analysis-"))
    os.chmod(data, 0o755)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "robot_server", "--port", str(port), "--no-bridge", "--gpio-backend", "sim",
         "--serial-port", f"socket://127.0.0.1:{free_port()}", "--data-dir", str(data),
         "--lock-file", str(data / "lock")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "robot-server did not start"
            time.sleep(0.1)
        rss_idle = rss_mb(server.pid)
        upload_to_analysis(port)                      # waits for the warm-up too
        warm = [upload_to_analysis(port) for _ in range(args.repeat)]
        (data / "transfer.py").write_bytes(PROTOCOL)
        cold = [cold_simulate(data / "transfer.py") for _ in range(args.repeat)]
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    w, c = statistics.median(warm), statistics.median(cold)
    print("protocol analysis (96-well transfer, 480 commands), median of", args.repeat)
    print(f"  upload-to-analysis over HTTP (warm worker)  {w:7.3f} s")
    print(f"  cold opentrons_simulate                     {c:7.3f} s")
    print(f"  ratio                                       {w / c:7.3f}   (target <= 0.25)")
    print(f"  robot-server RSS                            {rss_idle:7.1f} MB idle, {rss_after:.1f} MB after "
          f"{args.repeat + 1} analyses (the worker is a separate process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
