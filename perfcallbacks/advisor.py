"""The framework-agnostic engine: collects a :class:`RunContext`, runs checks, keeps the report.

Adapters (Lightning, HF) and plain loops drive the same :class:`Advisor`.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfcallbacks.context import (
    BatchStats,
    LoaderInfo,
    RunContext,
    ThreadPicture,
    dominant_param_dtype,
    model_device_kind,
)
from perfcallbacks.device import DeviceProfile, resolve_target
from perfcallbacks.facts import capture_process_facts
from perfcallbacks.hints import SEVERITIES, Hint, validate_suppress, warn_hint
from perfcallbacks.observe import BatchObserver, StepTimer, batch_stats
from perfcallbacks.report import FixResult, Report, save_report_safely

log = logging.getLogger("perfcallbacks")

# Batches summarised for inference checks (repeated-inputs, padding in predict).
INFERENCE_BATCHES_OBSERVED = 32


def validate_common_args(*, warmup_steps: Any, target: Any, suppress: Any, report_path: Any,
                         latency_budget_ms: Any, auto_apply: Any, verbose: Any) -> dict[str, Any]:
    """Validate the keyword arguments shared by the Advisor and both callbacks."""
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
            raise TypeError(f"report_path must be None or a file path (str or Path), got {type(report_path).__name__}")
        if Path(report_path).is_dir():
            raise ValueError(f"report_path must be a file path, got the directory {str(report_path)!r}; "
                             f"try {str(Path(report_path) / 'perf_hints.json')!r}")
    for name, value in (("auto_apply", auto_apply), ("verbose", verbose)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    return {
        "warmup_steps": int(warmup_steps),
        "target": resolve_target(target),
        "suppress": validate_suppress(suppress),
        "report_path": None if report_path is None else Path(report_path),
        "latency_budget_ms": None if latency_budget_ms is None else float(latency_budget_ms),
    }


class Advisor:
    """Looks at a run and produces a :class:`~perfcallbacks.report.Report` of measured hints.

    Usable on its own in a plain PyTorch loop, and the core both callbacks share.

    Args:
        model: the model being trained or served (optional for device-only checks).
        dataloader: the training/inference DataLoader (optional).
        target: a preset name or :class:`DeviceProfile` to judge the run as if it ran there.
        suppress: hint ids never to emit (validated: a typo raises ``ValueError``).
        warmup_steps: steps observed before the advisor goes quiet.
        auto_apply: apply guarded fixes (measured before kept).
        latency_budget_ms: per-batch latency budget for batch-size advice.
        report_path: where :meth:`write_report` writes the JSON by default.
        verbose: print the summary table at the end of warm-up.
        framework: ``"torch"``, ``"lightning"`` or ``"hf"`` (picks the fix snippets).
        warn: emit each new hint once as a :class:`PerfHintWarning`.

    Raises:
        ValueError / TypeError: for bad arguments, naming the argument and what is allowed.

    Example::

        import torch
        from torch.utils.data import DataLoader, TensorDataset
        from perfcallbacks import Advisor

        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        loader = DataLoader(TensorDataset(torch.randn(512, 64), torch.randint(0, 8, (512,))), batch_size=64)
        advisor = Advisor(model, loader, target="a100")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            with advisor.step(x):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward(); opt.step(); opt.zero_grad()
        print(advisor.analyze().render())
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        dataloader: Iterable | None = None,
        *,
        target: str | DeviceProfile | None = None,
        suppress: Iterable[str] = (),
        warmup_steps: int = 20,
        auto_apply: bool = False,
        latency_budget_ms: float | None = None,
        report_path: str | Path | None = None,
        verbose: bool = False,
        framework: str = "torch",
        warn: bool = True,
        local: DeviceProfile | None = None,
    ) -> None:
        args = validate_common_args(warmup_steps=warmup_steps, target=target, suppress=suppress,
                                    report_path=report_path, latency_budget_ms=latency_budget_ms,
                                    auto_apply=auto_apply, verbose=verbose)
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        if framework not in ("torch", "lightning", "hf"):
            raise ValueError(f"framework must be 'torch', 'lightning' or 'hf', got {framework!r}")
        self.warmup_steps: int = args["warmup_steps"]
        self.suppress: frozenset[str] = args["suppress"]
        self.report_path: Path | None = args["report_path"]
        self.auto_apply = auto_apply
        self.verbose = verbose
        self.warn = warn
        self.dataloader = dataloader
        self.context = RunContext(local=local or DeviceProfile.detect(), target=args["target"],
                                  framework=framework, latency_budget_ms=args["latency_budget_ms"])
        self.timer = StepTimer()
        self.hints: dict[str, Hint] = {}
        self.fixes: list[FixResult] = []
        self.check_failures: list[dict[str, str]] = []
        self.warned: set[str] = set()
        self.overhead_s = 0.0
        self.warmup_done = False
        self._observer: BatchObserver | None = None
        self.is_rank_zero = True
        if model is not None:
            self.set_model(model)
        if dataloader is not None:
            self.set_loader(dataloader)

    # -- bookkeeping -------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time spent inside as the advisor's own overhead."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.overhead_s += time.perf_counter() - start

    @property
    def observing(self) -> bool:
        return not self.warmup_done

    # -- collecting context ----------------------------------------------------
    def set_model(self, model: nn.Module) -> None:
        ctx = self.context
        ctx.model = model
        ctx.model_device = model_device_kind(model)
        ctx.param_dtype = dominant_param_dtype(model)

    def set_loader(self, loader: Any) -> None:
        self.context.loader = LoaderInfo.from_loader(loader)

    def capture_threads(self, local_processes: int | None = None) -> ThreadPicture:
        ctx = self.context
        workers = ctx.loader.num_workers if ctx.loader else 0
        ctx.threads = ThreadPicture.capture(
            physical_cores=ctx.local.physical_cores or 1,
            logical_cores=ctx.local.logical_cores or 1,
            local_processes=local_processes or ctx.local_world_size,
            loader_workers=workers,
        )
        return ctx.threads

    def attach_batch_observer(self, model: nn.Module, limit: int | None = None, inference: bool = False) -> None:
        """Observe the model's own inputs (forward pre-hook) for ``limit`` calls, then detach."""
        self.detach_observer()
        limit = self.warmup_steps if limit is None else limit
        self._observer = BatchObserver(model, limit, self._record_inference if inference else self._record_batch,
                                       pad_token_id=self.context.pad_token_id, hash_rows=inference)

    def detach_observer(self) -> None:
        if self._observer is not None:
            self._observer.detach()
            self._observer = None

    def _record_batch(self, stats: BatchStats) -> None:
        if len(self.context.batches) < max(1, self.warmup_steps):
            self.context.batches.append(stats)

    def _record_inference(self, stats: BatchStats) -> None:
        if len(self.context.inference_batches) < INFERENCE_BATCHES_OBSERVED:
            self.context.inference_batches.append(stats)

    def observe_batch(self, batch: Any, inference: bool = False) -> None:
        """Summarise one batch (training by default). Cheap, bounded, never raises."""
        with self.timed():
            target = self.context.inference_batches if inference else self.context.batches
            cap = INFERENCE_BATCHES_OBSERVED if inference else max(1, self.warmup_steps)
            if len(target) >= cap:
                return
            stats = batch_stats(batch, self.context.pad_token_id, hash_rows=inference)
            if stats is not None:
                target.append(stats)

    def observe_inference_call(self, model: nn.Module | None = None) -> None:
        """Record how an inference forward runs (autograd, train mode, autocast)."""
        info = self.context.inference
        info.calls += 1
        info.grad_enabled_calls += int(torch.is_grad_enabled())
        if model is not None:
            info.train_mode_calls += int(model.training)
        info.autocast_calls += int(torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))

    def observe_step(self, step_time_s: float, data_time_s: float | None = None, batch: Any = None) -> None:
        """Feed one step's timing from a hand-written loop (seconds)."""
        with self.timed():
            if self.timer.steps_seen >= 1:
                self.timer.step_times.append(float(step_time_s))
                if data_time_s is not None:
                    self.timer.data_wait_times.append(float(data_time_s))
            self.timer.steps_seen += 1
        if batch is not None:
            self.observe_batch(batch)
        self._maybe_finish_warmup()

    def step_begin(self, batch: Any = None) -> None:
        """Mark the start of a training step (the batch has arrived)."""
        if self.warmup_done:
            return
        with self.timed():
            self.timer.start()
        if batch is not None:
            self.observe_batch(batch)

    def step_end(self) -> None:
        if self.warmup_done:
            return
        with self.timed():
            self.timer.end()
        self._maybe_finish_warmup()

    @contextlib.contextmanager
    def step(self, batch: Any = None) -> Iterator[None]:
        """Context manager around one training step of a plain loop."""
        self.step_begin(batch)
        try:
            yield
        finally:
            self.step_end()

    def _sync_timings(self) -> None:
        self.context.step_times = list(self.timer.step_times)
        self.context.data_wait_times = list(self.timer.data_wait_times)
        self.context.epoch_first_waits = list(self.timer.epoch_first_waits)

    def _maybe_finish_warmup(self) -> None:
        if not self.warmup_done and self.timer.steps_seen >= self.warmup_steps:
            self.finish_warmup()

    def finish_warmup(self) -> list[Hint]:
        """End observation: detach hooks, run the warm-up checks once."""
        if self.warmup_done:
            return []
        self.warmup_done = True
        self.detach_observer()
        self._sync_timings()
        new = self.run_checks("warmup")
        if self.verbose and self.is_rank_zero:
            print(self.summary())
        return new

    # -- checks ------------------------------------------------------------------
    def run_checks(self, phase: str) -> list[Hint]:
        """Run every check registered for ``phase``; returns hints new in this call.

        A check that raises becomes a DEBUG log line and an entry in
        ``check_failures``; the others still run.
        """
        from perfcallbacks.checks import checks_for

        new: list[Hint] = []
        with self.timed():
            ctx = self.context
            ctx.phase = phase
            ctx.matmul_precision = torch.get_float32_matmul_precision()
            if ctx.threads is None:
                self.capture_threads()
            try:
                capture_process_facts(ctx, ctx.model)
            except Exception:  # principle 1
                log.debug("perfcallbacks: could not capture process facts", exc_info=True)
            if phase == "warmup":
                self._sync_timings()
            for chk in checks_for(phase):
                if chk.hint_id in self.suppress:
                    continue
                try:
                    result = chk.fn(ctx)
                except Exception as err:  # principle 1: a check never breaks the run
                    log.debug("perfcallbacks: check %s failed", chk.name, exc_info=True)
                    self.check_failures.append({"check": chk.name, "phase": phase,
                                                "error": f"{type(err).__name__}: {err}"})
                    continue
                for hint in _as_list(result):
                    if hint.id in self.suppress:
                        continue
                    if hint.id not in self.hints:
                        new.append(hint)
                    self.hints[hint.id] = hint
        self.emit_warnings(new)
        return new

    def emit_warnings(self, hints: Iterable[Hint]) -> None:
        """Warn once per hint id, on rank zero only."""
        if not self.warn or not self.is_rank_zero:
            return
        for hint in hints:
            if hint.id not in self.warned:
                self.warned.add(hint.id)
                warn_hint(hint, stacklevel=3)

    def analyze(self, phase: str | None = None) -> Report:
        """Run the checks and return the report.

        Without ``phase``: setup checks, then warm-up checks on what was observed
        (batches are sampled from ``dataloader`` when none were observed yet).
        """
        if phase is not None:
            self.run_checks(phase)
            return self.report
        self.run_checks("setup")
        if not self.context.batches and self.dataloader is not None:
            self._sample_loader()
        if not self.warmup_done:
            self.warmup_done = True
            self.detach_observer()
            self.run_checks("warmup")
        return self.report

    def _sample_loader(self, limit: int = 8) -> None:
        try:
            for index, batch in enumerate(self.dataloader):  # type: ignore[union-attr]
                self.observe_batch(batch)
                if index + 1 >= min(limit, max(1, self.warmup_steps)):
                    break
        except Exception:
            log.debug("perfcallbacks: could not sample the dataloader", exc_info=True)

    def probe_inference(self, model: nn.Module, batch: Any) -> list[Hint]:
        """Measure the model on a real inference batch (threads, int8, batch size), then run
        the inference checks. Probes live in :mod:`perfcallbacks.probes`; a failing probe is
        recorded like a failing check."""
        with self.timed():
            try:
                from perfcallbacks.probes import run_inference_probes

                self.context.measurements.update(run_inference_probes(self.context, model, batch))
            except Exception as err:  # principle 1
                log.debug("perfcallbacks: inference probes failed", exc_info=True)
                self.check_failures.append({"check": "perfcallbacks.probes", "phase": "inference",
                                            "error": f"{type(err).__name__}: {err}"})
        return self.run_checks("inference")

    # -- fixes -------------------------------------------------------------------
    def record_fix(self, result: FixResult) -> FixResult:
        self.fixes = [f for f in self.fixes if f.id != result.id] + [result]
        return result

    # -- report --------------------------------------------------------------------
    @property
    def report(self) -> Report:
        ctx = self.context
        hints = sorted(self.hints.values(), key=lambda h: (-SEVERITIES.index(h.severity), h.id))
        return Report(framework=ctx.framework, device=ctx.local.to_dict(),
                      target=ctx.target.to_dict() if ctx.target else None, hints=hints,
                      fixes=list(self.fixes), overhead_s=self.overhead_s,
                      check_failures=list(self.check_failures))

    def summary(self) -> str:
        return self.report.render()

    def write_report(self, path: str | Path | None = None) -> Path | None:
        """Write the JSON report (rank zero only); I/O failure is a warning, never an exception."""
        if not self.is_rank_zero:
            return None
        return save_report_safely(self.report, path or self.report_path)

    # -- resume ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"hints": [h.to_dict() for h in self.hints.values()], "warned": sorted(self.warned),
                "fixes": [f.to_dict() for f in self.fixes], "warmup_done": self.warmup_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hints = {h["id"]: Hint.from_dict(h) for h in state.get("hints", [])}
        self.warned = set(state.get("warned", []))
        self.fixes = [FixResult.from_dict(f) for f in state.get("fixes", [])]
        self.warmup_done = bool(state.get("warmup_done", self.warmup_done))


def _as_list(result: Any) -> list[Hint]:
    if result is None:
        return []
    if isinstance(result, Hint):
        return [result]
    return [h for h in result if isinstance(h, Hint)]
