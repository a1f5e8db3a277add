"""The framework-agnostic engine: collects a :class:`RunContext`, runs checks, keeps the report.

Adapters (Lightning, HF) and plain loops drive the same :class:`Advisor`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfcallbacks.context import (
    InferenceInfo,
    LoaderInfo,
    RunContext,
    ThreadPicture,
    dominant_param_dtype,
    model_device_kind,
)
from perfcallbacks.device import DeviceProfile
from perfcallbacks.facts import capture_process_facts
from perfcallbacks.hints import SEVERITIES, Hint, PerfHintError, emit_hint_warning
from perfcallbacks.options import Options
from perfcallbacks.process_state import ProcessState
from perfcallbacks.observe import StepTimer, batch_stats
from perfcallbacks.report import FixResult, Report, save_report_safely
from perfcallbacks.run_facts import collect_run_facts

log = logging.getLogger("perfcallbacks")

# Batches summarised for inference checks (repeated-inputs, padding in predict).
INFERENCE_BATCHES_OBSERVED = 32


def validate_common_args(*, warmup_steps: Any, target: Any, suppress: Any, report_path: Any,
                         latency_budget_ms: Any, auto_apply: Any, verbose: Any, fail_on: Any = None) -> dict[str, Any]:
    """Validate the keyword arguments shared by the Advisor and both callbacks (see :class:`Options`)."""
    opts = Options.from_args(warmup_steps=warmup_steps, target=target, suppress=suppress, report_path=report_path,
                             latency_budget_ms=latency_budget_ms, auto_apply=auto_apply, verbose=verbose,
                             fail_on=fail_on)
    return {"warmup_steps": opts.warmup_steps, "target": opts.target, "suppress": opts.suppress,
            "report_path": opts.report_path, "latency_budget_ms": opts.latency_budget_ms, "options": opts}


class HintBook(Mapping[str, Hint]):
    """The hints found so far: at most one per (id, training/inference), looked up by id.

    ``book["padding-waste"]`` is the latest one with that id; iterating gives each id once;
    :meth:`values` gives every hint (a training and an inference finding of one id are both kept).
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Hint] = {}

    def put(self, hint: Hint) -> bool:
        """Keep ``hint`` (replacing the one of its id and group); True when it is new."""
        key = (hint.id, hint_group(hint.phase))
        new = key not in self._items
        self._items.pop(key, None)  # re-insert: the latest finding of an id is looked up first
        self._items[key] = hint
        return new

    def __getitem__(self, hint_id: str) -> Hint:
        for (found, _), hint in reversed(self._items.items()):
            if found == hint_id:
                return hint
        raise KeyError(hint_id)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(found for found, _ in self._items))

    def __len__(self) -> int:
        return len(set(found for found, _ in self._items))

    def values(self) -> list[Hint]:  # type: ignore[override]
        return list(self._items.values())

    def clear(self) -> None:
        self._items.clear()


def targeted_ignore(hint: Hint) -> bool:
    """True when an active warnings filter *on this hint's message* (e.g. ``message=r"\\[padding-waste\\]"``)
    ignores it. A blanket ``filterwarnings("ignore", category=PerfHintWarning)`` silences the warnings
    only: the hints stay in the tables and the report (CI logs stay quiet, nothing is lost).
    """
    import warnings

    from perfcallbacks.hints import PerfHintWarning, format_hint_warning

    text = format_hint_warning(hint)
    for action, msg, category, _mod, _line in warnings.filters:
        if not issubclass(PerfHintWarning, category):
            continue
        if msg is None:
            return False  # the first applicable filter is blanket: not aimed at this hint
        if msg.match(text):
            return action == "ignore"
    return False


def hint_group(phase: str) -> str:
    """Training findings (setup, warm-up) and inference findings are kept apart in the report."""
    return "inference" if phase == "inference" else "training"


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
        fail_on: str | None = None,
        framework: str = "torch",
        warn: bool = True,
        local: DeviceProfile | None = None,
        options: Options | None = None,
    ) -> None:
        opts = options if options is not None else Options.from_args(
            warmup_steps=warmup_steps, target=target, suppress=suppress, report_path=report_path,
            latency_budget_ms=latency_budget_ms, auto_apply=auto_apply, verbose=verbose, fail_on=fail_on)
        if not isinstance(opts, Options):
            raise TypeError(f"options must be an Options or None, got {type(opts).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        if framework not in ("torch", "lightning", "hf"):
            raise ValueError(f"framework must be 'torch', 'lightning' or 'hf', got {framework!r}")
        self.options = opts
        self.warmup_steps: int = opts.warmup_steps
        self.suppress: frozenset[str] = opts.suppress
        self.report_path: Path | None = opts.report_path
        self.auto_apply = opts.auto_apply
        self.verbose = opts.verbose
        self.warn = warn
        self.dataloader = dataloader
        self.context = RunContext(local=local or DeviceProfile.detect(), target=opts.target,
                                  framework=framework, latency_budget_ms=opts.latency_budget_ms)
        self.timer = StepTimer()
        self.hints = HintBook()
        self.suppressed_hints = HintBook()  # found but suppressed: in the report (marked), never warned
        self.fixes: list[FixResult] = []
        self.check_failures: list[dict[str, str]] = []
        self.warned: set[str] = set()
        self.overhead_s = 0.0  # observation: hooks, checks, probes (fix measuring is in each fix's cost_s)
        self.warmup_done = False
        self._meter_depth = 0
        self._deferred: BaseException | None = None  # a PerfHintWarning a filter turned into an error
        self._stage_state: dict[str, ProcessState] = {}
        self._guards: dict[str, Any] = {}
        self.is_rank_zero = True
        self.user_location: tuple[str, int] | None = None  # where warnings point (the user's module / script)
        if model is not None:
            self.set_model(model)
        if dataloader is not None:
            self.set_loader(dataloader)

    # -- bookkeeping -------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time spent inside as the advisor's own overhead (nested blocks count once).

        The one overhead meter: adapters' hooks and the Advisor's own work both go through it.
        """
        self._meter_depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._meter_depth -= 1
            if self._meter_depth == 0:
                self.overhead_s += time.perf_counter() - start

    @property
    def fix_cost_s(self) -> float:
        """Seconds the guards spent measuring fixes (the sum of the fixes' ``cost_s``)."""
        return sum(float(getattr(f, "cost_s", None) or 0.0) for f in self.fixes)

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
        """End observation: run the warm-up checks once."""
        if self.warmup_done:
            return []
        self.warmup_done = True
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
        with self.timed():
            self._gather_facts(phase)
            new = self._judge(phase)
        self.emit_warnings(new)
        return new

    def _gather_facts(self, phase: str) -> None:
        """Everything the checks read, read once: process facts, timings, then the typed run facts."""
        ctx = self.context
        ctx.phase = phase
        try:
            ctx.matmul_precision = torch.get_float32_matmul_precision()
        except RuntimeError:  # mixed legacy allow_tf32 and the new API: torch cannot say
            log.debug("perfcallbacks: float32 matmul precision unreadable", exc_info=True)
        if ctx.threads is None:
            self.capture_threads()
        try:
            capture_process_facts(ctx, ctx.model)
        except Exception:  # principle 1
            log.debug("perfcallbacks: could not capture process facts", exc_info=True)
        if phase == "warmup" or self.timer.step_times:  # a fit's validation may come before the warm-up ends
            self._sync_timings()

        def unreadable(part: str, err: Exception) -> None:  # that fact stays unknown; the others are read
            log.debug("perfcallbacks: could not read the %s facts", part, exc_info=err)
            self.check_failures.append({"check": f"perfcallbacks.run_facts.{part}", "phase": phase,
                                        "error": f"{type(err).__name__}: {err}"})

        ctx.facts = collect_run_facts(ctx, on_error=unreadable)

    def _judge(self, phase: str) -> list[Hint]:
        """Run the phase's checks on the gathered context: record failures, split off suppressed hints."""
        from perfcallbacks.checks import checks_for

        new: list[Hint] = []
        for chk in checks_for(phase):
            try:
                result = chk.fn(self.context)
            except Exception as err:  # principle 1: a check never breaks the run
                log.debug("perfcallbacks: check %s failed", chk.name, exc_info=True)
                self.check_failures.append({"check": chk.name, "phase": phase,
                                            "error": f"{type(err).__name__}: {err}"})
                continue
            for hint in _as_list(result):
                if hint.id in self.suppress:
                    hint.suppressed = True  # kept in the report, marked; never warned or tabled
                    self.suppressed_hints.put(hint)
                elif self.hints.put(hint):
                    new.append(hint)
        return new

    def emit_warnings(self, hints: Iterable[Hint]) -> None:
        """Warn once per hint id, on rank zero only, at the user's code.

        A warnings filter that silences a hint marks it ``suppressed`` (tables leave it out, the report
        keeps it). A filter that turns it into an error never stops observation: the hint is recorded
        and the first such error is raised by :meth:`raise_deferred` at the end of the warm-up or stage.
        """
        if not self.warn or not self.is_rank_zero:
            return
        for hint in hints:
            if hint.suppressed or self._resolved(hint):
                continue
            try:
                if targeted_ignore(hint):
                    hint.suppressed = True  # a filter on this hint's id: silenced like suppress= (tables too)
                    self.hints._items.pop((hint.id, hint_group(hint.phase)), None)
                    self.suppressed_hints.put(hint)
                    continue
            except Exception:
                log.debug("perfcallbacks: could not read the warnings filters", exc_info=True)
            if hint.id not in self.warned:
                self.warned.add(hint.id)
                err = emit_hint_warning(hint, user_frame=self.user_location)
                if err is not None and self._deferred is None:
                    self._deferred = err

    def _resolved(self, hint: Hint) -> bool:
        from perfcallbacks.report import resolved_hint_keys

        return bool(resolved_hint_keys(Report(hints=[hint], fixes=list(self.fixes))))

    def raise_deferred(self, *, fail_on: bool = True) -> None:
        """Raise what the user asked to be raised: a hint warning a filter turned into an error (at the
        end of the warm-up or of a stage), then, with ``fail_on=True`` (end of a stage), ``fail_on``."""
        err, self._deferred = self._deferred, None
        if err is not None:
            raise err
        if fail_on:
            self.check_fail_on()

    @property
    def open_stages(self) -> list[str]:
        """Stages begun and not yet ended (an exception cut them short)."""
        return list(self._stage_state)

    def check_fail_on(self) -> None:
        """``fail_on``: raise :class:`PerfHintError` when a hint at or above that severity was found."""
        level = self.options.fail_on
        if level is None:
            return
        floor = SEVERITIES.index(level)
        found = [h for h in self.hints.values() if not h.suppressed and not self._resolved(h)
                 and SEVERITIES.index(h.severity) >= floor]
        if found:
            ids = ", ".join(sorted({h.id for h in found}))
            raise PerfHintError(f"perfcallbacks: {len(found)} hint(s) at or above {level!r} (fail_on={level!r}): "
                                f"{ids}", hints=found)

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

    def probe_deadline(self, stage_s: float | None, spent_s: float = 0.0) -> float:
        """Seconds the probes after a stage may take: the guard budget's share of the stage's wall time,
        less what the stage's fixes already spent measuring (one budget for all of our measuring)."""
        from perfcallbacks.probes import PROBE_BUDGET_S

        stage_s = PROBE_BUDGET_S if stage_s is None else stage_s
        return max(0.05, min(PROBE_BUDGET_S, self.options.guard_budget * stage_s - spent_s))

    def probe_inference(self, model: nn.Module, batch: Any, *, sweep: bool = True,
                        deadline_s: float | None = None, per_call_s: float | None = None) -> list[Hint]:
        """Measure the model on a real inference batch (threads, int8, batch size), then run
        the inference checks. Probes live in :mod:`perfcallbacks.probes`; a failing probe is
        recorded like a failing check. ``sweep=False`` leaves out the thread sweep and batch
        scaling (fit's own validation); ``deadline_s`` caps the probing time. When the deadline
        cannot hold :data:`~perfcallbacks.probes.MIN_PROBE_CALLS` of the job's calls (``per_call_s``),
        or a call is slower than the probes allow, nothing is probed: a short job is not made longer
        by measuring it."""
        from perfcallbacks.probes import MAX_FORWARD_S, MIN_PROBE_CALLS

        if per_call_s is not None and per_call_s > MAX_FORWARD_S:
            self.context.measurements["probes_skipped"] = {
                "all": f"the job's calls take {per_call_s:.2f} s > {MAX_FORWARD_S} s: too slow to probe"}
            return self.run_checks("inference")
        if deadline_s is not None and per_call_s is not None and deadline_s < MIN_PROBE_CALLS * per_call_s:
            # The forward probe alone would spend the budget and leave no room for a probe that tells anything.
            self.context.measurements["probes_skipped"] = {
                "all": f"{deadline_s:.2f} s of probing budget < {MIN_PROBE_CALLS} calls of {per_call_s:.3f} s"}
            return self.run_checks("inference")
        with self.timed():
            try:
                import inspect

                from perfcallbacks.probes import run_inference_probes

                kwargs: dict[str, Any] = {}
                params = inspect.signature(run_inference_probes).parameters
                if "sweep" in params:
                    kwargs["sweep"] = sweep
                if "deadline_s" in params and deadline_s is not None:
                    kwargs["deadline_s"] = deadline_s
                known = {k: v for k, v in self.context.measurements.items() if k in ("int8",)}
                self.context.measurements.update(run_inference_probes(self.context, model, batch, **kwargs))
                self.context.measurements.update(known)  # a fix's measurement on the job beats a probe
            except Exception as err:  # principle 1
                log.debug("perfcallbacks: inference probes failed", exc_info=True)
                self.check_failures.append({"check": "perfcallbacks.probes", "phase": "inference",
                                            "error": f"{type(err).__name__}: {err}"})
        return self.run_checks("inference")

    # -- stages: one lifecycle for every adapter and the plain loop ------------------------------------
    def begin_stage(self, stage: str) -> None:
        """A stage (``fit``, ``validate``, ``test``, ``predict``) begins: remember the process settings.

        With ``auto_apply`` on a CPU run, intra-op threads are capped to this process's share of the
        physical cores for the stage; :meth:`end_stage` puts every setting back as it was found.
        """
        with self.timed():
            self._stage_state[stage] = ProcessState.capture()
            if stage != "fit":
                self.context.inference = InferenceInfo(stage=stage)
                self.context.inference_batches.clear()
            if self.auto_apply and self.context.model_device == "cpu":
                self._cap_threads(stage)

    def _cap_threads(self, stage: str) -> FixResult | None:
        from perfcallbacks.fixes import training_thread_cap

        ctx = self.context
        cores = max(1, int(ctx.local.physical_cores or os.cpu_count() or 1))
        processes = max(1, int(ctx.local_world_size))
        cap = training_thread_cap(cores, processes)
        previous = torch.get_num_threads()
        details = {"previous": previous, "cap": cap, "physical_cores": cores, "local_processes": processes,
                   "stage": stage}
        what = "training" if stage == "fit" else stage
        if previous > cap:
            torch.set_num_threads(cap)
            details["chosen"] = cap
            return self.record_fix(FixResult(
                "threads", "applied", f"{what}: {processes} process(es) x {previous} threads > {cores} physical "
                f"cores; {cap} per process for this stage (restored at its end)", details=details))
        if stage == "fit" or not any(f.id == "threads" for f in self.fixes):
            return self.record_fix(FixResult(
                "threads", "skipped", f"{what}: {previous} intra-op threads per process already within the "
                f"{cap}-thread cap", details=details))
        return None

    def guard_inference(self, owner: nn.Module, method: str, *, stage: str, expected_calls: int | None,
                        batch_of: Any = None, with_batch: Any = None, original: Any = None,
                        observe: Any = None) -> Any:
        """Put the guarded-fix pipeline on ``owner.<method>`` for this stage (``auto_apply`` only).

        Returns the :class:`~perfcallbacks.fixes.pipeline.GuardedCalls` (installed unless ``original``
        is given: then the caller routes calls to it), or ``None`` when no fix may run here
        (``auto_apply`` off, or several processes without a ``torch.distributed`` group to share the
        decision through). Under several processes every rank must call this at the same point:
        rank zero measures, the others follow its decision (``expected_calls`` is this rank's share).
        """
        if not self.auto_apply:
            return None
        ranks = None
        if self.context.world_size > 1:
            from perfcallbacks.fixes.ranks import TorchRankGroup

            ranks = TorchRankGroup.current()
            if ranks is None:
                self._skip_fixes(stage, f"{self.context.world_size} processes but no torch.distributed process "
                                 "group: rank zero's decision could not be shared, so no rank measures")
                return None
            if stage != "predict":
                # A validation / test step often holds collectives (all_gather, a metric's sync): a shadow call
                # would run them on rank zero alone and hang the group.
                self._skip_fixes(stage, f"{stage} under {ranks.world_size} processes: only predict is guarded (a "
                                 "shadow call of a step with collectives would run them on rank zero alone)")
                return None
        with self.timed():
            from perfcallbacks.fixes.cache import DecisionCache
            from perfcallbacks.fixes.pipeline import GuardedCalls

            guard = GuardedCalls(owner, method, stage=stage, profile=self.context.local,
                                 expected_calls=expected_calls, record=self.record_fix, batch_of=batch_of,
                                 with_batch=with_batch, guard_budget=self.options.guard_budget,
                                 cache=DecisionCache(), original=original, observe=observe, ranks=ranks)
            if original is None:
                guard.install()
            self._guards[stage] = guard
        return guard

    def _skip_fixes(self, stage: str, reason: str) -> None:
        from perfcallbacks.fixes.pipeline import FIXES

        for spec in FIXES:
            if stage in spec.stages:
                self.record_fix(FixResult(spec.fix_id, "skipped", reason))

    def end_stage(self, stage: str) -> list[FixResult]:
        """The stage ends: conclude its fixes, hand their measurements to the checks, restore the settings."""
        results: list[FixResult] = []
        with self.timed():
            guard = self._guards.pop(stage, None)
            if guard is not None:
                results = guard.finish()
                for result in results:
                    self._hand_measurement(result)
            state = self._stage_state.pop(stage, None)
            if state is not None:
                changed = state.restore()
                if changed:
                    for fix in self.fixes:
                        if fix.id == "threads" and fix.applied:
                            fix.details["restored_at_stage_end"] = True
        return results

    def _hand_measurement(self, result: FixResult) -> None:
        """A fix measured on the job beats the probe's estimate in the inference checks."""
        if result.id == "dynamic-quantization" and result.speedup is not None:
            self.context.measurements["int8"] = {"speedup": result.speedup, "fidelity": dict(result.fidelity),
                                                 "source": "fix", "status": result.status}

    def optimize_inference(self, model: nn.Module, example_batch: Any, *,
                           expected_batches: int | None = None) -> nn.Module:
        """The model to run inference with in a plain loop: decided on the job's own batches.

        Returns a module you call like ``model``. While a fix is on trial it answers with the
        untouched model's outputs (the candidate runs beside it, timed and compared); once decided,
        the remaining calls go to the guarded copy if it was measured faster and faithful, else to
        ``model``. ``model`` itself is never modified. Without ``auto_apply=True`` (or when the job
        is too short for measuring to pay: ``expected_batches`` x the first batch's time) it simply
        runs ``model``. ``example_batch`` is the first batch of the job (used for the checks).
        Call :meth:`finish_inference` (or :meth:`analyze`) after the loop to conclude and report.

        Example::

            advisor = Advisor(auto_apply=True)
            fast = advisor.optimize_inference(model, next(iter(loader)), expected_batches=len(loader))
            with torch.inference_mode():
                outputs = [fast(x) for x, _ in loader]
            advisor.finish_inference()
            print(advisor.report.render())
        """
        from perfcallbacks.fixes.pipeline import GuardedModule

        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if expected_batches is not None and (isinstance(expected_batches, bool)
                                             or not isinstance(expected_batches, int) or expected_batches < 1):
            raise ValueError(f"expected_batches must be None or a positive int, got {expected_batches!r}")
        if expected_batches is None and self.dataloader is not None:
            try:
                expected_batches = len(self.dataloader)  # type: ignore[arg-type]
            except TypeError:
                expected_batches = None
        if self.context.model is None:
            self.set_model(model)
        self.finish_inference()
        self.begin_stage("predict")
        guard = self.guard_inference(model, "__call__", stage="predict", expected_calls=expected_batches,
                                     original=model, observe=self._observe_plain_call)
        self._plain_guard = guard
        if guard is None:
            self.observe_batch(example_batch, inference=True)
            return model
        return GuardedModule(model, guard)

    def _observe_plain_call(self, batch: Any) -> None:
        if len(self.context.inference_batches) < INFERENCE_BATCHES_OBSERVED:
            self.observe_batch(batch, inference=True)
            self.observe_inference_call(self.context.model)

    def finish_inference(self) -> list[FixResult]:
        """Conclude a plain loop's :meth:`optimize_inference` stage: decide, restore, run inference checks."""
        if getattr(self, "_plain_guard", None) is None and "predict" not in self._stage_state:
            return []
        self._plain_guard = None
        results = self.end_stage("predict")
        self.run_checks("inference")
        return results

    # -- fixes -------------------------------------------------------------------------------------
    def record_fix(self, result: FixResult) -> FixResult:
        """Keep ``result`` (the latest outcome per fix id) in the report's ``fixes``."""
        self.fixes = [f for f in self.fixes if f.id != result.id] + [result]
        return result

    # -- report --------------------------------------------------------------------
    @property
    def report(self) -> Report:
        ctx = self.context
        every = self.hints.values() + self.suppressed_hints.values()
        hints = sorted(every, key=lambda h: (-SEVERITIES.index(h.severity), -(h.impact or 1.0), h.id))
        return Report(framework=ctx.framework, device=ctx.local.to_dict(),
                      target=ctx.target.to_dict() if ctx.target else None, hints=hints,
                      fixes=list(self.fixes), overhead_s=self.overhead_s + self.fix_cost_s,
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
        return {"hints": [h.to_dict() for h in self.hints.values() + self.suppressed_hints.values()],
                "warned": sorted(self.warned),
                "fixes": [f.to_dict() for f in self.fixes], "warmup_done": self.warmup_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hints = HintBook()
        for data in state.get("hints", []):
            hint = Hint.from_dict(data)
            (self.suppressed_hints if getattr(hint, "suppressed", False) else self.hints).put(hint)
        self.warned = set(state.get("warned", []))
        self.fixes = [FixResult.from_dict(f) for f in state.get("fixes", [])]
        self.warmup_done = bool(state.get("warmup_done", self.warmup_done))


def _as_list(result: Any) -> list[Hint]:
    if result is None:
        return []
    if isinstance(result, Hint):
        return [result]
    return [h for h in result if isinstance(h, Hint)]
