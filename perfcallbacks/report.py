"""The report (schema ``perfcallbacks/report-v1``): JSON in and out, written atomically."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfcallbacks.hints import Hint

SCHEMA = "perfcallbacks/report-v1"
FIX_STATUSES = ("applied", "rejected", "skipped", "failed")

log = logging.getLogger(__name__)


@dataclass
class FixResult:
    """Outcome of one guarded fix, as it appears in the report's ``fixes`` list."""

    id: str
    status: str
    reason: str
    speedup: float | None = None
    fidelity: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

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
        if self.details:
            data["details"] = _jsonable(self.details)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FixResult:
        return cls(id=data["id"], status=data["status"], reason=data.get("reason", ""),
                   speedup=data.get("speedup"), fidelity=dict(data.get("fidelity") or {}),
                   details=dict(data.get("details") or {}))


@dataclass
class Report:
    """Everything one run found: hints, fixes, the device and the advisor's own cost.

    Example::

        >>> from perfcallbacks import Report
        >>> report = Report(framework="torch", device={"kind": "cpu"})
        >>> Report.from_json(report.to_json()).framework
        'torch'
    """

    framework: str = "torch"
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

    def hint(self, hint_id: str) -> Hint | None:
        return next((h for h in self.hints if h.id == hint_id), None)

    @property
    def hint_ids(self) -> list[str]:
        return [h.id for h in self.hints]

    def render(self, color: bool | None = None) -> str:
        from perfcallbacks.render import render_report

        return render_report(self, color=color)


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

        from perfcallbacks.hints import PerfHintWarning

        log.warning("perfcallbacks could not write the report to %s: %s", path, err)
        warnings.warn(f"perfcallbacks could not write the report to {path}: {err}", PerfHintWarning, stacklevel=2)
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
