"""The check registry: every check is a pure function of a :class:`RunContext`.

A check is registered for the hint id it can emit and the phases it runs in;
the :class:`~perfcallbacks.advisor.Advisor` runs them and turns a crash into a
recorded failure (deepchecks' ``CheckFailure`` idea), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from perfcallbacks.context import RunContext
from perfcallbacks.hints import PHASES, REGISTRY, Hint

CheckFn = Callable[[RunContext], "Hint | Iterable[Hint] | None"]


@dataclass(frozen=True)
class Check:
    hint_id: str
    phases: tuple[str, ...]
    fn: CheckFn

    @property
    def name(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__name__}"


CHECKS: list[Check] = []


def check(hint_id: str, phases: Iterable[str]) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check for ``hint_id`` in ``phases``.

    Example::

        @check("gpu-unused", phases=("setup",))
        def gpu_unused(ctx: RunContext) -> Hint | None: ...
    """
    phases = tuple(phases)
    if hint_id not in REGISTRY:
        raise ValueError(f"check registered for unknown hint id {hint_id!r}")
    bad = [p for p in phases if p not in PHASES]
    if bad:
        raise ValueError(f"unknown phases {bad}; allowed: {PHASES}")

    def register(fn: CheckFn) -> CheckFn:
        CHECKS.append(Check(hint_id, phases, fn))
        return fn

    return register


def checks_for(phase: str) -> list[Check]:
    return [c for c in CHECKS if phase in c.phases]


def fix_text(ctx: RunContext, *, lightning: str, hf: str, torch: str) -> str:
    """The fix snippet for the framework in use."""
    return {"lightning": lightning, "hf": hf}.get(ctx.framework, torch)


def nearest_multiples(value: int, multiple: int) -> tuple[int, int]:
    """The aligned sizes just below and above ``value`` (below is at least ``multiple``)."""
    below = max(multiple, (value // multiple) * multiple)
    above = -(-value // multiple) * multiple
    return below, above
