"""Shared plumbing of the guarded fixes: tolerances, quiet torch.ao calls, failure capture."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from perfcallbacks.model_facts import model_device  # noqa: F401 (the fixes import it from here)

log = logging.getLogger("perfcallbacks.fixes")


@dataclass(frozen=True)
class Tolerance:
    """Output fidelity a fix must keep against the unmodified model.

    Args:
        cosine_mean: minimum mean cosine similarity of the outputs (per example).
        argmax_agreement: minimum share of positions whose argmax agrees.
        cosine_min: optional minimum cosine of the worst example.
        max_abs_error: optional maximum absolute difference of any output value.

    Example::

        >>> from perfcallbacks.fixes import Tolerance
        >>> Tolerance(cosine_mean=0.999).violations({"cosine_mean": 0.99, "argmax_agreement": 1.0})
        ['cosine_mean 0.99 < 0.999']
    """

    cosine_mean: float = 0.99
    argmax_agreement: float = 0.99
    cosine_min: float | None = None
    max_abs_error: float | None = None

    def __post_init__(self) -> None:
        for name in ("cosine_mean", "argmax_agreement", "cosine_min"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0):
                raise ValueError(f"{type(self).__name__} {name} must be a number in [-1, 1], got {value!r}")
        if self.max_abs_error is not None and not (isinstance(self.max_abs_error, (int, float))
                                                   and self.max_abs_error >= 0):
            raise ValueError(f"{type(self).__name__} max_abs_error must be >= 0, got {self.max_abs_error!r}")

    def violations(self, fid: dict[str, float]) -> list[str]:
        """Human-readable list of the limits ``fid`` breaks (empty = within tolerance).

        A metric absent from ``fid`` does not apply (e.g. no argmax for hidden states).
        """
        out = []
        for name in ("cosine_mean", "argmax_agreement", "cosine_min"):
            limit = getattr(self, name)
            value = fid.get(name, 1.0 if name == "argmax_agreement" else None)
            if limit is not None and (value is None or math.isnan(value) or value < limit):
                out.append(f"{name} {_fmt(value)} < {limit}")
        value = fid.get("max_abs_error")
        if self.max_abs_error is not None and (value is None or math.isnan(value) or value > self.max_abs_error):
            out.append(f"max_abs_error {_fmt(value)} > {self.max_abs_error}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def check_margin(margin: float) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 10:
        raise ValueError(f"margin must be a number in [0, 10), e.g. 0.05 for 5%, got {margin!r}")
    return float(margin)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch.ao / TorchScript deprecation noise around *our* calls only (never globally)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*(quantiz|TorchScript|torch\.jit|deprecated).*",
                                category=UserWarning)
        yield


def safe_copy(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` that shares (does not copy) trainer back-references."""
    memo: dict[int, Any] = {}
    for attr in ("_trainer", "_fabric", "trainer_ref"):
        ref = model.__dict__.get(attr)
        if ref is not None:
            memo[id(ref)] = ref
    return copy.deepcopy(model, memo)


def is_compiled(model: Any) -> bool:
    if hasattr(model, "_orig_mod"):
        return True
    # An OptimizedModule exists only once dynamo is loaded: do not import it (slow, noisy) to find out.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(eval_frame, "OptimizedModule", None)
    return optimized is not None and isinstance(model, optimized)
