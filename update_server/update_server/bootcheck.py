"""``update-server boot-check``: confirm the booted slot once the servers are healthy.

Polls ``health_urls`` (default: the robot server's and this server's ``/health``) every
``boot_check_interval`` seconds until all answer 200 or ``boot_check_timeout`` seconds
pass.  Exit status:

* 0 -- healthy; the booted slot was marked good (a trial boot is confirmed);
* 1 -- unhealthy on a confirmed slot (nothing else done: a good slot is never rebooted
  away from by this check);
* 2 -- unhealthy during a trial boot; ``reboot_command`` was run so that the bootloader
  uses up the slot's tries and falls back to the previous slot.
"""

from __future__ import annotations

import logging
import subprocess
import time
import urllib.error
import urllib.request

from . import bootctl
from . import state as state_mod

log = logging.getLogger(__name__)

ROBOT_SERVER_HEALTH = "http://127.0.0.1:31950/health"


def _healthy(opener, url: str, timeout: float) -> bool:
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(urls: list, timeout: float, interval: float) -> list:
    """Poll ``urls`` until all answer 200; returns the URLs still failing (``[]`` = ok)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while True:
        failing = [u for u in urls if not _healthy(opener, u, min(5.0, max(interval, 1.0)))]
        if not failing or time.monotonic() >= deadline:
            return failing
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def run(config) -> int:
    """Run the boot check with ``config``; returns the exit status (see module doc)."""
    boot = bootctl.from_config(config)
    store = state_mod.StateStore(config.state_dir)
    boot_id = state_mod.read_boot_id(config.boot_id_file)
    urls = config.health_urls or [ROBOT_SERVER_HEALTH, config.self_health_url()]
    log.info("boot check: waiting up to %ss for %s", config.boot_check_timeout, ", ".join(urls))
    failing = wait_healthy(urls, config.boot_check_timeout, config.boot_check_interval)
    if not failing:
        state_mod.reconcile(store, boot, boot_id)
        result = state_mod.mark_good(store, boot, boot_id)
        if result["confirmed"]:
            log.info("slot %s confirmed with %s", result["booted_slot"], result["confirmed"])
        else:
            log.info("slot %s marked good", result["booted_slot"])
        return 0
    trial = state_mod.is_trial(store.load(), boot.booted_slot(), boot_id)
    log.error("unhealthy after %ss: %s", config.boot_check_timeout, ", ".join(failing))
    if trial:
        log.error("trial boot failed; rebooting so the bootloader falls back")
        subprocess.run(config.reboot_command, check=False)
        return 2
    return 1
