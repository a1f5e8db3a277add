"""One options object for the Advisor, both callbacks and ``perfhints run``: validated once.

The environment adds to what the code says: ``PERFHINTS=off`` turns everything into a
no-op, ``PERFHINTS_SUPPRESS=id,id`` adds suppressions (validated like ``suppress=``).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from perfcallbacks.hints import SEVERITIES, Severity, validate_suppress  # Severity: also importable from here

if TYPE_CHECKING:
    from perfcallbacks.device import DeviceProfile

ENV_SWITCH = "PERFHINTS"
ENV_SUPPRESS = "PERFHINTS_SUPPRESS"
_OFF = ("off", "0", "false", "no", "disable", "disabled")


def enabled_by_env(environ: Mapping[str, str] | None = None) -> bool:
    """False when ``PERFHINTS=off`` (also ``0``/``false``/``no``): callbacks become no-ops.

    Example::

        >>> enabled_by_env({"PERFHINTS": "off"}), enabled_by_env({})
        (False, True)
    """
    value = (os.environ if environ is None else environ).get(ENV_SWITCH, "")
    return value.strip().lower() not in _OFF


def env_suppress(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Hint ids from ``PERFHINTS_SUPPRESS`` (comma or space separated); unknown ids raise ``ValueError``.

    Example::

        >>> sorted(env_suppress({"PERFHINTS_SUPPRESS": "padding-waste, gpu-unused"}))
        ['gpu-unused', 'padding-waste']
    """
    raw = (os.environ if environ is None else environ).get(ENV_SUPPRESS, "")
    ids = [part for part in raw.replace(",", " ").split() if part]
    return validate_suppress(ids, argument=ENV_SUPPRESS)


def validate_fail_on(fail_on: Any) -> Severity | None:
    """``fail_on`` as given, once it is ``None`` or a severity; anything else raises ``ValueError``.

    Example::

        >>> validate_fail_on("warning"), validate_fail_on(None)
        ('warning', None)
    """
    if fail_on is None:
        return None
    if not isinstance(fail_on, str) or fail_on not in SEVERITIES:
        raise ValueError(f"fail_on must be None or one of {', '.join(map(repr, SEVERITIES))}, got {fail_on!r}")
    return cast(Severity, fail_on)


@dataclass(frozen=True)
class Options:
    """The validated keyword arguments shared by :class:`~perfcallbacks.Advisor` and both callbacks.

    Build it with :meth:`from_args` (which validates and reads the environment); fields are then plain values.

    Example::

        >>> from perfcallbacks.options import Options
        >>> opts = Options.from_args(warmup_steps=5, suppress=["gpu-unused"], environ={})
        >>> opts.warmup_steps, sorted(opts.suppress), opts.enabled
        (5, ['gpu-unused'], True)
    """

    auto_apply: bool = False
    warmup_steps: int = 20
    target: DeviceProfile | None = None
    suppress: frozenset[str] = field(default_factory=frozenset)
    report_path: Path | None = None
    latency_budget_ms: float | None = None
    verbose: bool = True
    fail_on: Severity | None = None
    enabled: bool = True
    # Share of the estimated remaining job a fix's measuring may cost (issue: the guard pays for itself).
    guard_budget: float = 0.10

    @classmethod
    def from_args(cls, *, auto_apply: Any = False, warmup_steps: Any = 20, target: Any = None,
                  suppress: Iterable[str] | None = (), report_path: Any = None, latency_budget_ms: Any = None,
                  verbose: Any = True, fail_on: Any = None, guard_budget: Any = 0.10,
                  environ: Mapping[str, str] | None = None) -> Options:
        """Validate every argument (naming it and what is allowed) and merge the environment switches."""
        from perfcallbacks.device import resolve_target  # imports torch: not at module import (perfhints run)

        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral):
            raise TypeError(f"warmup_steps must be a non-negative int, got {warmup_steps!r} "
                            f"({type(warmup_steps).__name__})")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps}")
        if latency_budget_ms is not None:
            if isinstance(latency_budget_ms, bool) or not isinstance(latency_budget_ms, numbers.Real):
                raise TypeError(f"latency_budget_ms must be None or a positive number of milliseconds, "
                                f"got {latency_budget_ms!r}")
            if not 0 < latency_budget_ms < float("inf"):
                raise ValueError(f"latency_budget_ms must be a positive, finite number of milliseconds, "
                                 f"got {latency_budget_ms}")
        if report_path is not None:
            if not isinstance(report_path, (str, Path)):
                raise TypeError(f"report_path must be None or a file path (str or Path), "
                                f"got {type(report_path).__name__}")
            if Path(report_path).is_dir():
                raise ValueError(f"report_path must be a file path, got the directory {str(report_path)!r}; "
                                 f"try {str(Path(report_path) / 'perf_hints.json')!r}")
        for name, value in (("auto_apply", auto_apply), ("verbose", verbose)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        if isinstance(guard_budget, bool) or not isinstance(guard_budget, numbers.Real) or not 0 <= guard_budget <= 1:
            raise ValueError(f"guard_budget must be a number in [0, 1] (share of the job), got {guard_budget!r}")
        own = validate_suppress(suppress)
        return cls(
            auto_apply=auto_apply,
            warmup_steps=int(warmup_steps),
            target=resolve_target(target),
            suppress=own | env_suppress(environ),
            report_path=None if report_path is None else Path(report_path),
            latency_budget_ms=None if latency_budget_ms is None else float(latency_budget_ms),
            verbose=verbose,
            fail_on=validate_fail_on(fail_on),
            enabled=enabled_by_env(environ),
            guard_budget=float(guard_budget),
        )
