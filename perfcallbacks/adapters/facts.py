"""Framework facts the adapters collect for the debug / distributed / data / compile checks.

Plain functions taking the framework's objects, so both adapters stay thin and tests call
them directly. Each adapter calls them from one hook (see the call sites in
``lightning.py`` / ``hf.py``); they never raise into the run (the hooks contain errors).
"""

from __future__ import annotations

from typing import Any

from perfcallbacks.context import RunContext


def lightning_run_facts(trainer: Any, pl_module: Any, ctx: RunContext) -> None:
    """Facts from a Lightning ``Trainer`` at train start (strategy kwargs, profiler, detect_anomaly, ...)."""
    return None


def hf_run_facts(args: Any, model: Any, ctx: RunContext) -> None:
    """Facts from HF ``TrainingArguments`` and the model at train begin."""
    return None


def observe_gradients(model: Any, ctx: RunContext) -> None:
    """Called before each optimizer step during warm-up: which parameters received a gradient."""
    return None
