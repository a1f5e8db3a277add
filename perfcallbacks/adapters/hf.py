"""HuggingFace ``Trainer`` adapter: :class:`HFPerfHints`, a ``transformers.TrainerCallback``.

The Trainer hands callbacks ``args, state, control`` plus ``model``,
``train_dataloader``, ``processing_class`` ... in ``**kwargs`` but never the
batch. So the adapter:

* reads the static picture (``TrainingArguments``, collator, tokenizer, model,
  device) into the Advisor's :class:`~perfcallbacks.context.RunContext` at
  ``on_train_begin`` and runs the ``setup`` checks;
* sees batches through one forward pre-hook on the model (:class:`_ForwardRouter`)
  that routes training forwards (train mode, autograd on) to the warm-up
  statistics and evaluation/predict forwards to the inference statistics;
* times optimizer steps between ``on_step_begin`` and ``on_step_end``;
* runs the inference probes once, at the end of the first evaluate/predict loop,
  on a captured real batch.

After ``warmup_steps`` the step hooks return at once and the pre-hook removes
itself as soon as it has nothing left to observe.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfcallbacks.adapters._optional import require
from perfcallbacks.adapters.facts import hf_run_facts, observe_gradients
from perfcallbacks.adapters.validation_watch import ValidationWatch, hf_validation_schedule
from perfcallbacks.adapters.common import (
    default_report_path,
    find_pad_token_id,
    format_fixes,
    is_deliberate,
    raise_requested,
)
from perfcallbacks.context import LoaderInfo, qualified_name

transformers = require("transformers", "hf", "transformers")
from transformers import TrainerCallback  # noqa: E402

try:  # transformers >= 4.41: callback state saved into trainer_state.json at each checkpoint
    from transformers.trainer_callback import ExportableState  # noqa: E402
except ImportError:  # older releases: resume simply re-observes
    class ExportableState:  # type: ignore[no-redef]
        pass

from perfcallbacks import output  # noqa: E402
from perfcallbacks.advisor import INFERENCE_BATCHES_OBSERVED, Advisor  # noqa: E402
from perfcallbacks.hints import user_code_location  # noqa: E402
from perfcallbacks.measure import device_synchronizer  # noqa: E402
from perfcallbacks.options import Options, enabled_by_env  # noqa: E402
from perfcallbacks.device import DeviceProfile  # noqa: E402

log = logging.getLogger("perfcallbacks")

# Name of the int8 artifact written inside checkpoint-<step>/ (never over model.safetensors).
INT8_ARTIFACT_NAME = "model.int8.pt2"
# Keys dropped from captured batches: the probes measure inference, not the loss.
_LABEL_KEYS = ("labels", "label", "label_ids", "return_loss")


# -- pure helpers (tests call these directly) -------------------------------------------------
def unwrap_collator(collate_fn: Any) -> Any:
    """The user's collator behind the Trainer's ``RemoveColumnsCollator`` wrapper (if any)."""
    seen = 0
    while collate_fn is not None and hasattr(collate_fn, "data_collator") and seen < 4:
        collate_fn = collate_fn.data_collator
        seen += 1
    return collate_fn


def hf_precision(args: Any) -> str | None:
    """``"fp16"`` / ``"bf16"`` when the Trainer runs mixed precision, else ``None``."""
    if getattr(args, "fp16", False):
        return "fp16"
    if getattr(args, "bf16", False):
        return "bf16"
    return None


def sampling_strategy(args: Any) -> str:
    """The training sampler: ``train_sampling_strategy`` (transformers 5.x) or ``group_by_length`` (4.x)."""
    strategy = getattr(args, "train_sampling_strategy", None)
    if isinstance(strategy, str):
        return strategy
    return "group_by_length" if getattr(args, "group_by_length", False) else "random"


def group_by_length_fix(args: Any = None) -> str:
    """The ``TrainingArguments`` snippet that turns on length grouping in the installed transformers."""
    if args is not None and hasattr(args, "train_sampling_strategy"):
        return 'TrainingArguments(train_sampling_strategy="group_by_length")'
    if args is None and "train_sampling_strategy" in getattr(transformers.TrainingArguments,
                                                             "__dataclass_fields__", {}):
        return 'TrainingArguments(train_sampling_strategy="group_by_length")'
    return "TrainingArguments(group_by_length=True)"


def task_of(model: Any) -> str | None:
    """A coarse task name from the model class (``BertForSequenceClassification`` -> ``sequence-classification``)."""
    name = type(model).__name__ if model is not None else ""
    for suffix, task in (("ForSequenceClassification", "sequence-classification"),
                         ("ForTokenClassification", "token-classification"),
                         ("ForQuestionAnswering", "question-answering"),
                         ("ForCausalLM", "causal-lm"), ("ForMaskedLM", "masked-lm"),
                         ("ForConditionalGeneration", "seq2seq")):
        if name.endswith(suffix):
            return task
    return None


def find_tokenizer(processing_class: Any, collator: Any = None) -> Any:
    """The tokenizer behind ``processing_class`` (tokenizer or processor) or the collator."""
    for candidate in (processing_class, getattr(processing_class, "tokenizer", None),
                      getattr(collator, "tokenizer", None)):
        if candidate is not None and hasattr(candidate, "pad_token_id"):
            return candidate
    return None


def hf_settings(args: Any, collator: Any, tokenizer: Any, model: Any) -> dict[str, Any]:
    """The framework-specific facts checks read from ``ctx.settings`` (plain values only)."""
    settings: dict[str, Any] = {
        "collator": qualified_name(collator),
        "pad_to_multiple_of": getattr(collator, "pad_to_multiple_of", None),
        "collator_padding": _jsonable_padding(getattr(collator, "padding", None)),
        "sampling_strategy": sampling_strategy(args),
        "group_by_length_fix": group_by_length_fix(args),
        "grad_accumulation": int(getattr(args, "gradient_accumulation_steps", 1) or 1),
        "torch_compile": bool(getattr(args, "torch_compile", False)),
        "transformers_version": transformers.__version__,
        "task": task_of(model),
        "per_device_train_batch_size": getattr(args, "per_device_train_batch_size", None),
        "per_device_eval_batch_size": getattr(args, "per_device_eval_batch_size", None),
        "dataloader_num_workers": getattr(args, "dataloader_num_workers", 0),
        "dataloader_pin_memory": getattr(args, "dataloader_pin_memory", None),
        "fp16": bool(getattr(args, "fp16", False)),
        "bf16": bool(getattr(args, "bf16", False)),
        "tf32": getattr(args, "tf32", None),
    }
    strategy = collator_padding_strategy(collator)
    if strategy is not None:
        settings["tokenizer_padding"] = strategy
    if tokenizer is not None:
        settings["tokenizer_padding_side"] = getattr(tokenizer, "padding_side", None)
        settings["tokenizer_max_length"] = _plain_int(getattr(tokenizer, "model_max_length", None))
    return settings


def collator_padding_strategy(collator: Any) -> str | None:
    """``"longest"`` / ``"max_length"`` / ``"do_not_pad"`` for HF padding collators, ``None`` when unknown."""
    if collator is None or not hasattr(collator, "padding") or not hasattr(collator, "tokenizer"):
        return None
    padding = collator.padding
    if padding is True:
        return "longest"
    if padding is False:
        return "do_not_pad"
    value = str(getattr(padding, "value", padding))
    return value if value in ("longest", "max_length", "do_not_pad") else None


def _jsonable_padding(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    return str(getattr(value, "value", value))


def _plain_int(value: Any) -> int | None:
    # Tokenizers without a limit report a huge sentinel (1e30): not a useful number.
    return int(value) if isinstance(value, int) and value < 10**9 else None


def run_layout(args: Any) -> dict[str, Any]:
    """Processes and devices of the run, from ``TrainingArguments`` and the launcher's environment."""
    parallel = getattr(getattr(args, "parallel_mode", None), "value", str(getattr(args, "parallel_mode", "")))
    world = int(getattr(args, "world_size", 1) or 1)
    # Not `local_rank != -1`: transformers 4.x sets local_rank=0 for a plain single process. A launcher
    # (torchrun, accelerate) always sets LOCAL_RANK/RANK, also for a single process.
    launched = any(os.environ.get(name) not in (None, "") for name in ("LOCAL_RANK", "RANK"))
    distributed = launched or (parallel == "distributed" and world > 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world if distributed else 1) or 1)
    strategy = None
    if distributed:
        strategy = "fsdp" if getattr(args, "fsdp", None) else "deepspeed" if getattr(args, "deepspeed", None) else "ddp"
    elif parallel == "not_distributed":
        strategy = "dp"  # torch.nn.DataParallel over several GPUs of one process
    return {"distributed": distributed, "world_size": world, "local_world_size": max(1, local_world),
            "strategy": strategy, "n_gpu": int(getattr(args, "n_gpu", 0) or 0)}


def snapshot_batch(batch: Any) -> Any:
    """A detached copy of a forward's inputs without labels (so probes run pure inference)."""
    if isinstance(batch, Mapping):
        return {k: _detach(v) for k, v in batch.items() if k not in _LABEL_KEYS and v is not None}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_detach(v) for v in batch) if isinstance(batch, tuple) else [_detach(v) for v in batch]
    return _detach(batch)


def _detach(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


# -- the forward pre-hook -----------------------------------------------------------------------
class _ForwardRouter:
    """One forward pre-hook that feeds training and inference observations to the Advisor.

    A training forward (model in train mode, autograd on) goes to the warm-up
    statistics; anything else (evaluate / predict) to the inference statistics,
    and the first inference batch is kept for the probes. Evaluation inside the
    warm-up therefore never pollutes the training statistics. The hook removes
    itself once both sides have seen enough.
    """

    def __init__(self, owner: HFPerfHints, model: nn.Module, train_limit: int) -> None:
        self.owner = owner
        self.train_limit = max(0, train_limit)
        self.train_calls = 0
        self.inference_calls = 0
        self.model = model
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        owner = self.owner
        advisor = owner._advisor
        training = module.training and torch.is_grad_enabled()
        if advisor is None or owner._measuring or (
                training and (advisor.warmup_done or self.train_calls >= self.train_limit)):
            return  # fast path: nothing left to observe on this side
        start = time.perf_counter()
        try:
            batch = kwargs if kwargs else args
            if training:
                self.train_calls += 1
                advisor.observe_batch(batch)
                if owner._train_batch is None and owner.auto_apply:
                    owner._train_batch = snapshot_batch(batch)
            elif self.inference_calls < INFERENCE_BATCHES_OBSERVED and not (owner._in_train and owner._train_eval_seen):
                watch = owner._val_watch
                if owner._in_train and (watch.waiting or watch.timing_batches):
                    if watch.waiting:  # train()'s first evaluation: its loader started since the last step
                        watch.begin(sync=advisor.timer.sync, now=start)
                    watch.batch_start(now=start)
                if self.inference_calls == 0 and getattr(owner, "_stage_started", None) is None:
                    owner._stage_started = start  # the first evaluate/predict forward: the probes' budget base
                self.inference_calls += 1
                advisor.observe_batch(batch, inference=True)
                advisor.observe_inference_call(module)
                if owner._inference_batch is None:
                    owner._inference_batch = snapshot_batch(batch)
        except Exception:  # principle 1: never break the user's forward
            log.debug("perfcallbacks: HF batch observation failed", exc_info=True)
        finally:
            advisor.overhead_s += time.perf_counter() - start
        if self.done:
            self.detach()

    @property
    def done(self) -> bool:
        advisor = self.owner._advisor
        train_done = self.train_calls >= self.train_limit or advisor is None or advisor.warmup_done
        return train_done and self.inference_calls >= INFERENCE_BATCHES_OBSERVED

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    @property
    def attached(self) -> bool:
        return self.handle is not None


def _safe(event: Callable[..., Any]) -> Callable[..., None]:
    """Principle 1 for every Trainer event: internal errors are logged at DEBUG and swallowed.

    The time spent is added to the advisor's ``overhead_s`` once (nested
    ``Advisor.timed`` blocks are not counted twice).
    """

    @functools.wraps(event)
    def wrapper(self: HFPerfHints, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._off:  # PERFHINTS=off: a no-op
            return None
        advisor = self._advisor
        meter = advisor.timed() if advisor is not None else contextlib.nullcontext()
        try:
            with meter:  # the one overhead meter: nested advisor work is counted once
                event(self, args, state, control, **kwargs)
        except Exception as err:
            if is_deliberate(err):
                raise  # fail_on / a hint warning turned into an error: the user asked for it
            log.debug("perfcallbacks: HFPerfHints.%s failed", event.__name__, exc_info=True)
        return None  # never change control

    return wrapper


# -- the callback -----------------------------------------------------------------------------
class HFPerfHints(TrainerCallback, ExportableState):
    """Measured performance hints (and guarded fixes) for the HuggingFace ``Trainer``.

    Reads ``TrainingArguments``, the collator, the tokenizer and the model at
    train begin, observes the first ``warmup_steps`` optimizer steps and the
    first evaluate/predict loop, then goes quiet. Hints are warned once each
    (``PerfHintWarning``, rank zero only), counted into the Trainer's logs
    (``perf_hints/count``, ``perf_hints/warning`` ...) and written to
    ``<output_dir>/perf_hints.json`` at train end, evaluate and predict.

    Args:
        auto_apply: apply the guarded fixes: intra-op threads capped to the
            cores at train begin; at train end on CPU a measured int8 copy of
            the model (never swapped into the Trainer: get it from
            :meth:`quantized_for_inference`); on accelerators a measured
            autocast for inference (:meth:`inference_autocast`); on every
            checkpoint an int8 artifact ``model.int8.pt2`` (torch.export) written *inside*
            ``checkpoint-<step>/`` beside the untouched fp32 weights.
        warmup_steps: optimizer steps observed before the advisor goes quiet.
        target: preset name (``"a100"``, ...) or :class:`DeviceProfile` to judge the
            run as if it ran there; ``None`` = the device in use.
        suppress: hint ids never to emit (a typo raises ``ValueError``).
        report_path: JSON report path; ``None`` = ``<output_dir>/perf_hints.json``.
        latency_budget_ms: per-batch latency budget for inference batch-size advice.
        verbose: print the summary table at the end of warm-up and at train end (only when it changed),
            through the Trainer's progress bar.
        fail_on: ``"warning"`` / ``"critical"`` (or ``"info"``): raise :class:`~perfcallbacks.PerfHintError`
            at train end / after evaluate / predict when a hint at or above it was found.
        local: the local device profile (default: detected); tests pass a preset.

    ``PERFHINTS=off`` makes the callback a no-op; ``PERFHINTS_SUPPRESS=id,id`` adds suppressions.
    Hint counts reach the ``report_to`` trackers as their own log entry (the Trainer's ``logs`` and
    returned metrics are never touched), and the hint table as text where the tracker takes it.

    Raises:
        ValueError / TypeError: for bad arguments, naming the argument.

    Data wait is approximate: the Trainer prefetches the micro-batches of one
    optimizer step before ``on_step_begin``, so the gap between one step's end
    and the next step's begin is loading (plus logging); gaps that contain an
    evaluation, a checkpoint save or an epoch boundary are dropped.

    Example::

        from transformers import Trainer, TrainingArguments
        from perfcallbacks import HFPerfHints

        hints = HFPerfHints(target="a100")
        trainer = Trainer(model=model, args=TrainingArguments(output_dir="out", report_to="none"),
                          train_dataset=train_ds, data_collator=collator, callbacks=[hints])
        trainer.train()          # warns once per hint, writes out/perf_hints.json
        print(hints.report.render())
    """

    def __init__(
        self,
        auto_apply: bool = False,
        warmup_steps: int = 20,
        target: str | DeviceProfile | None = None,
        suppress: Iterable[str] = (),
        report_path: str | Path | None = None,
        latency_budget_ms: float | None = None,
        verbose: bool = True,
        fail_on: str | None = None,
        *,
        local: DeviceProfile | None = None,
    ) -> None:
        suppress = tuple(suppress) if suppress is not None and not isinstance(suppress, str) else suppress
        options = Options.from_args(warmup_steps=warmup_steps, target=target, suppress=suppress,
                                    report_path=report_path, latency_budget_ms=latency_budget_ms,
                                    auto_apply=auto_apply, verbose=verbose, fail_on=fail_on)
        if local is not None and not isinstance(local, DeviceProfile):
            raise TypeError(f"local must be None or a DeviceProfile, got {type(local).__name__}")
        self.auto_apply = auto_apply
        self.warmup_steps = options.warmup_steps
        self.target = target
        self.suppress = tuple(sorted(options.suppress))  # validated, consumed once (a generator works)
        self.report_path = options.report_path
        self.latency_budget_ms = options.latency_budget_ms
        self.verbose = verbose
        self.fail_on = options.fail_on
        self._reset_runtime()
        self._local = local  # tests fake the local hardware here (as PerfHintCallback(local=...))

    def _reset_runtime(self) -> None:
        self._advisor: Advisor | None = None
        self._router: _ForwardRouter | None = None
        self._model: nn.Module | None = None
        self._train_batch: Any = None
        self._inference_batch: Any = None
        self._probed = False
        self._measuring = False  # our own probes / fixes run the model: do not observe those forwards
        self._train_begun = False
        self._in_train = False
        # train()'s later evaluations run the same eval set on new weights: never counted as repeated inputs.
        self._train_eval_seen = False
        self._val_watch = ValidationWatch()  # train()'s first evaluation: its loader's start-up (workers-restart)
        self._quiet = False  # warm-up over: step hooks return at once
        self._report_file: Path | None = None
        self._quantized: nn.Module | None = None
        self._autocast_factory: Callable[[], Any] | None = None
        self._off = not enabled_by_env()
        self._trainer_ref: Any = None  # weakref to the Trainer (found at on_init_end), for predict's guard
        self._handler_ref: Any = None  # weakref to its CallbackHandler: trackers get counts as their own entry
        self._logged_counts: dict[str, float] | None = None
        self._table_signature: tuple | None = None
        self._int8_artifacts: list[dict[str, Any]] = []
        self._resume_state: dict[str, Any] | None = None  # set by the Trainer when it restores callbacks

    # -- pickling (DDP spawn, deepcopy of callbacks): only the configuration travels --------
    def __getstate__(self) -> dict[str, Any]:
        keys = ("auto_apply", "warmup_steps", "target", "suppress", "report_path", "latency_budget_ms", "verbose",
                "fail_on", "_local")
        return {k: self.__dict__[k] for k in keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    # -- resume: hints already reported are not repeated ------------------------------------------
    def state(self) -> dict[str, Any]:
        """Saved by the Trainer into ``trainer_state.json`` at every checkpoint (``ExportableState``)."""
        target = self.target
        if isinstance(target, DeviceProfile):
            target = target.source.split(":", 1)[1] if target.source.startswith("preset:") else None
        return {
            "args": {"auto_apply": self.auto_apply, "warmup_steps": self.warmup_steps, "target": target,
                     "suppress": list(self.suppress),
                     "report_path": None if self.report_path is None else str(self.report_path),
                     "latency_budget_ms": self.latency_budget_ms, "verbose": self.verbose, "fail_on": self.fail_on},
            "attributes": {"_resume_state": self._advisor.state_dict() if self._advisor is not None else None},
        }

    def _restore(self, advisor: Advisor, state: Any) -> None:
        """Load the advisor state of a resumed run, whether or not the Trainer restores callbacks
        (``restore_callback_states_from_checkpoint`` is off by default, but the saved state is
        always in ``state.stateful_callbacks``)."""
        saved = getattr(self, "_resume_state", None)
        if saved is None and getattr(state, "global_step", 0):
            stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
            stored = stored[0] if isinstance(stored, list) and stored else stored
            if isinstance(stored, dict):
                saved = (stored.get("attributes") or {}).get("_resume_state")
        if saved:
            advisor.load_state_dict(saved)
            self._quiet = advisor.warmup_done
        self._resume_state = None

    def __repr__(self) -> str:
        return (f"HFPerfHints(auto_apply={self.auto_apply}, warmup_steps={self.warmup_steps}, "
                f"target={self.target!r}, suppress={list(self.suppress)!r}, report_path={self.report_path!r}, "
                f"latency_budget_ms={self.latency_budget_ms!r}, verbose={self.verbose})")

    # -- public results ------------------------------------------------------------------------
    @property
    def advisor(self) -> Advisor | None:
        """The :class:`Advisor` behind this callback (``None`` before the Trainer's first event)."""
        return self._advisor

    @property
    def report(self) -> Any:
        """The current :class:`~perfcallbacks.report.Report` (empty before training starts)."""
        return self._ensure_advisor().report

    def quantized_for_inference(self) -> nn.Module | None:
        """The int8 model kept by the guarded ``dynamic-quantization`` fix (``auto_apply=True``, CPU).

        A new module: the Trainer's model and every saved checkpoint stay fp32.
        ``None`` when the fix did not run or was rejected (see the report's ``fixes``).

        Example::

            trainer.train()
            int8 = hints.quantized_for_inference()
            if int8 is not None:
                logits = int8(**batch).logits
        """
        return self._quantized

    @property
    def int8_exports(self) -> list[dict[str, Any]]:
        """One record per int8 artifact written into a checkpoint (status, path, sizes, fidelity)."""
        return list(self._int8_artifacts)

    def inference_autocast(self) -> Callable[[], Any] | None:
        """A context-manager factory for the measured inference autocast (accelerators), or ``None``."""
        return self._autocast_factory

    # -- setup ---------------------------------------------------------------------------------
    def _ensure_advisor(self) -> Advisor:
        if self._advisor is None:
            # verbose=False: tables go through the progress bar here (output.emit_report), not print().
            options = Options.from_args(target=self.target, suppress=self.suppress, warmup_steps=self.warmup_steps,
                                        auto_apply=self.auto_apply, latency_budget_ms=self.latency_budget_ms,
                                        report_path=self.report_path, verbose=False, fail_on=self.fail_on)
            self._advisor = Advisor(framework="hf", local=self._local, options=options)
            self._advisor.context.framework_version = transformers.__version__
        return self._advisor

    def _bind(self, args: Any, state: Any, model: Any) -> Advisor:
        advisor = self._ensure_advisor()
        advisor.is_rank_zero = bool(getattr(state, "is_world_process_zero", True))
        if self._report_file is None or self.report_path is None:
            # Recomputed per Trainer: a callback reused by a second Trainer reports into its output_dir.
            self._report_file = default_report_path(self.report_path, getattr(args, "output_dir", None))
        if isinstance(model, nn.Module) and model is not self._model:
            self._model = model
            advisor.set_model(model)
            advisor.user_location = user_code_location(model)
            advisor.timer.sync = device_synchronizer(advisor.context.model_device)
        return advisor

    def _attach_router(self, args: Any, train_limit: int) -> None:
        if self._model is None or (self._router is not None and self._router.attached):
            return
        if getattr(args, "torch_compile", False):
            return  # a Python pre-hook would break the compiled graph; static checks still run
        self._router = _ForwardRouter(self, self._model, train_limit)

    @contextlib.contextmanager
    def _measuring_model(self) -> Iterator[None]:
        self._measuring = True
        try:
            yield
        finally:
            self._measuring = False

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._off = not enabled_by_env()  # PERFHINTS=off may be set after the callback was built
        self._on_init_end(args, state, control, **kwargs)

    @_safe
    def _on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._bind(args, state, kwargs.get("model"))
        # Attached now so a trainer.evaluate()/predict() without training is observed from batch one.
        self._attach_router(args, train_limit=0)
        trainer = _calling_trainer()
        if trainer is not None:
            import weakref

            self._trainer_ref = weakref.ref(trainer)
            if self.auto_apply:
                _guard_predict(self, trainer)

    @_safe
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        advisor = self._bind(args, state, kwargs.get("model"))
        self._train_begun = True
        self._restore(advisor, state)
        self._fill_context(advisor, args, kwargs)
        advisor.begin_stage("fit")  # auto_apply: the training thread cap, restored at train end
        advisor.capture_threads()
        try:
            hf_run_facts(args, self._model, advisor.context, state=state,
                         train_dataloader=kwargs.get("train_dataloader"))
        except Exception:
            log.debug("perfcallbacks: could not collect HF run facts", exc_info=True)
        advisor.run_checks("setup")
        self._in_train = True
        self._val_watch = ValidationWatch()  # each train() call: its own first evaluation
        self._train_eval_seen = False
        if self.warmup_steps == 0:
            self._finish_warmup(advisor, quiet=True)
        # Training limit: warm-up optimizer steps x micro-batches per step.
        limit = self.warmup_steps * max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
        if self._router is not None:
            self._router.train_limit = limit
        self._attach_router(args, train_limit=limit)
        handler = _move_ahead_of_reporters(self)
        if handler is not None:
            import weakref

            self._handler_ref = weakref.ref(handler)

    def _fill_context(self, advisor: Advisor, args: Any, kwargs: dict[str, Any]) -> None:
        ctx = advisor.context
        loader = kwargs.get("train_dataloader")
        collator = unwrap_collator(getattr(loader, "collate_fn", None))
        tokenizer = find_tokenizer(kwargs.get("processing_class"), collator)
        layout = run_layout(args)
        ctx.precision = hf_precision(args)
        ctx.autocast_dtype = ctx.precision  # the Trainer's mixed precision is autocast
        ctx.distributed = layout["distributed"]
        ctx.world_size = layout["world_size"]
        ctx.local_world_size = layout["local_world_size"]
        ctx.strategy = layout["strategy"]
        if ctx.model_device != "cpu":
            ctx.devices_used = layout["world_size"] if ctx.distributed else max(1, layout["n_gpu"])
        ctx.pad_token_id = find_pad_token_id(self._model, tokenizer)
        ctx.settings.update(hf_settings(args, collator, tokenizer, self._model))
        if loader is not None:
            advisor.set_loader(loader)
            info = ctx.loader
            if info is not None:
                # accelerate's DataLoaderShard hides batch_size behind a batch sampler.
                info.batch_size = info.batch_size or getattr(args, "per_device_train_batch_size", None)
                info.collate_fn = ctx.settings["collator"]

    # -- warm-up -------------------------------------------------------------------------------
    # Every-step events: after the warm-up they read two attributes and return, with no wrapper or meter.
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._quiet and self._advisor is not None:
            self._observe_step_begin(args, state, control, **kwargs)

    @_safe
    def _observe_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._advisor.step_begin()  # type: ignore[union-attr]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._val_watch.waiting and self._in_train:  # until the first evaluation: one clock read per step
            self._val_watch.train_step_ended()
        if not self._quiet and self._advisor is not None:
            self._observe_step_end(args, state, control, **kwargs)

    @_safe
    def _observe_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        assert self._advisor is not None  # checked by on_step_end
        self._advisor.step_end()
        if self._advisor.warmup_done:
            self._quiet = True
            if self._advisor.is_rank_zero:
                self._show_table()
                self._write_report(self._advisor)
                self._log_counts(args, state, control)
            raise_requested(self._advisor, fail_on=False)  # a hint warning turned into an error: now

    def _finish_warmup(self, advisor: Advisor, quiet: bool) -> None:
        """Finish the warm-up (e.g. at train end when max_steps < warmup_steps); the table is shown by the caller."""
        if not advisor.warmup_done:
            advisor.finish_warmup()
        self._quiet = True

    def _show_table(self, at_end: bool = False) -> None:
        """The hint table through the Trainer's progress bar; at the end only when something changed."""
        advisor = self._advisor
        if not self.verbose or advisor is None or not advisor.is_rank_zero:
            return
        report = advisor.report
        signature = output.report_signature(report)
        if signature == self._table_signature:
            if at_end:
                output.emit_text(output.unchanged_line(report, self._report_file), framework="hf")
            return
        self._table_signature = signature
        output.emit_report(report, framework="hf")

    def _log_counts(self, args: Any, state: Any, control: Any) -> None:
        """Hint counts to the ``report_to`` trackers as their own log entry (never in the Trainer's logs)."""
        advisor, handler = self._advisor, self._handler_ref() if self._handler_ref else None
        if advisor is None or handler is None:
            return
        counts = output.hint_counts_for_log(advisor.report, self._logged_counts)
        if counts is None:
            return
        self._logged_counts = dict(counts)
        for callback in handler.callbacks:
            # Trackers (report_to integrations, user callbacks); not ourselves, not the console printers.
            if callback is self or type(callback).__module__ == "transformers.trainer_callback":
                continue
            if True:
                try:
                    callback.on_log(args, state, control, logs=dict(counts))
                except Exception:
                    log.debug("perfcallbacks: %s rejected hint counts", type(callback).__name__, exc_info=True)

    def _drop_gap(self) -> None:
        # The next data-wait gap would contain an evaluation / save / epoch boundary, not loading.
        if self._advisor is not None and not self._quiet:
            self._advisor.timer.reset_gap()

    @_safe
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._advisor is not None and not self._quiet:
            self._advisor.timer.mark_epoch_start()  # kept apart from data wait (worker start-up)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._advisor is not None and not self._quiet and self._model is not None:
            self._observe_gradients(args, state, control, **kwargs)

    @_safe
    def _observe_gradients(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        observe_gradients(self._model, self._advisor.context)  # type: ignore[union-attr]

    @_safe
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._val_watch.waiting and self._in_train:
            self._val_watch.train_step_ended()  # an epoch-strategy evaluation starts after this
        self._drop_gap()

    # -- evaluate / predict --------------------------------------------------------------------
    @_safe
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._val_watch.timing_batches:
            self._val_watch.batch_end()
        if self._router is not None and self._router.attached:
            return
        if self._advisor is not None and self._advisor.context.inference.calls >= INFERENCE_BATCHES_OBSERVED:
            return
        # Callback added after the Trainer was built: attach now (the first batch is missed).
        self._bind(args, state, kwargs.get("model"))
        self._attach_router(args, train_limit=0)

    @_safe
    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._inference_end(args, state, kwargs, "validate")
        self._drop_gap()

    @_safe
    def on_predict(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._inference_end(args, state, kwargs, "predict")

    def _inference_end(self, args: Any, state: Any, kwargs: dict[str, Any], stage: str) -> None:
        advisor = self._bind(args, state, kwargs.get("model"))
        if not self._train_begun and not advisor.context.settings:
            self._fill_context(advisor, args, kwargs)  # evaluate()/predict() without train()
            advisor.run_checks("setup")
        results = advisor.end_stage(stage) if stage in advisor.open_stages else []
        guard = getattr(advisor, "_last_guard", None) if stage == "predict" else None
        if guard is not None and results:
            active = guard.active
            self._quantized = active.model if active is not None and active.fix_id == "dynamic-quantization" else None
        advisor.context.inference.stage = stage
        model = self._model
        in_training = self._in_train
        if in_training and stage == "validate":
            self._train_eval_seen = True
            if self._val_watch.measuring:
                self._record_validation(advisor, args, state, kwargs)
        if not self._probed and self._inference_batch is not None and model is not None and advisor.is_rank_zero:
            self._probed = True
            with self._measuring_model():
                # Inside train(): no thread sweep / batch scaling (they would cost the fit's time).
                calls = max(1, advisor.context.inference.calls)
                started = getattr(self, "_stage_started", None)
                per_call = (time.perf_counter() - started) / calls if started and not in_training else None
                stage_s = time.perf_counter() - started if started else None
                spent = sum(r.cost_s or 0.0 for r in results)
                advisor.probe_inference(model, self._inference_batch, sweep=not in_training,
                                        deadline_s=advisor.probe_deadline(stage_s, spent), per_call_s=per_call)
        else:
            advisor.run_checks("inference")
        self._write_report(advisor)
        if advisor.is_rank_zero and self.verbose:
            for line in format_fixes(results):
                output.emit_text(line, framework="hf")
        if not in_training:
            raise_requested(advisor)

    def _record_validation(self, advisor: Advisor, args: Any, state: Any, kwargs: dict[str, Any]) -> None:
        """train()'s first evaluation: its loader's settings, start-up wait and schedule (workers-restart)."""
        loader = kwargs.get("eval_dataloader")
        try:
            batches = len(loader) if loader is not None else None
        except TypeError:
            batches = None
        per_epoch, total = hf_validation_schedule(args, state, advisor.context.batches_per_epoch)
        timing = self._val_watch.timing(LoaderInfo.from_loader(loader), batches_per_run=batches,
                                        runs_per_epoch=per_epoch, runs_total=total)
        if timing is not None:
            advisor.context.validation = timing

    # -- train end, save, log ------------------------------------------------------------------
    @_safe
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        advisor = self._bind(args, state, kwargs.get("model"))
        self._finish_warmup(advisor, quiet=True)
        self._in_train = False
        advisor.end_stage("fit")  # the training thread cap comes off
        self._write_report(advisor)
        if advisor.is_rank_zero:
            self._log_counts(args, state, control)
            handler = self._handler_ref() if self._handler_ref else None
            if handler is not None:
                output.log_to_hf_trackers(handler.callbacks, advisor.report, int(getattr(state, "global_step", 0)),
                                          report_path=self._report_file)
            self._show_table(at_end=True)
        raise_requested(advisor)

    @_safe
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._drop_gap()
        advisor = self._advisor
        if not self.auto_apply or advisor is None or not advisor.is_rank_zero or self._model is None:
            return
        batch = self._train_batch if self._train_batch is not None else self._inference_batch
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if batch is None or not folder.is_dir():
            return
        self._export_int8(advisor, folder, batch)

    def _export_int8(self, advisor: Advisor, folder: Path, batch: Any) -> None:
        """The export hook: an int8 artifact inside the checkpoint folder, beside the fp32 weights."""
        from perfcallbacks import fixes

        model = self._model
        was_training = model.training
        try:
            with self._measuring_model():
                result = fixes.quantize_for_export(model, folder / INT8_ARTIFACT_NAME, example_inputs=batch,
                                                   fp32_path=folder / "model.safetensors")
        finally:
            model.train(was_training)
        data = _as_dict(result)
        data["checkpoint"] = folder.name
        self._int8_artifacts.append(data)
        advisor.context.measurements["int8_export"] = data


    def _write_report(self, advisor: Advisor) -> None:
        if self._report_file is not None:
            advisor.write_report(self._report_file)


def _as_dict(result: Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return dict(result)
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    fields = getattr(result, "__dataclass_fields__", None)
    if fields:
        return {name: getattr(result, name) for name in fields}
    return {"result": repr(result)}


def _move_ahead_of_reporters(callback: HFPerfHints) -> Any:
    """Put ``callback`` ahead of the ``report_to`` integrations; returns the Trainer's ``CallbackHandler``.

    The Trainer appends user callbacks after its tracker callbacks and gives
    callbacks no handle on the Trainer, so the handler is found on the calling
    frame. Moving an element *backwards* in the list being iterated is safe: the
    elements after it keep their positions. Being ahead means our ``on_train_end``
    (hint table to TensorBoard) runs while the trackers' writers are still open.
    """
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        handler = frame.f_locals.get("self")
        if isinstance(handler, CallbackHandler) and callback in handler.callbacks:
            callbacks = handler.callbacks
            callbacks.remove(callback)
            index = next((i + 1 for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)), 0)
            callbacks.insert(index, callback)
            return handler
        frame = frame.f_back
    return None


def _calling_trainer() -> Any:
    """The ``transformers.Trainer`` whose ``__init__`` is running ``on_init_end`` (callbacks get no handle)."""
    frame = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, transformers.Trainer):
            return candidate
        frame = frame.f_back
    return None


def _guard_predict(callback: HFPerfHints, trainer: Any) -> None:
    """``auto_apply``: ``trainer.predict`` decides the inference fixes on its own batches.

    An instance attribute shadows ``Trainer.predict`` (removed by nothing, harmless: it calls the
    original); while a predict runs, the model's ``forward`` is guarded by the fix pipeline and the
    model itself is never modified.
    """
    if "predict" in vars(trainer):
        return
    original = trainer.predict

    @functools.wraps(original)
    def predict(test_dataset: Any, *args: Any, **kwargs: Any) -> Any:
        _begin_guarded_predict(callback, trainer, test_dataset)
        try:
            return original(test_dataset, *args, **kwargs)
        finally:
            advisor = callback._advisor
            if advisor is not None and "predict" in advisor.open_stages:  # on_predict did not run (an error)
                advisor.end_stage("predict")

    trainer.predict = predict


def _begin_guarded_predict(callback: HFPerfHints, trainer: Any, dataset: Any) -> None:
    if callback._off:
        return
    try:
        advisor = callback._bind(trainer.args, trainer.state, trainer.model)
        layout = run_layout(trainer.args)  # a predict-only script never reached on_train_begin
        advisor.context.world_size, advisor.context.distributed = layout["world_size"], layout["distributed"]
        advisor.context.local_world_size = layout["local_world_size"]
        model = callback._model
        callback._stage_started = time.perf_counter()
        if model is None or getattr(trainer.args, "torch_compile", False):
            return
        advisor.begin_stage("predict")
        from perfcallbacks.fixes.pipeline import kwargs_batch, kwargs_with_batch

        guard = advisor.guard_inference(model, "forward", stage="predict",
                                        expected_calls=_eval_batches(trainer.args, dataset),
                                        batch_of=kwargs_batch, with_batch=kwargs_with_batch)
        advisor._last_guard = guard
    except Exception:  # principle 1
        log.debug("perfcallbacks: could not guard predict", exc_info=True)


def _eval_batches(args: Any, dataset: Any) -> int | None:
    """Batches ``Trainer.predict`` will run over ``dataset`` (``None`` without ``len``)."""
    import math

    try:
        rows = len(dataset)
    except TypeError:
        return None
    # eval_batch_size: per device x GPUs of one process (DataParallel); one per process under DDP.
    size = int(getattr(args, "eval_batch_size", None) or getattr(args, "per_device_eval_batch_size", 8) or 8)
    world = max(1, int(getattr(args, "world_size", 1) or 1))
    if getattr(args, "dataloader_drop_last", False):
        return rows // (size * world) or None
    # accelerate shards the batches across processes with even_batches: this process's share, rounded up.
    return math.ceil(math.ceil(rows / size) / world) or None
