"""Hints: the result type, the spec type, and the registry of every hint id with its docs.

Ids are API (used in ``suppress``, tests and reports): never rename or remove
one. Each registry entry documents *what* fires it, *why* it costs time and the
*fix*, in the spirit of ``ruff rule`` and Hypothesis' ``HealthCheck``.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# Closed sets: the Literal is what a type checker sees, the tuple what runtime code iterates and
# validates against (tests/test_types.py keeps the two equal, in order: severity rank is the index).
Severity = Literal["info", "warning", "critical"]
Phase = Literal["setup", "warmup", "inference", "export"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
PHASES: tuple[Phase, ...] = ("setup", "warmup", "inference", "export")
CATEGORIES = ("device", "precision", "alignment", "batch", "padding", "data", "inference", "model",
              "debug", "distributed", "compile", "layout")


class PerfHintWarning(UserWarning):
    """Category of every warning perfcallbacks emits for a hint.

    Example::

        >>> import warnings
        >>> from perfcallbacks import PerfHintWarning
        >>> warnings.filterwarnings("ignore", category=PerfHintWarning)
    """


class PerfCallbacksIOWarning(UserWarning):
    """perfcallbacks could not do its own I/O (e.g. write the report). Not a :class:`PerfHintWarning`,
    so a filter that silences hints never hides a lost report.

    Example::

        >>> import warnings
        >>> from perfcallbacks.hints import PerfCallbacksIOWarning, PerfHintWarning
        >>> issubclass(PerfCallbacksIOWarning, PerfHintWarning), issubclass(PerfCallbacksIOWarning, UserWarning)
        (False, True)
    """


class PerfHintError(RuntimeError):
    """Raised at the end of a stage when ``fail_on`` is set and a hint at or above that severity was found.

    ``hints`` holds the hints that triggered it.

    Example::

        >>> from perfcallbacks.hints import PerfHintError
        >>> str(PerfHintError("1 hint at or above 'warning'", hints=[]))
        "1 hint at or above 'warning'"
    """

    def __init__(self, message: str, hints: list[Hint] | None = None) -> None:
        super().__init__(message)
        self.hints = list(hints or [])


@dataclass
class Hint:
    """One measured finding, exactly as it appears in the report JSON."""

    id: str
    category: str
    severity: Severity
    phase: Phase
    message: str
    fix: str
    evidence: dict[str, Any] = field(default_factory=dict)
    impact: float | None = None
    # Kept in the report but left out of tables and warnings (``suppress=`` or a warnings filter).
    suppressed: bool = False
    # Id of the applied fix that made this finding moot (e.g. int8-available after dynamic-quantization).
    resolved_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "category": self.category,
            "severity": self.severity,
            "phase": self.phase,
            "message": self.message,
            "fix": self.fix,
            "evidence": dict(self.evidence),
            "impact": self.impact,
        }
        if self.suppressed:  # written only when set: reports without them read as before
            data["suppressed"] = True
        if self.resolved_by:
            data["resolved_by"] = self.resolved_by
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hint:
        return cls(
            id=data["id"],
            category=data["category"],
            severity=data["severity"],
            phase=data["phase"],
            message=data["message"],
            fix=data["fix"],
            evidence=dict(data.get("evidence") or {}),
            impact=data.get("impact"),
            suppressed=bool(data.get("suppressed", False)),
            resolved_by=data.get("resolved_by") or None,
        )

    @property
    def severity_rank(self) -> int:
        return SEVERITIES.index(self.severity)


@dataclass(frozen=True, kw_only=True)
class HintSpec:
    """Registry entry: metadata and documentation of one hint id."""

    id: str
    category: str
    severity: Severity
    title: str
    what: str
    why: str
    fix: str
    # Evidence keys every hint of this id carries (tests/test_hints_from_registry.py holds the check to it).
    evidence: tuple[str, ...] = ()
    # The guarded fix (``FixResult.id``) that answers this hint, if any; ``report.FIX_RESOLVES`` says when.
    fix_id: str | None = None

    def make(
        self,
        phase: Phase,
        message: str,
        fix: str,
        evidence: dict[str, Any] | None = None,
        impact: float | None = None,
        severity: Severity | None = None,
    ) -> Hint:
        """Build a :class:`Hint` of this id; checks call this so metadata stays in one place."""
        return Hint(
            id=self.id,
            category=self.category,
            severity=severity or self.severity,
            phase=phase,
            message=message,
            fix=fix,
            evidence=dict(evidence or {}),
            impact=None if impact is None else round(float(impact), 2),
        )

    def explain(self) -> str:
        return (
            f"{self.id}  ({self.category}, default severity {self.severity})\n"
            f"{self.title}\n\n"
            f"What it does\n  {self.what}\n\n"
            f"Why it matters\n  {self.why}\n\n"
            f"Fix\n  {self.fix}\n\n"
            f"Silence it\n"
            f"  PerfHintCallback(suppress=[\"{self.id}\"])  /  HFPerfHints(suppress=[\"{self.id}\"])\n"
            f"  or: warnings.filterwarnings(\"ignore\", message=r\"\\[{self.id}\\]\", category=PerfHintWarning)\n"
        )


class HintRegistry(Mapping[str, HintSpec]):
    """Every hint's spec by id, in :data:`CATEGORIES` order.

    Each spec is declared beside its check (``perfcallbacks/checks/<category>.py``) and registered by
    ``@check``; the first lookup imports the checks package, which needs no torch (``perfhints run``
    validates ``suppress`` ids in a parent process that never loads it).
    """

    def __init__(self) -> None:
        self._specs: dict[str, HintSpec] = {}
        self._loaded = self._loading = False

    def register(self, spec: HintSpec) -> None:
        if self._specs.get(spec.id, spec) is not spec:
            raise ValueError(f"hint id {spec.id!r} is registered twice")
        if spec.category not in CATEGORIES:
            raise ValueError(f"hint {spec.id!r}: unknown category {spec.category!r}; allowed: {CATEGORIES}")
        self._specs[spec.id] = spec

    def _all(self) -> dict[str, HintSpec]:
        if not (self._loaded or self._loading):
            self._loading = True  # the checks' own lookups while they load see what is registered so far
            try:
                importlib.import_module("perfcallbacks.checks")
                self._loaded = True
            finally:
                self._loading = False
        return self._specs

    def __getitem__(self, hint_id: str) -> HintSpec:
        return self._all()[hint_id]

    def __contains__(self, hint_id: object) -> bool:
        return hint_id in self._all()

    def __iter__(self) -> Iterator[str]:
        specs = self._all()
        return iter(sorted(specs, key=lambda hint_id: CATEGORIES.index(specs[hint_id].category)))

    def __len__(self) -> int:
        return len(self._all())


REGISTRY = HintRegistry()


def spec(hint_id: str) -> HintSpec:
    """Registry entry for ``hint_id``; unknown ids raise with close matches."""
    try:
        return REGISTRY[hint_id]
    except KeyError:
        raise ValueError(unknown_id_message("hint id", hint_id)) from None


def unknown_id_message(argument: str, hint_id: Any) -> str:
    from perfcallbacks.device import close_matches  # lazy: device imports torch, the CLI parent must not

    matches = close_matches(str(hint_id), list(REGISTRY))
    maybe = f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    return f"{argument}: unknown hint id {hint_id!r}.{maybe} Known ids: {', '.join(sorted(REGISTRY))}"


def validate_suppress(suppress: Iterable[str] | str | None, argument: str = "suppress") -> frozenset[str]:
    """Validate a ``suppress`` argument: every id must exist (a typo must not silence nothing)."""
    if suppress is None:
        return frozenset()
    if isinstance(suppress, str):
        raise TypeError(f"{argument} must be a list of hint ids, not a single string; got {suppress!r} "
                        f"(write [{suppress!r}])")
    try:
        ids = list(suppress)
    except TypeError:
        raise TypeError(f"{argument} must be an iterable of hint ids, got {type(suppress).__name__}") from None
    for hint_id in ids:
        if hint_id not in REGISTRY:
            raise ValueError(unknown_id_message(argument, hint_id))
    return frozenset(ids)


# -- warnings at the user's code -----------------------------------------------------------------
# Frames in these packages (and the standard library) are never "the user's code".
LIBRARY_PACKAGES = ("perfcallbacks", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities",
                    "transformers", "accelerate", "torch", "_perfhints_hook")


def _library_dirs() -> tuple[str, ...]:
    import os
    import sys
    import sysconfig

    dirs = []
    for name in LIBRARY_PACKAGES:
        module = sys.modules.get(name)  # never import a framework just to skip its frames
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)) + (os.sep if name != "_perfhints_hook" else ""))
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.append(os.path.abspath(path) + os.sep)
    # perfcallbacks itself, even when imported under another name in tests
    dirs.append(os.path.dirname(os.path.abspath(__file__)) + os.sep)
    return tuple(dirs)


def _is_library_file(filename: str, dirs: tuple[str, ...]) -> bool:
    import os

    if filename.startswith("<frozen") or filename.startswith("<__array_function__"):
        return True
    if filename.startswith("<"):
        return False  # <stdin>, <string>, notebook cells: code the user typed
    path = os.path.abspath(filename)
    return path.startswith(dirs) or os.sep + "site-packages" + os.sep + "_pytest" + os.sep in path


def user_code_location(obj: Any = None) -> tuple[str, int] | None:
    """``(filename, line)`` of the user's code a hint should point at, or ``None``.

    With ``obj`` (a class or an instance, e.g. the ``LightningModule`` or ``nn.Module``): the
    line that defines its class, when that class is the user's own (not a library class such as
    ``BertForSequenceClassification``). Otherwise (or as fallback): the innermost stack frame
    outside perfcallbacks, Lightning, transformers, accelerate, torch and the standard library:
    in a callback hook that is the user's ``trainer.fit(...)`` / ``trainer.train()`` line.

    Example::

        >>> from perfcallbacks.hints import user_code_location
        >>> class MyNet: ...
        >>> user_code_location(MyNet) is None or isinstance(user_code_location(MyNet)[1], int)
        True
    """
    import inspect
    import sys

    dirs = _library_dirs()
    if obj is not None:
        cls = obj if isinstance(obj, type) else type(obj)
        try:
            filename = inspect.getsourcefile(cls)
            if filename and not _is_library_file(filename, dirs):
                return filename, inspect.getsourcelines(cls)[1]
        except (TypeError, OSError):
            pass  # built in, defined in a REPL without source, or the file is gone: use the stack
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_library_file(filename, dirs):
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def _stacklevel_leaving_library() -> int:
    """``stacklevel`` for a ``warnings.warn`` made in :func:`warn_hint` that lands outside the libraries."""
    import sys

    dirs = _library_dirs()
    level, frame = 1, sys._getframe(1)  # level 1 = warn_hint's own frame as warnings.warn counts
    while frame is not None and _is_library_file(frame.f_code.co_filename, dirs):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def gain_is_stated(hint: Hint) -> bool:
    """True when the hint has no gain or its message already gives it (``1.35x``): then it is said once."""
    return hint.impact is None or f"{hint.impact:.2f}x" in hint.message


def format_hint_warning(hint: Hint) -> str:
    """The warning text: evidence -> why -> fix -> how to silence this one -> where to read more.

    Starts with ``[id]`` so ``warnings.filterwarnings("ignore", message=r"\\[padding-waste\\]")`` works.

    Example::

        >>> from perfcallbacks.hints import REGISTRY, format_hint_warning
        >>> h = REGISTRY["padding-waste"].make("warmup", "61% padding.", "DataCollatorWithPadding(tok)")
        >>> print("\\n".join(format_hint_warning(h).splitlines()[:2]))
        [padding-waste] Most of the batch is padding
          61% padding.
    """
    import shutil
    import textwrap

    # Prose is wrapped at word boundaries for the terminal; code lines never are (paste-able).
    width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
    entry = REGISTRY.get(hint.id)
    # Line 1 is short: it shares the terminal line with "file.py:LINE: PerfHintWarning: ".
    lines = [f"[{hint.id}] {entry.title}" if entry is not None and entry.title else f"[{hint.id}]"]
    body = hint.message + ("" if gain_is_stated(hint) else f" (estimated {hint.impact:.2f}x)")
    wrap = {"width": width, "break_long_words": False, "break_on_hyphens": False}
    lines += textwrap.wrap(body, initial_indent="  ", subsequent_indent="  ", **wrap)
    if entry is not None and entry.why:
        lines += textwrap.wrap(f"why: {entry.why}", initial_indent="  ", subsequent_indent="    ", **wrap)
    lines.append("  fix:")
    lines.extend(f"    {line}" for line in hint.fix.splitlines() or [""])
    lines.append(f'  silence this one: suppress=["{hint.id}"] (or PERFHINTS_SUPPRESS={hint.id})')
    lines.append(f"  more: perfhints explain {hint.id}")
    return "\n".join(lines)


def warn_hint(hint: Hint, stacklevel: int | None = None, *, user_frame: Any = None) -> None:
    """Emit ``hint`` as a :class:`PerfHintWarning` (the caller guarantees once and rank zero).

    ``user_frame`` is where the warning points: a ``(filename, line)`` pair (see
    :func:`user_code_location`) or a frame object; it is emitted there with
    ``warnings.warn_explicit``, so ``filterwarnings(..., module=...)`` and the printed location
    are the user's. Without it, ``stacklevel`` (default: the first frame outside the libraries).
    A filter that turns the warning into an error makes this raise: use
    :func:`emit_hint_warning` where that must not stop the caller.
    """
    message = format_hint_warning(hint)
    location = user_frame
    if location is not None and hasattr(location, "f_code"):
        location = (location.f_code.co_filename, location.f_lineno)
    if location is not None:
        import sys

        filename, lineno = str(location[0]), int(location[1])
        module = next((name for name, mod in list(sys.modules.items())
                       if getattr(mod, "__file__", None) == filename), None)
        if module is None:
            module = filename[:-3] if filename.endswith(".py") else filename
        with _bars_cleared():
            warnings.warn_explicit(message, PerfHintWarning, filename, lineno, module=module,
                                   registry=_WARN_REGISTRY.setdefault(filename, {}))
        return
    level = stacklevel if stacklevel is not None else _stacklevel_leaving_library()
    with _bars_cleared():
        warnings.warn(message, PerfHintWarning, stacklevel=level)


def _bars_cleared() -> Any:
    """A context in which a printed warning does not land on a tqdm progress bar's line."""
    from perfcallbacks.output import progress_safe

    return progress_safe()


# Per-file registries for warn_explicit: "default"/"once" actions then deduplicate as for warnings.warn.
_WARN_REGISTRY: dict[str, dict] = {}


def emit_hint_warning(hint: Hint, *, user_frame: Any = None, stacklevel: int | None = None) -> BaseException | None:
    """Warn about ``hint`` without ever stopping the caller; returns the error a filter made of it.

    With ``warnings.simplefilter("error", PerfHintWarning)`` (or ``-W error``) the warning is
    raised; here it is caught and returned, so observation goes on and the hint is still recorded.
    The caller keeps the first returned error and re-raises it at the documented point: **at the
    end of the warm-up** for training hints (after the table is shown and the report written) and
    **at the end of the stage** for inference hints. Any other failure of the warnings machinery
    (a broken ``showwarning``) is logged at DEBUG and returns ``None``.

    Example::

        >>> import warnings
        >>> from perfcallbacks.hints import REGISTRY, emit_hint_warning
        >>> h = REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", PerfHintWarning)
        ...     err = emit_hint_warning(h)
        >>> type(err).__name__
        'PerfHintWarning'
    """
    try:
        warn_hint(hint, stacklevel, user_frame=user_frame)
    except Warning as err:  # a filter turned it into an exception: the caller decides when to raise
        return err
    except Exception:  # noqa: BLE001 - principle 1: our warning never breaks the run
        import logging

        logging.getLogger("perfcallbacks").debug("perfcallbacks: could not emit a warning", exc_info=True)
    return None


def hint_silenced_by_filters(hint: Hint, location: tuple[str, int] | None = None) -> bool:
    """True when the active warnings filters would ignore this hint's warning.

    Lets tables drop what the user silenced with ``warnings.filterwarnings("ignore", ...)``
    (one way to silence: a filtered hint is marked ``suppressed`` like ``suppress=``).

    Example::

        >>> import warnings
        >>> from perfcallbacks.hints import REGISTRY, hint_silenced_by_filters
        >>> h = REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")
        >>> with warnings.catch_warnings():
        ...     warnings.filterwarnings("ignore", message=r"\\[gpu-unused\\]")
        ...     hint_silenced_by_filters(h)
        True
    """
    import re

    text = format_hint_warning(hint)
    filename, lineno = location or ("", 0)
    module = filename[:-3] if filename.endswith(".py") else filename
    for action, msg, category, mod, line in warnings.filters:
        if msg is not None and not (msg.match(text) if hasattr(msg, "match") else re.match(msg, text, re.I)):
            continue
        if not issubclass(PerfHintWarning, category):
            continue
        if mod is not None and location is not None and not (mod.match(module) if hasattr(mod, "match") else
                                                             re.match(mod, module)):
            continue
        if mod is not None and location is None and getattr(mod, "pattern", mod) not in ("", ".*"):
            continue  # a module-scoped filter cannot be judged without a location
        if line and location is not None and line != lineno:
            continue
        return action == "ignore"
    return False
