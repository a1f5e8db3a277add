"""Distributed checks: DDP searching for unused parameters when every parameter gets a gradient."""

from __future__ import annotations

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# Optimizer steps observed before "every parameter got a gradient" counts as evidence.
MIN_STEPS = 2


def _accumulation(ctx: RunContext) -> int:
    return ctx.facts.lightning.accumulate_grad_batches or ctx.facts.hf.grad_accumulation or 1


DDP_FIND_UNUSED = HintSpec(
    id="ddp-find-unused", category="distributed", severity="warning",
    title="DDP searches for unused parameters that do not exist",
    what="Fires when DistributedDataParallel runs with find_unused_parameters=True and every trainable parameter received a gradient in every observed step. The HF Trainer turns it on by itself for every model without gradient checkpointing when ddp_find_unused_parameters is unset.",
    why="With find_unused_parameters=True DDP walks the whole autograd graph after every forward to find parameters that will get no gradient, and it cannot overlap that search with the backward; reported costs range from a few percent to hours per epoch.",
    fix='Lightning: Trainer(strategy="ddp") (not "ddp_find_unused_parameters_true"), or DDPStrategy(static_graph=True); HF: TrainingArguments(ddp_find_unused_parameters=False); plain PyTorch: DistributedDataParallel(model, find_unused_parameters=False) or static_graph=True.',
    evidence=("world_size", "find_unused_parameters", "static_graph", "source", "steps_observed", "parameters_with_grad_every_step", "accumulate_grad_batches"),
)


@check(DDP_FIND_UNUSED, phases=("warmup",))
def ddp_find_unused(ctx: RunContext) -> Hint | None:
    ddp, grads = ctx.ddp, ctx.gradients
    if ddp is None or not ddp.find_unused_parameters or ddp.static_graph:
        return None  # static_graph=True searches once, on the first iteration only
    if grads.steps < MIN_STEPS or not grads.all_used:
        return None  # some parameter missed a gradient: the search is needed
    accumulation = _accumulation(ctx)
    fix = fix_text(ctx, lightning='Trainer(strategy="ddp") (or DDPStrategy(static_graph=True) if the graph '
                                  'never changes)',
                   hf="TrainingArguments(ddp_find_unused_parameters=False) (or ddp_static_graph=True)",
                   torch="DistributedDataParallel(model, find_unused_parameters=False) (or static_graph=True)")
    caveat = (f" Gradients were observed after {accumulation} accumulated micro-batches: check that every "
              f"micro-batch uses every parameter." if accumulation > 1 else "")
    return DDP_FIND_UNUSED.make(
        ctx.phase,
        f"DDP runs with find_unused_parameters=True ({ddp.source or 'set by the run'}) but all "
        f"{grads.trainable} trainable parameters received a gradient in each of the {grads.steps} observed "
        f"steps: the per-step graph search buys nothing.{caveat}",
        fix,
        evidence={"world_size": ctx.world_size, "find_unused_parameters": True, "static_graph": bool(ddp.static_graph),
                  "source": ddp.source, "steps_observed": grads.steps,
                  "parameters_with_grad_every_step": grads.trainable, "accumulate_grad_batches": accumulation},
        severity="info" if accumulation > 1 else None)
