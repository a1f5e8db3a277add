"""What a guarded inference fix hands to the pipeline: a modified *copy* of the model to measure.

Each fix module (int8, SDPA, channels_last, ...) knows how to *build* its
candidate; :mod:`perfcallbacks.fixes.pipeline` owns how every candidate is
judged (job budget, interleaved timing on the job's own batches, fidelity on
enough rows, reuse of decisions). A builder returns either a :class:`Candidate`
or a :class:`~perfcallbacks.report.FixResult` (``skipped`` / ``failed``) that says
why there is nothing to measure.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from perfcallbacks.fixes._guard import Tolerance


def _same(batch: Any) -> Any:
    return batch


@dataclass
class Candidate:
    """A modified copy of the user's model, ready to be measured against the original.

    Args:
        fix_id: the fix's id in the report (``"dynamic-quantization"``, ``"sdpa"``, ``"channels-last"``).
        model: the modified copy (never the user's module itself).
        tolerance: fidelity the candidate must keep against the original's outputs.
        prepare: turns a job batch into the candidate's input (e.g. channels_last images);
            identity by default.
        details: facts for the report (backend, layers kept fp32, ...).
        build_s: seconds spent building the candidate (part of the fix's ``cost_s``).
        refine: optional ``refine(violations) -> Candidate | None``: a more conservative candidate
            to try when this one breaks the tolerance (int8 keeps more layers fp32); ``None`` = give up.
        context: optional factory of a context manager every candidate call runs inside (autocast);
            with it, ``model`` may be the user's own module (nothing is modified).
        params: what a later process needs to rebuild this exact candidate without measuring
            (int8: backend and the layers kept fp32); stored in the decision cache.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.candidate import Candidate
        >>> c = Candidate("channels-last", torch.nn.Conv2d(3, 8, 3))
        >>> c.prepare(1), c.fix_id
        (1, 'channels-last')
    """

    fix_id: str
    model: nn.Module
    tolerance: Tolerance = field(default_factory=Tolerance)
    prepare: Callable[[Any], Any] = _same
    details: dict[str, Any] = field(default_factory=dict)
    build_s: float = 0.0
    refine: Callable[[list[str]], Candidate | None] | None = None
    context: Callable[[], AbstractContextManager[Any]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
