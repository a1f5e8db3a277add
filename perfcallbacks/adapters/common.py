"""Framework-free helpers shared by the Lightning and HF adapters.

Nothing here imports Lightning or transformers: the adapters collect facts from
their framework and hand plain values to these helpers, so both behave the same
(same default report path, same logged metrics, same inference-fix sequence).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from perfcallbacks.hints import SEVERITIES
from perfcallbacks.report import FixResult, Report

log = logging.getLogger("perfcallbacks")

REPORT_FILENAME = "perf_hints.json"
METRIC_PREFIX = "perf_hints"
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


def hint_count_metrics(report: Report) -> dict[str, float]:
    """Scalars for experiment loggers: total hints, count per severity, applied fixes.

    Example::

        >>> from perfcallbacks import Report
        >>> hint_count_metrics(Report())["perf_hints/count"]
        0.0
    """
    metrics = {f"{METRIC_PREFIX}/count": float(len(report.hints))}
    for severity in SEVERITIES:
        metrics[f"{METRIC_PREFIX}/{severity}"] = float(sum(h.severity == severity for h in report.hints))
    metrics[f"{METRIC_PREFIX}/fixes_applied"] = float(sum(f.applied for f in report.fixes))
    return metrics


def is_distributed_name(name: str | None) -> bool:
    """True for strategy / launcher names of distributed (multi-process) training."""
    low = (name or "").lower()
    return any(key in low for key in _DISTRIBUTED_NAMES)


def find_pad_token_id(model: nn.Module | None) -> int | None:
    """The pad token id from an HF-style ``config`` on the model or one of its children."""
    if model is None:
        return None
    for module in model.modules():
        config = getattr(module, "config", None)
        pad = getattr(config, "pad_token_id", None)
        if isinstance(pad, int) and not isinstance(pad, bool):
            return pad
    return None


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


# -- module swapping (int8 for inference, fp32 for checkpoints) -------------------------
class ModuleSwap:
    """Swap the submodules that differ between ``target`` and ``replacement`` into ``target``.

    Used for the int8 fix: :func:`~perfcallbacks.fixes.quantize_guarded` returns a
    quantized *copy*; its replaced layers are swapped into the user's module
    (which keeps its trainer, hooks and methods) for inference, and the fp32
    originals are put back by :meth:`restore` (checkpoints keep fp32 weights).

    Example::

        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> other = torch.nn.Sequential(torch.nn.Identity())
        >>> swap = ModuleSwap(model, other)
        >>> type(model[0]).__name__, swap.names
        ('Identity', ['0'])
        >>> swap.restore(); type(model[0]).__name__
        'Linear'
    """

    def __init__(self, target: nn.Module, replacement: nn.Module) -> None:
        self.target = target
        self.originals: dict[str, nn.Module] = {}
        new_modules = dict(replacement.named_modules())
        for name, module in list(target.named_modules()):
            if not name or any(name.startswith(done + ".") for done in self.originals):
                continue
            new = new_modules.get(name)
            if new is not None and type(new) is not type(module):
                self.originals[name] = module
        for name in self.originals:
            _set_submodule(target, name, new_modules[name])

    @property
    def names(self) -> list[str]:
        return list(self.originals)

    @property
    def active(self) -> bool:
        return bool(self.originals)

    def restore(self) -> None:
        for name, module in self.originals.items():
            _set_submodule(self.target, name, module)
        self.originals = {}

    def fp32_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """``state_dict`` with every swapped module's entries replaced by its fp32 original's."""
        if not self.originals:
            return state_dict
        prefixes = tuple(f"{name}." for name in self.originals)
        clean = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
        for name, module in self.originals.items():
            for key, value in module.state_dict().items():
                clean[f"{name}.{key}"] = value
        return type(state_dict)(clean) if isinstance(state_dict, dict) else clean


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


# -- autocast wrapping --------------------------------------------------------------------
class MethodPatch:
    """Run some bound methods of an object inside a context manager; :meth:`restore` undoes it.

    The patch is an instance attribute shadowing the class method, so removing
    it restores the original exactly (nothing is written on the class).

    Example::

        >>> import contextlib, torch
        >>> model = torch.nn.Linear(2, 2)
        >>> patch = MethodPatch(model, ("forward",), contextlib.nullcontext)
        >>> "forward" in vars(model)
        True
        >>> patch.restore(); "forward" in vars(model)
        False
    """

    def __init__(self, obj: Any, names: tuple[str, ...],
                 ctx_factory: Callable[[], AbstractContextManager[Any]]) -> None:
        self.obj = obj
        self.patched: dict[str, Any] = {}
        for name in names:
            method = getattr(obj, name, None)
            if method is None or name in vars(obj):
                continue
            self.patched[name] = method
            setattr(obj, name, _in_context(method, ctx_factory))

    def restore(self) -> None:
        for name in self.patched:
            try:
                delattr(self.obj, name)
            except AttributeError:
                pass
        self.patched = {}


def _in_context(method: Callable[..., Any], ctx_factory: Callable[[], AbstractContextManager[Any]]
                ) -> Callable[..., Any]:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with ctx_factory():
            return method(*args, **kwargs)

    return run


# -- inference fixes shared by both adapters ----------------------------------------------
def run_inference_fixes(advisor: Any, model: nn.Module, batch: Any, *, stage: str,
                        physical_cores: int, local_processes: int = 1
                        ) -> tuple[list[FixResult], Callable[[], AbstractContextManager[Any]] | None,
                                   nn.Module | None]:
    """Measure and record the inference fixes for ``model`` on a real ``batch``.

    On CPU: ``threads`` (measured best intra-op count) and, for ``predict``,
    ``dynamic-quantization``. On an accelerator: ``autocast``. Each outcome is
    recorded with ``advisor.record_fix``. Returns ``(results, autocast factory
    or None, int8 model or None)``; applying the autocast / int8 model to the
    framework's module is the adapter's job. Never raises.
    """
    results: list[FixResult] = []
    amp_factory = None
    int8_model = None
    try:
        from perfcallbacks.fixes import guarded_autocast, quantize_guarded, tune_threads
        from perfcallbacks.fixes._guard import model_device
    except Exception as err:  # fixes not installed / broken: report, do not raise
        log.debug("perfcallbacks: fixes unavailable", exc_info=True)
        results.append(advisor.record_fix(FixResult("threads", "skipped", f"fixes unavailable: {err}")))
        return results, None, None
    try:
        on_cpu = model_device(model).type == "cpu"
        if on_cpu:
            threads = advisor.record_fix(tune_threads(
                model, batch, physical_cores=max(1, int(physical_cores)),
                local_processes=max(1, int(local_processes))))
            results.append(threads)
            record_measurement(advisor, threads)
            if stage == "predict":
                result, new_model = quantize_guarded(model, batch)
                results.append(advisor.record_fix(result))
                record_measurement(advisor, result)
                if result.applied and new_model is not model:
                    int8_model = new_model
        else:
            result, amp_factory = guarded_autocast(model, batch, profile=advisor.context.local)
            results.append(advisor.record_fix(result))
    except Exception:  # principle 1
        log.debug("perfcallbacks: inference fixes failed", exc_info=True)
    return results, amp_factory, int8_model


def record_measurement(advisor: Any, result: FixResult) -> None:
    """Hand a fix's measurement to the inference checks (a measured number beats an estimate)."""
    measurements = advisor.context.measurements
    if result.id == "dynamic-quantization" and result.speedup is not None:
        measurements["int8"] = {"speedup": result.speedup, "fidelity": dict(result.fidelity),
                                "source": "fix", "status": result.status}
    elif result.id == "threads" and result.details.get("timings_s"):
        import torch

        measurements["threads"] = {"current": torch.get_num_threads(),
                                   "latency_s": {str(k): v for k, v in result.details["timings_s"].items()},
                                   "source": "fix"}


def format_fixes(results: list[FixResult]) -> Iterator[str]:
    """One line per fix outcome, for the adapters' verbose output."""
    for r in results:
        speed = "" if r.speedup is None else f" speedup {r.speedup:.2f}x"
        fid = r.fidelity or {}
        cos = fid.get("cosine_min", fid.get("cosine_mean"))
        fidel = "" if cos is None else f", cosine {cos:.4f}"
        agree = fid.get("argmax_agreement")
        fidel += "" if agree is None else f", argmax agreement {agree:.3f}"
        yield f"perfcallbacks fix [{r.id}] {r.status}:{speed}{fidel} - {r.reason}"


def cap_training_threads(advisor: Any) -> FixResult | None:
    """``threads`` fix at train start: never more intra-op threads than this process's share
    of the physical cores (both adapters). Records and returns the outcome; ``None`` off CPU."""
    from perfcallbacks.fixes import training_thread_cap

    ctx = advisor.context
    if ctx.model_device != "cpu":
        return None
    cores = max(1, int(ctx.local.physical_cores or os.cpu_count() or 1))
    processes = max(1, int(ctx.local_world_size))
    cap = training_thread_cap(cores, processes)
    previous = torch.get_num_threads()
    details = {"previous": previous, "cap": cap, "physical_cores": cores, "local_processes": processes}
    if previous > cap:
        torch.set_num_threads(cap)
        details["chosen"] = cap
        return advisor.record_fix(FixResult(
            "threads", "applied", f"training: {processes} process(es) x {previous} threads > {cores} physical "
            f"cores; set {cap} per process", details=details))
    return advisor.record_fix(FixResult(
        "threads", "skipped", f"training: {previous} intra-op threads per process already within the "
        f"{cap}-thread cap", details=details))
