"""Framework facts the adapters collect for the debug / distributed / data / compile checks.

Plain functions taking the framework's objects, so both adapters stay thin and tests call
them directly. Each adapter calls them from one hook (see the call sites in
``lightning.py`` / ``hf.py``); they never raise into the run (the hooks contain errors).
Nothing here imports Lightning or transformers at module level.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from torch import nn

from perfcallbacks.context import CompileFacts, DDPFacts, RunContext

# Lightning profilers that record every profiled action with a real cost (SimpleProfiler only times hooks).
_COSTLY_PROFILERS = ("AdvancedProfiler", "PyTorchProfiler", "XLAProfiler")


def ddp_module(model: Any) -> Any:
    """The ``DistributedDataParallel`` wrapper in ``model`` (itself or ``.module`` chains), else ``None``."""
    from torch.nn.parallel import DistributedDataParallel

    seen = 0
    while model is not None and seen < 4:
        if isinstance(model, DistributedDataParallel):
            return model
        model = getattr(model, "module", None)
        seen += 1
    return None


def lightning_epochs(trainer: Any, batches_per_epoch: int | None) -> int | None:
    """Epochs a Lightning fit will run, from ``max_epochs`` / ``max_steps`` (``None`` when unbounded or unknown)."""
    max_epochs = getattr(trainer, "max_epochs", None)
    max_steps = getattr(trainer, "max_steps", -1)
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
    by_steps = None
    if isinstance(max_steps, int) and max_steps > 0 and batches_per_epoch:
        by_steps = math.ceil(max_steps * accumulate / batches_per_epoch)
    by_epochs = max_epochs if isinstance(max_epochs, int) and max_epochs > 0 else None
    known = [v for v in (by_steps, by_epochs) if v is not None]
    return min(known) if known else None


def lightning_run_facts(trainer: Any, pl_module: Any, ctx: RunContext) -> None:
    """Facts from a Lightning ``Trainer`` at train start (strategy kwargs, profiler, detect_anomaly, ...)."""
    if getattr(trainer, "_detect_anomaly", False):
        ctx.debug.sources["anomaly"] = "Trainer(detect_anomaly=True)"
    profiler = getattr(trainer, "profiler", None)
    name = type(profiler).__name__ if profiler is not None else None
    if name in _COSTLY_PROFILERS:
        ctx.debug.profiler = name
        ctx.debug.sources["profiler"] = f"Trainer(profiler={name}(...))"
    connector = getattr(trainer, "_accelerator_connector", None)
    if getattr(connector, "deterministic", None):
        ctx.debug.sources["deterministic"] = f"Trainer(deterministic={connector.deterministic!r})"
    strategy = getattr(trainer, "strategy", None)
    ddp = ddp_module(getattr(strategy, "model", None))
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if ddp is not None or isinstance(kwargs, dict):
        find_unused = getattr(ddp, "find_unused_parameters", None)
        if find_unused is None and isinstance(kwargs, dict):
            find_unused = bool(kwargs.get("find_unused_parameters", False))
        static = getattr(ddp, "static_graph", None)
        if static is None and isinstance(kwargs, dict):
            static = bool(kwargs.get("static_graph", False))
        name = str(getattr(strategy, "strategy_name", None) or ctx.strategy)
        # The registry alias the user most likely wrote (DDPStrategy's own name drops the flag).
        source = (f'Trainer(strategy="{name}_find_unused_parameters_true")' if name in ("ddp", "ddp_spawn", "ddp_fork")
                  else "DDPStrategy(find_unused_parameters=True)")
        ctx.ddp = DDPFacts(find_unused_parameters=bool(find_unused), static_graph=bool(static),
                           source=source if find_unused else None)
    batches = getattr(trainer, "num_training_batches", None)
    if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
        ctx.batches_per_epoch = int(batches)
    ctx.epochs = lightning_epochs(trainer, ctx.batches_per_epoch)


def hf_find_unused(args: Any, model: Any) -> tuple[bool, str]:
    """What the HF Trainer passes to DDP as ``find_unused_parameters``, and why.

    transformers 5.x: ``args.ddp_find_unused_parameters`` if set, else ``True`` unless the
    ``PreTrainedModel`` uses activation checkpointing (``model.is_activation_checkpointing`` or
    ``args.activation_checkpointing``), else ``True`` for other models; 4.x: the same with
    ``model.is_gradient_checkpointing``.
    """
    explicit = getattr(args, "ddp_find_unused_parameters", None)
    if explicit is not None:
        return bool(explicit), f"TrainingArguments(ddp_find_unused_parameters={bool(explicit)})"
    transformers = sys.modules.get("transformers")
    pretrained = getattr(transformers, "PreTrainedModel", None)
    if pretrained is not None and isinstance(model, pretrained):
        checkpointing = bool(getattr(model, "is_activation_checkpointing", False)
                             or getattr(model, "is_gradient_checkpointing", False)
                             or getattr(args, "activation_checkpointing", False)
                             or getattr(args, "gradient_checkpointing", False))
        if checkpointing:
            return False, "HF default: off with gradient checkpointing"
        return True, "HF default: ddp_find_unused_parameters=None turns it on for models without gradient checkpointing"
    return True, "HF default: ddp_find_unused_parameters=None turns it on for models that are not PreTrainedModel"


def hf_run_facts(args: Any, model: Any, ctx: RunContext, *, state: Any = None, train_dataloader: Any = None) -> None:
    """Facts from HF ``TrainingArguments`` and the model at train begin.

    ``state`` (``TrainerState``) and ``train_dataloader`` are optional: with them the epochs and
    batches per epoch are known (the ``workers-restart`` check needs both).
    """
    if getattr(args, "full_determinism", False):
        ctx.debug.sources["deterministic"] = "TrainingArguments(full_determinism=True)"
        ctx.debug.sources["launch_blocking"] = "TrainingArguments(full_determinism=True) sets CUDA_LAUNCH_BLOCKING=1"
    if ctx.distributed and ctx.world_size > 1:
        find_unused, source = hf_find_unused(args, model)
        static = getattr(args, "ddp_static_graph", None)
        ctx.ddp = DDPFacts(find_unused_parameters=find_unused, static_graph=bool(static), source=source)
    if getattr(args, "torch_compile", False):
        facts = ctx.compile or CompileFacts()
        facts.compiled = True
        facts.modules = facts.modules or ["TrainingArguments(torch_compile=True)"]
        ctx.compile = facts
    try:
        batches = len(train_dataloader) if train_dataloader is not None else None
    except TypeError:
        batches = None
    if batches:
        # What the step hooks time: HF calls on_step_begin / on_step_end once per optimizer step, around
        # gradient_accumulation_steps batches (a 4-step accumulation counted as 4x the steps gave the probes a
        # budget of 20% of the fit instead of 5%).
        accumulate = max(1, int(getattr(args, "gradient_accumulation_steps", 1) or 1))
        ctx.batches_per_epoch = math.ceil(int(batches) / accumulate)
    epochs = getattr(state, "num_train_epochs", None)
    if not isinstance(epochs, int) or epochs <= 0:
        value = getattr(args, "num_train_epochs", None)
        max_steps = getattr(args, "max_steps", -1)
        epochs = math.ceil(value) if isinstance(value, (int, float)) and value > 0 and \
            not (isinstance(max_steps, int) and max_steps > 0) else None
    ctx.epochs = epochs


def observe_gradients(model: Any, ctx: RunContext) -> None:
    """Called before each optimizer step during warm-up: which parameters received a gradient.

    One pass over the parameters (``grad is None``: no kernel, no sync). Under DDP a parameter no rank
    used keeps ``grad=None``; gradients set to zero instead of ``None`` count as received, which is why the
    first observed step (fresh gradients) matters.
    """
    if not isinstance(model, nn.Module):
        return
    facts = ctx.gradients
    trainable = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        trainable += 1
        if param.grad is None:
            facts.missing[name] = facts.missing.get(name, 0) + 1
    facts.trainable = trainable
    facts.steps += 1
