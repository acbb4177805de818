"""The knobs of one concept in a prompt: `<perfusion:NAME[:β[:τ]][:local|global]>`, checked.

The WebUI tag and the CLI's `--concept FILE[:β[:τ]][:local|global]` read their
arguments here, so both accept the same text and refuse it with the same
message. β outside [0, 1] is no strength setting: at β ≤ 0 the gate is at
least half open on every unrelated token, at β > 1 it is mostly shut on the
concept word itself. τ far from the paper's 0.1-0.15 makes the gate a ramp that
is half open everywhere (large τ) or a step that rounding decides (tiny τ).
The ranges are those of `PerfusionOptions` (one place).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from captinv.config import KeyLock, PerfusionOptions
from captinv.perfusion.errors import PerfusionError

LOCKS: tuple[KeyLock, ...] = ("local", "global")
DEFAULT_BETA: dict[KeyLock, float] = {"local": 0.7, "global": 0.5}
"""β when the tag names a lock other than the concept's own and no β (the paper: 0.6-0.75 local,
0.4-0.6 global)."""


def _range(field: str) -> tuple[float, float]:
    spec = next(f for f in dataclasses.fields(PerfusionOptions) if f.name == field)
    return spec.metadata["minimum"], spec.metadata["maximum"]


BETA_RANGE, TAU_RANGE = _range("beta"), _range("tau")


@dataclass(frozen=True)
class Knobs:
    """What a tag asks for; None where it leaves the concept's default."""

    name: str
    beta: float | None = None
    tau: float | None = None
    lock: KeyLock | None = None


def check_gate(beta: float, tau: float, where: str = "") -> None:
    """Refuse a β or τ that is not a finite number in its range, saying which and why."""
    prefix = f"{where}: " if where else ""
    for label, value, (low, high) in (("β", beta, BETA_RANGE), ("τ", tau, TAU_RANGE)):
        if not (math.isfinite(value) and low <= value <= high):
            raise PerfusionError(
                f"{prefix}{label} must be a number from {low:g} to {high:g}, got {value!r} "
                "(β: 0.6-0.75 keeps a concept local, lower is stronger; τ: 0.15 by default)."
            )


def _number(text: str, label: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PerfusionError(f"{where}: {label} must be a number, got {text!r}.") from None


def parse_knobs(args: Sequence[str], where: str = "") -> Knobs:
    """`[NAME, β?, τ?, lock?]` as a tag splits them (empty parts leave defaults); checked."""
    where = where or "<perfusion:" + ":".join(args) + ">"
    if not args or not args[0].strip():
        raise PerfusionError(f"{where}: name the concept, e.g. <perfusion:kitty:0.7>.")
    numbers: list[float | None] = []
    lock: KeyLock | None = None
    for part in (a.strip() for a in args[1:]):
        if part.lower() in LOCKS:
            lock = cast(KeyLock, part.lower())
        elif len(numbers) == 2 or lock is not None:
            raise PerfusionError(f"{where}: expected NAME[:β[:τ]][:local|global], got an extra {part!r}.")
        else:
            numbers.append(_number(part, "β" if not numbers else "τ", where) if part else None)
    beta, tau = (numbers + [None, None])[:2]
    check_gate(BETA_RANGE[0] if beta is None else beta, TAU_RANGE[0] if tau is None else tau, where)
    return Knobs(args[0].strip(), beta, tau, lock)


def resolve(knobs: Knobs, beta: float, tau: float, lock: KeyLock) -> tuple[float, float, KeyLock]:
    """β, τ and lock for one use of a concept whose stored defaults are `beta`, `tau`, `lock`.
    Asking for the other lock without a β takes that lock's default β, not the stored one."""
    chosen = knobs.lock or lock
    default_beta = beta if chosen == lock else DEFAULT_BETA[chosen]
    return (
        default_beta if knobs.beta is None else knobs.beta,
        tau if knobs.tau is None else knobs.tau,
        chosen,
    )
