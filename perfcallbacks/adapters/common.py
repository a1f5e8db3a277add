"""Framework-free helpers shared by the Lightning and HF adapters.

Nothing here imports Lightning or transformers: the adapters collect facts from
their framework and hand plain values to these helpers, so both behave the same
(same default report path, same containment of internal errors, same fix lines).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from perfcallbacks.report import FixResult

log = logging.getLogger("perfcallbacks")

REPORT_FILENAME = "perf_hints.json"
# Strategy / launcher names that mean "distributed data/model parallel" (lower-cased substrings).
_DISTRIBUTED_NAMES = ("ddp", "fsdp", "deepspeed", "distributed", "model_parallel", "modelparallel", "xla")

F = TypeVar("F", bound=Callable[..., Any])


# -- principle 1 -------------------------------------------------------------------
def safe_hook(fn: F) -> F:
    """Decorate an adapter hook: time it into ``self._hook_s`` and swallow any internal error.

    The instance must have a float ``_hook_s`` attribute. An exception is logged
    at DEBUG and the hook returns ``None``: our bugs never reach the user's run.

    Example::

        class Cb:
            _hook_s = 0.0

            @safe_hook
            def on_step(self):
                raise RuntimeError("bug")  # logged at DEBUG, not raised

        Cb().on_step()
    """

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_off", False):  # PERFHINTS=off: a no-op
            return None
        start = time.perf_counter()
        advisor = getattr(self, "_advisor", None)
        meter = advisor.timed() if advisor is not None else contextlib.nullcontext()
        try:
            with meter:  # the one overhead meter (nested advisor work is counted once)
                return fn(self, *args, **kwargs)
        except Exception as err:  # principle 1: never raise into training
            if is_deliberate(err):
                raise  # fail_on / a hint warning turned into an error: the user asked for it
            log.debug("perfcallbacks: %s failed", fn.__qualname__, exc_info=True)
            return None
        finally:
            self._hook_s += time.perf_counter() - start

    return wrapper  # type: ignore[return-value]


def deliberate(err: BaseException) -> BaseException:
    """Mark an exception the user asked for (``fail_on``, warnings as errors) so containment lets it through."""
    err._perfcallbacks_deliberate = True  # type: ignore[attr-defined]
    return err


def is_deliberate(err: BaseException) -> bool:
    return bool(getattr(err, "_perfcallbacks_deliberate", False))


def raise_requested(advisor: Any, *, fail_on: bool = True) -> None:
    """Raise (marked deliberate) what the user asked for: a hint warning a filter turned into an error,
    then (``fail_on=True``, at the end of a stage) ``fail_on``'s :class:`~perfcallbacks.PerfHintError`."""
    if advisor is None:
        return
    try:
        advisor.raise_deferred(fail_on=fail_on)
    except Exception as err:
        raise deliberate(err) from None


# -- report and logging -------------------------------------------------------------
def default_report_path(report_path: str | Path | None, log_dir: str | Path | None) -> Path | None:
    """Where the report goes: the explicit path, else ``<log_dir>/perf_hints.json``, else nowhere.

    Example::

        >>> str(default_report_path(None, "/tmp/run"))
        '/tmp/run/perf_hints.json'
        >>> default_report_path(None, None) is None
        True
    """
    if report_path is not None:
        return Path(report_path)
    if log_dir is None or str(log_dir) == "":
        return None
    return Path(log_dir) / REPORT_FILENAME


def is_distributed_name(name: str | None) -> bool:
    """True for strategy / launcher names of distributed (multi-process) training."""
    low = (name or "").lower()
    return any(key in low for key in _DISTRIBUTED_NAMES)


def find_pad_token_id(model: Any, tokenizer: Any = None) -> int | None:
    """The pad token id: the tokenizer's, else an HF-style ``config`` on the model or one of its children."""
    def pad_of(source: Any) -> int | None:
        pad = getattr(source, "pad_token_id", None)
        return pad if isinstance(pad, int) and not isinstance(pad, bool) else None

    found = pad_of(tokenizer)
    if found is None and isinstance(model, nn.Module):
        for module in model.modules():
            found = pad_of(getattr(module, "config", None))
            if found is not None:
                break
    elif found is None:
        found = pad_of(getattr(model, "config", None))
    return found


# -- example batches ---------------------------------------------------------------------
class ExampleBatch:
    """Keeps the first batch seen per stage: the real batch probes and guarded fixes measure on.

    Only a reference is kept (no copy): the loader hands out a fresh batch each step.

    Example::

        >>> keep = ExampleBatch()
        >>> keep.offer("predict", [1, 2]); keep.offer("predict", [3])
        True
        False
        >>> keep.get("predict")
        [1, 2]
    """

    def __init__(self) -> None:
        self._batches: dict[str, Any] = {}

    def offer(self, stage: str, batch: Any) -> bool:
        """Keep ``batch`` if it is the first one of ``stage``; True when kept."""
        if batch is None or stage in self._batches:
            return False
        self._batches[stage] = batch
        return True

    def get(self, stage: str) -> Any:
        return self._batches.get(stage)

    def clear(self, stage: str | None = None) -> None:
        if stage is None:
            self._batches.clear()
        else:
            self._batches.pop(stage, None)


def format_fixes(results: list[FixResult]) -> Iterator[str]:
    """One line per fix outcome, for the adapters' verbose output: the numbers labelled, then the reason.

    Example::

        >>> line, = format_fixes([FixResult("dynamic-quantization", "applied", "faster", speedup=1.4,
        ...                                 fidelity={"cosine_min": 0.993, "rows": 96.0}, cost_s=0.8)])
        >>> print(line)
        perfcallbacks fix [dynamic-quantization] applied: 1.40x, min cosine 0.9930 on 96 rows, measuring cost 0.80 s - faster
    """
    for r in results:
        parts = [] if r.speedup is None else [f"{r.speedup:.2f}x"]
        fid = r.fidelity or {}
        rows = f" on {int(fid['rows'])} rows" if fid.get("rows") else ""
        if fid.get("cosine_min") is not None:
            parts.append(f"min cosine {fid['cosine_min']:.4f}{rows}")
        if fid.get("argmax_agreement") is not None:
            parts.append(f"agreement {fid['argmax_agreement']:.3f}{'' if parts[1:] else rows}")
        if getattr(r, "cost_s", None):
            parts.append(f"measuring cost {r.cost_s:.2f} s")
        numbers = f" {', '.join(parts)} -" if parts else ""
        yield f"perfcallbacks fix [{r.id}] {r.status}:{numbers} {r.reason}"
