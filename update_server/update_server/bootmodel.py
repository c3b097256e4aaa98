"""The boot selection state and a model of the bootloader that acts on it.

Both bootloader scripts (``board/ot2/boot.cmd`` for U-Boot, ``board/qemu/grub.cfg`` for
GRUB) keep three variables in two copies of their environment, a primary and a backup,
and run the algorithm of ``docs/architecture.md`` ("Slots and boot selection") on every
boot.  :class:`BootEnv` is a valid value of those variables; :func:`simulate_boot` is that
algorithm in Python, so that tests can play the bootloader and be checked against the
real scripts.  Pure: no files, no tools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

SLOTS = ("A", "B")
# Tries a slot can have: the scripts count BOOT_*_LEFT down from 3 with if-chains and take
# any value outside 0..3 for a corrupt environment.
MAX_TRIES = 3
LEGAL_ORDERS = (("A", "B"), ("B", "A"), ("A",), ("B",))
ORDER_VAR = "BOOT_ORDER"


def tries_var(slot: str) -> str:
    """The name of ``slot``'s tries-left variable: ``BOOT_A_LEFT`` for ``"A"``."""
    return f"BOOT_{slot}_LEFT"


@dataclass(frozen=True)
class BootEnv:
    """A valid boot selection: ``order``, the slots in priority order (one of
    :data:`LEGAL_ORDERS`), and ``tries``, boot attempts left per slot (0..MAX_TRIES, a
    read-only mapping with a key for every slot).  ``ValueError`` if either is not legal.
    """

    order: tuple[str, ...]
    tries: Mapping[str, int]

    def __post_init__(self):
        object.__setattr__(self, "order", tuple(self.order))
        object.__setattr__(self, "tries", MappingProxyType(dict(self.tries)))
        if self.order not in LEGAL_ORDERS:
            raise ValueError(f"boot order {self.order} is not one of {LEGAL_ORDERS}")
        if sorted(self.tries) != sorted(SLOTS) or not all(
                isinstance(n, int) and 0 <= n <= MAX_TRIES for n in self.tries.values()):
            raise ValueError(f"tries {dict(self.tries)} are not 0..{MAX_TRIES} for each of {SLOTS}")

    def __hash__(self):
        return hash((self.order, tuple(sorted(self.tries.items()))))

    @classmethod
    def from_vars(cls, values: Mapping[str, str]) -> BootEnv | None:
        """The env held by raw variables ``{name: value}``, or ``None`` if they fail the
        scripts' check: ``BOOT_ORDER`` exactly one of ``"A B"``, ``"B A"``, ``"A"``,
        ``"B"`` and each ``BOOT_<slot>_LEFT`` exactly one of ``"0"``..``"3"`` (strings
        compared as the scripts' ``test``/``[`` do; a missing variable fails).  Other
        variables are ignored."""
        legal_orders = {" ".join(order): order for order in LEGAL_ORDERS}
        legal_tries = {str(n): n for n in range(MAX_TRIES + 1)}
        order = legal_orders.get(values.get(ORDER_VAR))
        tries = {slot: legal_tries.get(values.get(tries_var(slot))) for slot in SLOTS}
        if order is None or None in tries.values():
            return None
        return cls(order, tries)

    def to_vars(self) -> dict[str, str]:
        """The raw variables, e.g. ``{"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}``."""
        return {ORDER_VAR: " ".join(self.order), **{tries_var(s): str(self.tries[s]) for s in SLOTS}}

    def with_tries(self, slot: str, tries: int) -> BootEnv:
        """This env with ``slot`` given ``tries`` tries left."""
        return replace(self, tries={**self.tries, slot: tries})


DEFAULT_ENV = BootEnv(("A", "B"), dict.fromkeys(SLOTS, MAX_TRIES))


def env_from_copies(copies: Iterable[Mapping[str, str] | None]) -> BootEnv:
    """The env the bootloader uses: the first copy (primary, then backup) that is present
    (not ``None``) and passes :meth:`BootEnv.from_vars`, else :data:`DEFAULT_ENV`.
    ``copies`` is consumed only as far as needed."""
    for values in copies:
        env = BootEnv.from_vars(values) if values is not None else None
        if env is not None:
            return env
    return DEFAULT_ENV


def pick(env: BootEnv) -> tuple[str | None, BootEnv]:
    """The first slot of ``env.order`` with tries left and the env with one of its tries
    counted down; ``(None, env)`` if no listed slot has tries left."""
    for slot in env.order:
        if env.tries[slot] > 0:
            return slot, env.with_tries(slot, env.tries[slot] - 1)
    return None, env


@dataclass(frozen=True)
class BootOutcome:
    """What a boot did: ``slot`` booted (``None``: no slot loaded, the board resets) and
    ``saved``, the variables last written to both env copies."""

    slot: str | None
    saved: dict[str, str]


def simulate_boot(primary: dict[str, str] | None, backup: dict[str, str] | None,
                  loadable: frozenset[str] = frozenset("AB")) -> BootOutcome:
    """One boot of ``board/ot2/boot.cmd`` / ``board/qemu/grub.cfg``, as a function.

    ``primary``, ``backup``: the raw variables of each env copy, ``None`` for a copy that
    is missing or fails its CRC/format check; ``loadable``: the slots whose kernel loads.
    Steps (``docs/architecture.md``): the env of :func:`env_from_copies`; the first listed
    slot with tries left is chosen and one try counted down; if there is none, every
    listed slot gets ``MAX_TRIES`` again and the first is chosen; the env is saved; if
    the chosen slot's kernel does not load, it gets 0 tries, the next slot with tries
    left is chosen (no refill this time), the env saved again and that slot booted, and
    if that fails too (or there is none) the board resets.

    A copy that lacks one of the three variables fails its check (both scripts clear the
    variables before loading a copy).  ``tests/test_bootloaders.py`` runs both scripts in
    their bootloaders on one table of environments and checks this model against it.
    """
    env = env_from_copies([primary, backup])
    slot, env = pick(env)
    if slot is None:
        for listed in env.order:
            env = env.with_tries(listed, MAX_TRIES)
        slot, env = pick(env)
    if slot in loadable:
        return BootOutcome(slot, env.to_vars())
    slot, env = pick(env.with_tries(slot, 0))
    return BootOutcome(slot if slot in loadable else None, env.to_vars())
