"""PerfHintCallback: the perfcallbacks advisor as a ``lightning.pytorch.Callback``.

The callback only collects facts from the Trainer (precision, strategy,
devices, loader, batches and step times) and hands them to the framework-free
:class:`~perfcallbacks.advisor.Advisor`. Observation happens at fit/stage start
and during the first ``warmup_steps`` training steps; after that every hook
returns after checking one bool.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from perfcallbacks.adapters._optional import require

require("lightning", "lightning", "lightning")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.strategies import ParallelStrategy  # noqa: E402

from perfcallbacks.adapters.common import (  # noqa: E402
    ExampleBatch,
    default_report_path,
    find_pad_token_id,
    format_fixes,
    is_distributed_name,
    raise_requested,
    safe_hook,
)
from perfcallbacks.adapters.facts import lightning_run_facts, observe_gradients  # noqa: E402
from perfcallbacks.adapters.validation_watch import (  # noqa: E402
    ValidationWatch, first_loader, lightning_validation_schedule)
from perfcallbacks.advisor import INFERENCE_BATCHES_OBSERVED, Advisor  # noqa: E402
from perfcallbacks.hints import user_code_location  # noqa: E402
from perfcallbacks.measure import device_synchronizer  # noqa: E402
from perfcallbacks.options import Options, enabled_by_env  # noqa: E402
from perfcallbacks.context import LoaderInfo  # noqa: E402
from perfcallbacks.device import DeviceProfile  # noqa: E402
from perfcallbacks.report import FixResult  # noqa: E402
from perfcallbacks import output  # noqa: E402

log = logging.getLogger("perfcallbacks")

_STEP_METHOD = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}
# Lightning precision strings -> the autocast dtype training runs under.
_AUTOCAST = {"16-mixed": "fp16", "bf16-mixed": "bf16"}


class PerfHintCallback(Callback):
    """Measured performance hints (and guarded fixes) for a Lightning run.

    Args:
        auto_apply: apply the safe fixes after measuring them (intra-op threads at
            fit start; autocast on accelerators and int8 dynamic quantization of
            Linear layers on CPU for validate/test/predict). Checkpoints keep fp32.
        warmup_steps: training steps observed before the callback goes quiet.
        target: preset name (``"a100"``, ``"t4"``, ...) or :class:`DeviceProfile` to
            judge the run as if it ran there; ``None`` = the device in use.
        suppress: hint ids never to emit (a typo raises ``ValueError``).
        report_path: JSON report file; ``None`` = ``trainer.log_dir/perf_hints.json``.
        latency_budget_ms: per-batch latency budget for inference batch-size advice.
        verbose: print the summary table at the end of warm-up (one table per fit; a one-line
            "unchanged" note at fit end when nothing new was found), through the progress bar.
        fail_on: ``"warning"`` / ``"critical"`` (or ``"info"``): raise :class:`~perfcallbacks.PerfHintError`
            at the end of fit / validate / test / predict when a hint at or above it was found.
        local: the local device profile (default: detected); tests pass a preset.

    ``PERFHINTS=off`` in the environment makes the callback a no-op; ``PERFHINTS_SUPPRESS=id,id`` adds
    suppressions. A ``warnings`` filter that turns ``PerfHintWarning`` into errors never stops
    observation: the hint is recorded and the error is raised at the end of the warm-up.

    Raises:
        TypeError / ValueError: for bad arguments, naming the argument.
        ImportError: when ``lightning`` is not installed (with the pip command).

    Example::

        import lightning.pytorch as pl
        from lightning.pytorch.demos.boring_classes import BoringModel
        from perfcallbacks import PerfHintCallback

        trainer = pl.Trainer(max_steps=30, callbacks=[PerfHintCallback(target="a100")],
                             logger=False, enable_checkpointing=False)
        trainer.fit(BoringModel())   # prints the hints table; report in trainer.log_dir
    """

    def __init__(
        self,
        auto_apply: bool = False,
        warmup_steps: int = 20,
        target: str | DeviceProfile | None = None,
        suppress: Sequence[str] = (),
        report_path: str | Path | None = None,
        latency_budget_ms: float | None = None,
        verbose: bool = True,
        fail_on: str | None = None,
        *,
        local: DeviceProfile | None = None,
    ) -> None:
        options = Options.from_args(warmup_steps=warmup_steps, target=target, suppress=suppress,
                                    report_path=report_path, latency_budget_ms=latency_budget_ms,
                                    auto_apply=auto_apply, verbose=verbose, fail_on=fail_on)
        if local is not None and not isinstance(local, DeviceProfile):
            raise TypeError(f"local must be None or a DeviceProfile, got {type(local).__name__}")
        self.options = options
        self.auto_apply = auto_apply
        self.warmup_steps: int = options.warmup_steps
        self.target = options.target
        self.suppress = tuple(sorted(options.suppress))
        self.report_path: Path | None = options.report_path
        self.latency_budget_ms: float | None = options.latency_budget_ms
        self.verbose = verbose
        self.fail_on = options.fail_on
        self.local = local
        self._off = not options.enabled
        self.report_written: Path | None = None
        self._advisor: Advisor | None = None
        self._pending_state: dict[str, Any] | None = None
        self._hook_s = 0.0
        self._report_s = 0.0  # part of _hook_s spent writing the report (one fsync per stage)
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        """Per-process runtime state: never pickled, rebuilt in ``setup``."""
        self._observing = False  # the training hot path checks only this bool
        self._stage: str | None = None  # validate / test / predict / fit-validate while one runs
        self._inference_stage: str | None = None  # set while that stage's batches are still observed
        self._fit_val_seen = False
        self._val_watch = ValidationWatch()  # the fit's first validation: its loader's start-up
        self._watch_val = False  # the training hot path stamps step ends only while this is set
        self._train_ended = False  # on_train_end ran in this fit (Lightning skips it when nothing trains)
        self._examples = ExampleBatch()
        self._probed_module: Any = None  # weakref to the module whose inference was probed (once per module)
        self._stage_started: float | None = None
        self._log_dir: str | None = None
        self._table_signature: tuple | None = None  # what the last printed table showed
        self._call_hook: Any = None
        self._loop_call: tuple[bool, bool] | None = None  # (grad enabled, train mode) seen by the loop

    # -- pickling (ddp_spawn) / resume -------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        advisor = state.pop("_advisor", None)
        if advisor is not None:
            state["_pending_state"] = advisor.state_dict()
        for key in ("_observing", "_stage", "_inference_stage", "_fit_val_seen", "_train_ended", "_examples",
                    "_stage_started", "_log_dir", "_table_signature", "_call_hook", "_loop_call", "_probed_module",
                    "_val_watch", "_watch_val"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._advisor = None
        self._reset_runtime()

    def state_dict(self) -> dict[str, Any]:
        if self._advisor is not None:
            return self._advisor.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            if self._advisor is None:
                self._pending_state = dict(state_dict)
            else:
                self._load_into(self._advisor, state_dict)
        except Exception:  # principle 1: a bad saved state only costs repeated hints
            log.debug("perfcallbacks: could not restore callback state", exc_info=True)

    @staticmethod
    def _load_into(advisor: Advisor, state: dict[str, Any]) -> None:
        advisor.load_state_dict(state)
        if state.get("warmup_done"):
            advisor.warmup_done = True  # a resumed run does not observe (or warn) again

    @property
    def advisor(self) -> Advisor | None:
        """The :class:`Advisor` behind the callback (created in ``setup``)."""
        return self._advisor

    @property
    def overhead_s(self) -> float:
        """Wall time spent inside this callback's hooks (seconds)."""
        return self._hook_s

    # -- setup ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._off = not (self.options.enabled and enabled_by_env())  # PERFHINTS=off may be set late
        self._setup(trainer, pl_module, stage)

    @safe_hook
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._advisor is None:
            # verbose=False: tables go through the progress bar here (output.emit_report), not print().
            self._advisor = Advisor(framework="lightning", local=self.local,
                                    options=dataclasses.replace(self.options, verbose=False))
            if self._pending_state:
                self._load_into(self._advisor, self._pending_state)
                self._pending_state = None
        self._advisor.is_rank_zero = trainer.is_global_zero
        self._advisor.user_location = user_code_location(pl_module)
        # trainer.log_dir broadcasts under DDP: read it here, where every rank is, never from rank zero alone.
        self._log_dir = None if self.report_path is not None else _log_dir(trainer)
        if stage == "fit":
            self._fit_val_seen = False
            self._val_watch = ValidationWatch()
            self._train_ended = False

    def _collect_context(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Advisor:
        """Fill the RunContext from the Trainer (after strategy setup: the model is on its device)."""
        advisor = self._advisor
        if advisor is None:  # setup() failed or was skipped: build the advisor now
            self._setup(trainer, pl_module, "fit")
            advisor = self._advisor
        assert advisor is not None  # for type checkers; setup always creates it
        ctx = advisor.context
        strategy = trainer.strategy
        ctx.framework_version = pl.__version__
        ctx.precision = str(trainer.precision)
        ctx.autocast_dtype = _AUTOCAST.get(ctx.precision)
        ctx.devices_used = int(trainer.num_devices)
        ctx.world_size = int(trainer.world_size)
        ctx.local_world_size = int(trainer.num_devices)
        ctx.strategy = strategy_name(strategy)
        ctx.distributed = isinstance(strategy, ParallelStrategy) or is_distributed_name(ctx.strategy)
        advisor.set_model(pl_module)
        advisor.timer.sync = device_synchronizer(strategy.root_device)  # CUDA steps: time kernels, not launches
        ctx.pad_token_id = find_pad_token_id(pl_module)
        ctx.settings["lightning"] = {"accelerator": type(trainer.accelerator).__name__,
                                     "num_nodes": int(trainer.num_nodes),
                                     "accumulate_grad_batches": int(trainer.accumulate_grad_batches)}
        return advisor

    # -- fit ------------------------------------------------------------------------------------
    @safe_hook
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        advisor = self._collect_context(trainer, pl_module)
        advisor.begin_stage("fit")  # auto_apply: the training thread cap, restored at fit end
        try:
            advisor.set_loader(trainer.train_dataloader)
        except Exception:  # an unreadable loader costs its own facts, not the setup checks and warm-up
            log.debug("perfcallbacks: could not read the train dataloader", exc_info=True)
        advisor.capture_threads(advisor.context.local_world_size)
        try:
            lightning_run_facts(trainer, pl_module, advisor.context)
        except Exception:
            log.debug("perfcallbacks: could not collect Lightning run facts", exc_info=True)
        advisor.run_checks("setup")
        self._watch_val = not self._fit_val_seen
        self._observing = not advisor.warmup_done
        if self._observing and self.warmup_steps == 0:
            self._finish_warmup(trainer)

    @safe_hook
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._observing and self._advisor is not None:
            self._advisor.timer.mark_epoch_start()  # an epoch boundary is not data wait (kept apart)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if self._observing:  # after warm-up: one bool check, nothing else (every optimizer step)
            self._observe_gradients(pl_module)

    @safe_hook
    def _observe_gradients(self, pl_module: pl.LightningModule) -> None:
        if self._advisor is not None:
            observe_gradients(pl_module, self._advisor.context)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._observing:  # after warm-up: one bool check, nothing else
            self._step_begin(batch)

    @safe_hook
    def _step_begin(self, batch: Any) -> None:
        if self._advisor is not None:
            self._advisor.step_begin(batch)  # the gap since the last step end is data wait
            if self.auto_apply:
                self._examples.offer("fit", batch)  # a real input for the export hook at fit end

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._watch_val:  # until the fit's first validation: one clock read per step
            self._val_watch.train_step_ended()
        if self._observing:
            self._step_end(trainer)

    @safe_hook
    def _step_end(self, trainer: pl.Trainer) -> None:
        advisor = self._advisor
        if advisor is None:
            self._observing = False
            return
        if advisor.timer.steps_seen + 1 < self.warmup_steps:
            advisor.step_end()
            return
        try:
            with advisor.timed():
                advisor.timer.end()
        finally:
            self._finish_warmup(trainer)  # every rank reaches this at the same step (collective inside)

    def _finish_warmup(self, trainer: pl.Trainer) -> None:
        """End observation: gather step times from all ranks, run the warm-up checks once."""
        self._observing = False
        advisor = self._advisor
        if advisor is None or advisor.warmup_done:
            return
        try:
            with advisor.timed():
                gather_rank_timings(trainer, advisor)
        except Exception:
            log.debug("perfcallbacks: could not gather step times across ranks", exc_info=True)
        advisor.finish_warmup()
        if trainer.is_global_zero:
            self._show_table(trainer)
            self._write_report(trainer)
        raise_requested(advisor, fail_on=False)  # a hint warning turned into an error: raised here, recorded

    @safe_hook
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_ended = True
        if self._observing:  # fewer steps than warmup_steps: judge what was seen
            self._finish_warmup(trainer)
        advisor = self._advisor
        if advisor is None or not trainer.is_global_zero:
            return
        if self.auto_apply:
            self._export_int8(trainer, pl_module, advisor)
        self._write_report(trainer)
        report = advisor.report
        counts = output.hint_counts_for_log(report)
        for logger in trainer.loggers if counts else ():
            try:
                logger.log_metrics(counts, step=trainer.global_step)
            except Exception:
                log.debug("perfcallbacks: logger %s rejected hint counts", type(logger).__name__, exc_info=True)
        output.log_to_lightning_loggers(trainer.loggers, report, trainer.global_step,
                                        report_path=self.report_written)
        self._show_table(trainer, at_end=True)

    def _show_table(self, trainer: pl.Trainer, at_end: bool = False) -> None:
        """One table per fit (end of warm-up); later only what changed, else a one-line note."""
        advisor = self._advisor
        if not self.verbose or advisor is None or not trainer.is_global_zero:
            return
        report = advisor.report
        signature = output.report_signature(report)
        if at_end and signature == self._table_signature:
            output.emit_text(output.unchanged_line(report, self.report_written), trainer=trainer,
                             framework="lightning")
            return
        self._table_signature = signature
        output.emit_report(report, trainer=trainer, framework="lightning")
        if at_end and self.report_written:
            output.emit_text(f"perfcallbacks report: {self.report_written}", trainer=trainer, framework="lightning")

    def _export_int8(self, trainer: pl.Trainer, pl_module: pl.LightningModule, advisor: Advisor) -> None:
        """The export hook: an int8 artifact beside the last fp32 checkpoint (never over it)."""
        checkpoint = trainer.checkpoint_callback
        fp32 = getattr(checkpoint, "last_model_path", "") or getattr(checkpoint, "best_model_path", "")
        example = self._examples.get("fit")
        self._examples.clear("fit")
        if not fp32 or example is None or not Path(fp32).is_file():
            return  # no checkpoint written: nothing to export beside
        from perfcallbacks.fixes import quantize_for_export

        was_training = pl_module.training
        try:
            result = quantize_for_export(pl_module, Path(fp32).with_suffix(".int8.pt2"), example_inputs=example,
                                         fp32_path=fp32)
        finally:
            pl_module.train(was_training)
        data = result.to_dict()
        advisor.record_fix(FixResult("export", data.pop("status"), data.pop("reason"),
                                     fidelity=data.pop("fidelity"), details=data))

    @safe_hook
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore what the fit changed (thread cap) and apply ``fail_on``. A fit with nothing to train
        (``max_steps=0``, ``limit_train_batches=0``) skips ``on_train_start``/``on_train_end``: still
        judge the setup and write the report."""
        if not self._train_ended:
            self._train_ended = True
            self._observing = False
            advisor = self._collect_context(trainer, pl_module)
            advisor.run_checks("setup")
            if not advisor.warmup_done:
                advisor.finish_warmup()  # no collective here: every rank skipped training alike
            if trainer.is_global_zero:
                self._write_report(trainer)
        if self._advisor is not None:
            self._advisor.end_stage("fit")
            raise_requested(self._advisor)

    # -- validate / test / predict ------------------------------------------------------------
    def _stage_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "validate" and trainer.state.fn == "fit":
            if trainer.sanity_checking or self._fit_val_seen:
                return
            self._fit_val_seen = True
            self._watch_val = False
            # Before our own work: its time is taken out of the loader's wait.
            self._val_watch.begin(sync=self._advisor.timer.sync if self._advisor is not None else None)
            stage = "fit-validate"  # observed, checked, but no probes/fixes inside fit (keeps fit cheap)
        advisor = self._collect_context(trainer, pl_module)
        if stage != "fit-validate":
            advisor.run_checks("setup")
        advisor.begin_stage(stage)  # auto_apply: thread cap for the stage, restored at its end
        self._examples.clear(stage)
        self._loop_call = None
        self._stage = self._inference_stage = stage
        self._stage_started = time.perf_counter()
        self._attach_call_observer(pl_module)
        if stage == "fit-validate":
            self._val_watch.own_work_done()
        if self.auto_apply and stage != "fit-validate":
            advisor.guard_inference(pl_module, _STEP_METHOD[stage], stage=stage,
                                    expected_calls=_stage_batches(trainer, stage))

    def _attach_call_observer(self, pl_module: pl.LightningModule) -> None:
        """Forward pre-hook: how the user's forward actually runs (grad mode, train mode)."""
        self._detach_call_observer()
        advisor = self._advisor
        seen = [0]

        def hook(module: torch.nn.Module, args: tuple) -> None:
            seen[0] += 1
            try:
                advisor.observe_inference_call(module)  # type: ignore[union-attr]
            except Exception:
                log.debug("perfcallbacks: inference call observation failed", exc_info=True)
            if seen[0] >= INFERENCE_BATCHES_OBSERVED:
                self._detach_call_observer()

        self._call_hook = pl_module.register_forward_pre_hook(hook)

    def _detach_call_observer(self) -> None:
        if self._call_hook is not None:
            self._call_hook.remove()
            self._call_hook = None

    def _stage_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        advisor, stage = self._advisor, self._inference_stage
        if advisor is None or stage is None:
            return
        if self._loop_call is None:
            self._loop_call = (torch.is_grad_enabled(), pl_module.training)
        advisor.observe_batch(batch, inference=True)
        self._examples.offer(stage, batch)
        if len(advisor.context.inference_batches) >= INFERENCE_BATCHES_OBSERVED:
            self._inference_stage = None  # enough seen: later batches cost one None check

    def _stage_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "validate" and trainer.state.fn == "fit":
            if self._stage == "fit-validate":
                self._stage = self._inference_stage = None
                self._detach_call_observer()
                self._fill_loop_call()
                if self._advisor is not None:
                    self._advisor.end_stage("fit-validate")
                    self._record_validation(trainer)
                    self._advisor.run_checks("inference")  # no probes inside fit: they would cost its time
            if self._observing and self._advisor is not None:
                self._advisor.timer.reset_gap()  # validation time is not data wait
            return
        self._detach_call_observer()
        advisor = self._advisor
        if advisor is None or self._stage != stage:
            return
        self._stage = self._inference_stage = None
        results = advisor.end_stage(stage)
        self._fill_loop_call()
        example = self._examples.get(stage)
        # Probe a module's inference once (as HF does): a second predict with the same callback and model would
        # pay the same measurements again for the same answer.
        probed = self._probed_module is not None and self._probed_module() is pl_module
        if example is not None and not probed:
            self._probed_module = weakref.ref(pl_module)
            elapsed = time.perf_counter() - (self._stage_started or time.perf_counter())
            calls = _stage_batches(trainer, stage) or 1
            spent = sum(r.cost_s or 0.0 for r in results)
            advisor.probe_inference(pl_module, example, deadline_s=advisor.probe_deadline(elapsed, spent),
                                    per_call_s=elapsed / calls)
        else:
            advisor.run_checks("inference")
        self._examples.clear(stage)
        if trainer.is_global_zero:
            self._write_report(trainer)
            if self.verbose:
                for line in format_fixes(results):
                    output.emit_text(line, trainer=trainer, framework="lightning")
        raise_requested(advisor)

    def _record_validation(self, trainer: pl.Trainer) -> None:
        """The fit's first validation run: its loader's settings, start-up wait and schedule (workers-restart)."""
        advisor = self._advisor
        assert advisor is not None
        try:
            loader = LoaderInfo.from_loader(first_loader(trainer.val_dataloaders))
            per_epoch, total = lightning_validation_schedule(trainer, advisor.context.epochs)
        except Exception:
            log.debug("perfcallbacks: could not read the validation loader", exc_info=True)
            loader, per_epoch, total = None, None, None
        advisor.context.validation = self._val_watch.timing(
            loader, batches_per_run=_stage_batches(trainer, "validate"), runs_per_epoch=per_epoch, runs_total=total)

    def _fill_loop_call(self) -> None:
        """No forward pre-hook call seen (the step bypassed ``self(...)``): use the loop's own state."""
        advisor = self._advisor
        if advisor is None or advisor.context.inference.calls or self._loop_call is None:
            return
        info = advisor.context.inference
        grad, training = self._loop_call
        info.calls, info.grad_enabled_calls, info.train_mode_calls = 1, int(grad), int(training)

    @safe_hook
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage_start(trainer, pl_module, "validate")

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._val_watch.timing_batches:
            self._time_validation_batch(start=True)
        if self._inference_stage is not None:
            self._safe_stage_batch(trainer, pl_module, batch)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._val_watch.timing_batches:
            self._time_validation_batch(start=False)

    @safe_hook
    def _time_validation_batch(self, start: bool) -> None:
        # Contained like every hook; the wrapper's few microseconds are noise against the waits it times.
        if start:
            self._val_watch.batch_start()
        else:
            self._val_watch.batch_end()

    @safe_hook
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stage_end(trainer, pl_module, "validate")

    @safe_hook
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage_start(trainer, pl_module, "test")

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._inference_stage is not None:
            self._safe_stage_batch(trainer, pl_module, batch)

    @safe_hook
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage_end(trainer, pl_module, "test")

    @safe_hook
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage_start(trainer, pl_module, "predict")

    def on_predict_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._inference_stage is not None:
            self._safe_stage_batch(trainer, pl_module, batch)

    @safe_hook
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stage_end(trainer, pl_module, "predict")

    @safe_hook
    def _safe_stage_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        self._stage_batch(trainer, pl_module, batch)

    # -- nothing lost: fixes answer calls from a copy; the module and its checkpoints stay fp32 ------------
    @safe_hook
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._cleanup()

    @safe_hook
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        self._detach_call_observer()
        self._stage = self._inference_stage = None
        self._observing = False
        if self._advisor is not None:
            for stage in list(self._advisor.open_stages):  # an exception mid-stage: take the guard off, restore
                self._advisor.end_stage(stage)

    # -- report -------------------------------------------------------------------------------
    def _write_report(self, trainer: pl.Trainer) -> Path | None:
        advisor = self._advisor
        if advisor is None:
            return None
        path = default_report_path(self.report_path, self._log_dir)
        start = time.perf_counter()
        written = advisor.write_report(path)
        self._report_s += time.perf_counter() - start
        if written is not None:
            self.report_written = written
        return written


# -- pure helpers (tests call them directly) ------------------------------------------------------
def strategy_name(strategy: Any) -> str:
    """A short name for a Lightning strategy: ``"ddp"``, ``"ddp_spawn"``, ``"fsdp"``, ``"single_device"``."""
    name = getattr(strategy, "strategy_name", None) or type(strategy).__name__
    name = str(name)
    if name == "DDPStrategy" or name == "ddp":
        name = "ddp_spawn" if getattr(strategy, "_start_method", None) in ("spawn", "forkserver") else "ddp"
    elif name.endswith("Strategy"):
        name = {"SingleDeviceStrategy": "single_device", "FSDPStrategy": "fsdp",
                "DeepSpeedStrategy": "deepspeed"}.get(name, name[: -len("Strategy")].lower())
    return name


def gather_rank_timings(trainer: pl.Trainer, advisor: Advisor) -> None:
    """Replace this rank's warm-up step times with every rank's (one ``all_gather`` under DDP).

    All ranks call this at the same step, so the collective cannot deadlock.
    """
    if int(trainer.world_size) <= 1:
        return
    timer = advisor.timer
    width = max(1, advisor.warmup_steps)
    local = torch.full((2, width), math.nan, dtype=torch.float64)
    for row, values in enumerate((timer.step_times[-width:], timer.data_wait_times[-width:])):
        if values:
            local[row, : len(values)] = torch.tensor(values, dtype=torch.float64)
    gathered = trainer.strategy.all_gather(local.to(trainer.strategy.root_device)).detach().cpu()
    gathered = gathered.reshape(-1, 2, width)
    steps, waits = gathered[:, 0], gathered[:, 1]
    timer.step_times = [float(v) for v in steps[~torch.isnan(steps)]]
    timer.data_wait_times = [float(v) for v in waits[~torch.isnan(waits)]]
    medians = [float(r[~torch.isnan(r)].median()) if (~torch.isnan(r)).any() else None for r in steps]
    advisor.context.settings["step_time_median_per_rank_s"] = medians


def _stage_batches(trainer: pl.Trainer, stage: str) -> int | None:
    """Batches the stage will run (all dataloaders), ``None`` when a loader has no length."""
    attr = {"validate": "num_val_batches", "test": "num_test_batches", "predict": "num_predict_batches"}[stage]
    try:
        counts = getattr(trainer, attr)
        counts = counts if isinstance(counts, (list, tuple)) else [counts]
        total = 0
        for n in counts:
            if n is None or not math.isfinite(float(n)):
                return None
            total += int(n)
        return total or None
    except Exception:
        return None


def _log_dir(trainer: pl.Trainer) -> str | None:
    try:
        return trainer.log_dir
    except Exception:
        return getattr(trainer, "default_root_dir", None)
