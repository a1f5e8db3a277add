"""The report (schema ``perfcallbacks/report-v1``): JSON in and out, written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from perfcallbacks.hints import Hint

SCHEMA = "perfcallbacks/report-v1"
# Closed sets (tests/test_types.py keeps each Literal equal to its tuple).
FixStatus = Literal["applied", "rejected", "skipped", "failed"]
FIX_STATUSES: tuple[FixStatus, ...] = ("applied", "rejected", "skipped", "failed")
# Who drove the run. A report merged by `perfhints run` from parts of different frameworks joins
# their names with "+" (e.g. "hf+lightning"), so Report.framework itself stays a str.
Framework = Literal["torch", "lightning", "hf"]
FRAMEWORKS: tuple[Framework, ...] = ("torch", "lightning", "hf")

log = logging.getLogger(__name__)


@dataclass
class FixResult:
    """Outcome of one guarded fix, as it appears in the report's ``fixes`` list.

    Example::

        >>> from perfcallbacks.report import FixResult
        >>> FixResult("threads", "applied", "4 threads 1.3x faster", speedup=1.3).applied
        True
        >>> FixResult("threads", "done", "")
        Traceback (most recent call last):
        ...
        ValueError: FixResult status must be one of ('applied', 'rejected', 'skipped', 'failed'), got 'done'
    """

    id: str
    status: FixStatus
    reason: str
    speedup: float | None = None
    fidelity: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Seconds the guard spent measuring this fix (part of the report's overhead_s); None = not measured.
    cost_s: float | None = None

    def __post_init__(self) -> None:
        if self.status not in FIX_STATUSES:
            raise ValueError(f"FixResult status must be one of {FIX_STATUSES}, got {self.status!r}")

    @property
    def applied(self) -> bool:
        return self.status == "applied"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "speedup": None if self.speedup is None else round(float(self.speedup), 3),
            "fidelity": {k: _jsonable(v) for k, v in self.fidelity.items()},
        }
        if self.cost_s is not None:
            data["cost_s"] = round(float(self.cost_s), 4)
        if self.details:
            data["details"] = _jsonable(self.details)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FixResult:
        return cls(id=data["id"], status=data["status"], reason=data.get("reason", ""),
                   speedup=data.get("speedup"), fidelity=dict(data.get("fidelity") or {}),
                   details=dict(data.get("details") or {}),
                   cost_s=None if data.get("cost_s") is None else float(data["cost_s"]))


@dataclass
class Report:
    """Everything one run found: hints, fixes, the device and the advisor's own cost.

    Example::

        >>> from perfcallbacks import Report
        >>> report = Report(framework="torch", device={"kind": "cpu"})
        >>> Report.from_json(report.to_json()).framework
        'torch'
    """

    framework: str = "torch"  # a Framework; a merged `perfhints run` report joins several: "hf+lightning"
    device: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] | None = None
    hints: list[Hint] = field(default_factory=list)
    fixes: list[FixResult] = field(default_factory=list)
    overhead_s: float = 0.0
    created: str = field(default_factory=lambda: _now())
    check_failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "created": self.created,
            "framework": self.framework,
            "device": _jsonable(self.device),
            "target": _jsonable(self.target),
            "hints": [_jsonable(h.to_dict()) for h in self.hints],
            "fixes": [f.to_dict() for f in self.fixes],
            "overhead_s": round(float(self.overhead_s), 6),
            "check_failures": list(self.check_failures),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a perfcallbacks report: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        return cls(
            framework=data.get("framework", "torch"),
            device=dict(data.get("device") or {}),
            target=data.get("target"),
            hints=[Hint.from_dict(h) for h in data.get("hints", [])],
            fixes=[FixResult.from_dict(f) for f in data.get("fixes", [])],
            overhead_s=float(data.get("overhead_s") or 0.0),
            created=data.get("created") or _now(),
            check_failures=list(data.get("check_failures") or []),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Report:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): a crash never leaves half a JSON."""
        return write_atomic(Path(path), self.to_json())

    def hint(self, hint_id: str, phase: str | None = None) -> Hint | None:
        """The hint with this id (and ``phase`` when given); a training finding comes before an
        inference one with the same id, in report order."""
        return next((h for h in self.hints if h.id == hint_id and (phase is None or h.phase == phase)), None)

    @property
    def hint_ids(self) -> list[str]:
        """Ids of the hints found (suppressed ones left out: they are kept in ``hints``, marked)."""
        return [h.id for h in self.hints if not h.suppressed]

    @property
    def open_hints(self) -> list[Hint]:
        """Hints a person should act on: neither suppressed nor resolved by an applied fix."""
        resolved = resolved_hint_keys(self)
        return [h for h in self.hints if not h.suppressed and (h.id, h.phase) not in resolved]

    @property
    def resolved_hints(self) -> list[tuple[Hint, FixResult]]:
        """``(hint, the applied fix that resolved it)`` pairs (suppressed hints excluded)."""
        resolved = resolved_hint_keys(self)
        fixes = {f.id: f for f in self.fixes if f.applied}
        return [(h, fixes[resolved[(h.id, h.phase)]]) for h in self.hints
                if not h.suppressed and (h.id, h.phase) in resolved and resolved[(h.id, h.phase)] in fixes]

    @property
    def suppressed_count(self) -> int:
        return sum(h.suppressed for h in self.hints)

    @property
    def fix_cost_s(self) -> float:
        """Seconds spent measuring fixes (included in ``overhead_s``)."""
        return sum(f.cost_s or 0.0 for f in self.fixes)

    def render(self, color: bool | None = None, width: int | None = None) -> str:
        from perfcallbacks.render import render_report

        return render_report(self, color=color, width=width)

    def _repr_markdown_(self) -> str:  # Jupyter / IPython
        from perfcallbacks.render import render_markdown

        return render_markdown(self)

    def _repr_html_(self) -> str:
        from perfcallbacks.render import render_html

        return render_html(self)


# Applied fix id -> hint ids it makes moot, each with a test on the fix (details tell which kind ran).
FIX_RESOLVES: dict[str, tuple[tuple[str, Any], ...]] = {
    "dynamic-quantization": (("int8-available", None),),
    "autocast": (("autocast-available", None),),
    "sdpa": (("attention-eager", None),),
    "channels-last": (("channels-last-off", None),),
    # the inference thread sweep (it has timings) vs the training thread cap (it has a cap)
    "threads": (("threads-untuned", lambda f: bool(f.details.get("timings_s"))),
                ("cpu-oversubscribed", lambda f: "cap" in f.details)),
}


def resolved_hint_keys(report: Report) -> dict[tuple[str, str], str]:
    """``{(hint id, phase): fix id}`` for every hint an applied fix resolved.

    A hint's own ``resolved_by`` wins; otherwise :data:`FIX_RESOLVES` decides from the applied
    fixes. Example::

        >>> from perfcallbacks.hints import REGISTRY
        >>> h = REGISTRY["int8-available"].make("inference", "int8 would be faster.", "auto_apply=True")
        >>> r = Report(hints=[h], fixes=[FixResult("dynamic-quantization", "applied", "faster")])
        >>> resolved_hint_keys(r)
        {('int8-available', 'inference'): 'dynamic-quantization'}
    """
    out: dict[tuple[str, str], str] = {}
    applied = [f for f in report.fixes if f.applied]
    for hint in report.hints:
        if hint.resolved_by:
            out[(hint.id, hint.phase)] = hint.resolved_by
            continue
        for fix in applied:
            for hint_id, test in FIX_RESOLVES.get(fix.id, ()):
                try:
                    ok = hint_id == hint.id and (test is None or test(fix))
                except Exception:  # noqa: BLE001 - odd details from an old report: not resolved
                    ok = False
                if ok:
                    out[(hint.id, hint.phase)] = fix.id
    return out


def mark_resolved(report: Report) -> Report:
    """Set ``resolved_by`` on every hint an applied fix resolved (in place); returns the report."""
    keys = resolved_hint_keys(report)
    for hint in report.hints:
        fix_id = keys.get((hint.id, hint.phase))
        if fix_id and not hint.resolved_by:
            hint.resolved_by = fix_id
    return report


def write_atomic(path: Path, text: str) -> Path:
    if path.is_dir():
        raise IsADirectoryError(f"report path {str(path)!r} is a directory; give a file path such as {str(path / 'perf_hints.json')!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # No fsync: the rename is what makes a crashed process leave the old or the
            # new file, never half of one; fsync would add ~7 ms per write (measured).
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def save_report_safely(report: Report, path: str | os.PathLike | None) -> Path | None:
    """Save, turning any I/O failure into a logged warning (never an exception)."""
    if path is None:
        return None
    try:
        return report.save(path)
    except Exception as err:  # noqa: BLE001 - principle 1: never break the user's run
        import warnings

        from perfcallbacks.hints import PerfCallbacksIOWarning

        log.warning("perfcallbacks could not write the report to %s: %s", path, err)
        try:  # its own category: silencing hints never hides a lost report; an error filter never raises
            warnings.warn(f"perfcallbacks could not write the report to {path}: {err}", PerfCallbacksIOWarning,
                          stacklevel=2)
        except Warning:
            pass
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """Coerce numbers from numpy/torch and tuples so json.dumps never fails."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return round(value, 6) if value == value and value not in (float("inf"), float("-inf")) else None
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _jsonable(item())
        except Exception:
            pass
    return str(value)
