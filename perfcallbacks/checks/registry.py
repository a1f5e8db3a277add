"""The check registry: every check is a pure function of a :class:`RunContext`.

A check is registered with the :class:`~perfcallbacks.hints.HintSpec` it emits (declared beside
it, which puts the spec in the registry) and the phases it runs in;
the :class:`~perfcallbacks.advisor.Advisor` runs them and turns a crash into a
recorded failure (deepchecks' ``CheckFailure`` idea), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from perfcallbacks.context import RunContext
from perfcallbacks.hints import PHASES, REGISTRY, Hint, HintSpec

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


def check(spec: HintSpec, phases: Iterable[str]) -> Callable[[CheckFn], CheckFn]:
    """Register ``spec`` (declared beside the check) and ``fn`` as its check in ``phases``.

    Example::

        GPU_UNUSED = HintSpec(id="gpu-unused", category="device", severity="critical", ...)

        @check(GPU_UNUSED, phases=("setup",))
        def gpu_unused(ctx: RunContext) -> Hint | None: ...
    """
    phases = tuple(phases)
    if not isinstance(spec, HintSpec):
        raise TypeError(f"check() takes the HintSpec the check emits, got {type(spec).__name__}")
    bad = [p for p in phases if p not in PHASES]
    if bad:
        raise ValueError(f"unknown phases {bad}; allowed: {PHASES}")
    REGISTRY.register(spec)

    def register(fn: CheckFn) -> CheckFn:
        CHECKS.append(Check(spec.id, phases, fn))
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
