"""The bootloader model (``bootmodel.simulate_boot``) against the algorithm of
docs/architecture.md, and BootEnv's check of raw variables."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from update_server.bootctl import BootControl, GrubStorage, KernelCmdline
from update_server.bootmodel import MAX_TRIES, BootEnv, env_from_copies, simulate_boot


def env(order: str, a, b) -> dict:
    """Raw variables (values as given, so illegal ones can be written too)."""
    return {"BOOT_ORDER": order, "BOOT_A_LEFT": str(a), "BOOT_B_LEFT": str(b)}


AB = frozenset("AB")

# (primary, backup, loadable) -> (slot booted, variables saved)
CASES = {
    "primary used": (env("A B", 3, 3), env("B A", 1, 1), AB, "A", env("A B", 2, 3)),
    "primary first slot out of tries": (env("A B", 0, 2), None, AB, "B", env("A B", 0, 1)),
    "corrupt primary: backup": (None, env("B A", 1, 3), AB, "B", env("B A", 1, 2)),
    "corrupt both: defaults": (None, None, AB, "A", env("A B", 2, 3)),
    "tries 4 in primary: backup": (env("B A", 4, 3), env("B", 0, 1), AB, "B", env("B", 0, 0)),
    "tries x in primary: backup": (env("B A", "x", 3), env("B", 0, 1), AB, "B", env("B", 0, 0)),
    "tries 03 is not 3": (env("B A", "03", 3), None, AB, "A", env("A B", 2, 3)),
    "tries -1": (env("B", 3, -1), env("B", 3, "-1"), AB, "A", env("A B", 2, 3)),
    "order C in both: defaults": (env("C", 3, 3), env("C", 3, 3), AB, "A", env("A B", 2, 3)),
    "order A A": (env("A A", 3, 3), None, AB, "A", env("A B", 2, 3)),
    "order with a trailing space": (env("B A ", 3, 3), None, AB, "A", env("A B", 2, 3)),
    "a variable missing: backup": ({"BOOT_ORDER": "B", "BOOT_B_LEFT": "3"}, env("B", 1, 2), AB, "B",
                                   env("B", 1, 1)),
    "other variables ignored": ({**env("B A", 3, 3), "bootdelay": "0"}, None, AB, "B", env("B A", 3, 2)),
    "no tries left: every listed slot refilled": (env("B A", 0, 0), None, AB, "B", env("B A", 3, 2)),
    "no tries left: an unlisted slot is not refilled": (env("A", 0, 0), None, AB, "A", env("A", 2, 0)),
    "an unlisted slot is never booted": (env("B", 3, 0), None, AB, "B", env("B", 3, 2)),
    "first slot fails to load: the next": (env("A B", 3, 3), None, frozenset("B"), "B", env("A B", 0, 2)),
    "neither loads: reset": (env("A B", 3, 3), None, frozenset(), None, env("A B", 0, 2)),
    "fails to load, none left: reset": (env("A", 3, 3), None, frozenset("B"), None, env("A", 0, 3)),
    "fails to load, no refill": (env("B A", 0, 1), None, frozenset("A"), None, env("B A", 0, 0)),
}


@pytest.mark.parametrize("primary, backup, loadable, slot, saved", CASES.values(), ids=CASES.keys())
def test_boot_table(primary, backup, loadable, slot, saved):
    outcome = simulate_boot(primary, backup, loadable)
    assert (outcome.slot, outcome.saved) == (slot, saved)


def test_boot_env_vars_round_trip():
    value = BootEnv(("B", "A"), {"A": 0, "B": 3})
    assert value.to_vars() == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "3"}
    assert BootEnv.from_vars(value.to_vars()) == value
    assert hash(BootEnv.from_vars(value.to_vars())) == hash(value)
    with pytest.raises(TypeError):
        value.tries["A"] = 1  # read-only


@pytest.mark.parametrize("order, tries", [((), {"A": 3, "B": 3}), (("A", "A"), {"A": 3, "B": 3}),
                                          (("A",), {"A": 4, "B": 3}), (("A",), {"A": 3})])
def test_boot_env_refuses_what_the_bootloader_would_not_read(order, tries):
    with pytest.raises(ValueError):
        BootEnv(order, tries)


# Raw values: the legal ones, near misses, and anything grub-editenv can store.
ORDERS = st.sampled_from(["A B", "B A", "A", "B", "C", "A A", "", "B A ", "a b"]) | st.text(
    st.characters(codec="ascii", exclude_characters="\n\\\0"), max_size=4)
TRIES = st.sampled_from(["0", "1", "2", "3", "4", "-1", "03", "x", ""]) | st.integers(0, 12).map(str)
COPY = st.none() | st.fixed_dictionaries({}, optional={
    "BOOT_ORDER": ORDERS, "BOOT_A_LEFT": TRIES, "BOOT_B_LEFT": TRIES})
LOADABLE = st.frozensets(st.sampled_from("AB"))


@given(COPY, COPY, LOADABLE)
def test_any_boot_saves_a_valid_env_and_boots_a_listed_slot_with_a_try(primary, backup, loadable):
    before = env_from_copies([primary, backup])
    outcome = simulate_boot(primary, backup, loadable)
    saved = BootEnv.from_vars(outcome.saved)
    assert saved is not None and saved.order == before.order
    if outcome.slot is not None:
        assert outcome.slot in loadable and outcome.slot in before.order
        assert saved.tries[outcome.slot] < MAX_TRIES  # a try was counted down
        refilled = all(before.tries[s] == 0 for s in before.order)
        assert before.tries[outcome.slot] > 0 or refilled
    else:  # reset: no listed slot both loads and has tries left
        assert all(saved.tries[s] == 0 or s not in loadable for s in saved.order)


def write_grub_copy(path: str, values: dict | None) -> None:
    """A grubenv file holding ``values``, or a file grub-editenv rejects for ``None``."""
    if values is None:
        with open(path, "wb") as f:
            f.write(b"not an environment block\n")
        return
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run(["grub-editenv", path, "create"], check=True)
    if values:
        subprocess.run(["grub-editenv", path, "set", *(f"{k}={v}" for k, v in values.items())], check=True)


@settings(max_examples=25, deadline=None)
@given(COPY, COPY, LOADABLE)
def test_mark_good_after_any_boot_gives_the_booted_slot_max_tries(primary, backup, loadable):
    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, "grubenv"), os.path.join(tmp, "grubenv.bak")]
        write_grub_copy(files[0], primary)
        write_grub_copy(files[1], backup)
        cmdline = os.path.join(tmp, "cmdline")
        boot = BootControl(GrubStorage(files), KernelCmdline(cmdline))
        outcome = simulate_boot(*boot.storage.load(), loadable)
        assert outcome == simulate_boot(primary, backup, loadable)  # the storage reads it as written
        boot.storage.store(outcome.saved)
        if outcome.slot is None:
            return
        with open(cmdline, "w") as f:
            f.write(f"ot2.slot={outcome.slot}\n")
        booted = BootEnv.from_vars(outcome.saved)
        good = boot.mark_good()
        assert good == boot.read()
        assert good.order == booted.order and good.tries[outcome.slot] == MAX_TRIES
        other = "B" if outcome.slot == "A" else "A"
        assert good.tries[other] == booted.tries[other]
