"""Timing and fidelity primitives shared by the guarded fixes and the checks.

Everything here measures the user's own model on a real batch: call it the way
the training loop would (:func:`call_model`), take the main output tensor
(:func:`output_tensor`), time it with a median of repeats after warm-up
(:func:`median_time`, :func:`compare_times`) and compare outputs against the
unmodified model (:func:`fidelity`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from perfcallbacks.model_facts import hidden_size, model_device

__all__ = [
    "call_model",
    "compare_times",
    "concat_batch",
    "eval_mode",
    "fidelity",
    "measure_threads",
    "median_time",
    "output_kind",
    "output_tensor",
    "padding_mask",
    "timed_forward",
]

# Output keys tried in order: classifier logits first, then encoder states.
_OUTPUT_KEYS = ("logits", "prediction_logits", "last_hidden_state", "pooler_output", "embeddings")
# Representations, not scores: an argmax over their features decides nothing.
_STATE_KEYS = frozenset({"last_hidden_state", "pooler_output", "embeddings", "hidden_states"})


def _forward_params(model: Any) -> tuple[set[str] | None, int | None]:
    """Names and positional arity the forward accepts (``None`` = anything goes)."""
    fn = getattr(model, "forward", model)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, None
    names: set[str] = set()
    positional = 0
    var_kw = var_pos = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is p.VAR_POSITIONAL:
            var_pos = True
        else:
            names.add(p.name)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                positional += 1
    return (None if var_kw else names), (None if var_pos else positional)


# Targets, not inputs: a forward that takes **kwargs (transformers 4.x base models) must not get them.
_LABEL_KEYS = frozenset({"labels", "label", "label_ids", "return_loss"})


def _named_params(model: Any) -> set[str]:
    try:
        return set(inspect.signature(getattr(model, "forward", model)).parameters)
    except (TypeError, ValueError):
        return set()


def _as_mapping(batch: Any) -> Mapping[str, Any] | None:
    if isinstance(batch, Mapping):
        return batch
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    data = getattr(batch, "data", None)  # BatchEncoding-like objects that are not Mappings
    if isinstance(data, Mapping) and hasattr(batch, "keys"):
        return data
    return None


def call_model(model: Callable[..., Any], batch: Any) -> Any:
    """Call ``model`` on ``batch`` the way a training loop would.

    A tensor is passed as is, a tuple/list is unpacked positionally (trimmed to
    what ``forward`` accepts, so ``(x, y)`` batches work with ``forward(x)``), a
    mapping, ``BatchEncoding`` or dataclass becomes keyword arguments restricted
    to the names ``forward`` accepts (so ``labels`` or ``idx`` extras do no harm).

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import call_model
        >>> call_model(torch.nn.Linear(4, 2), (torch.zeros(3, 4), torch.zeros(3))).shape
        torch.Size([3, 2])
    """
    if isinstance(batch, torch.Tensor):
        return model(batch)
    mapping = _as_mapping(batch)
    names, arity = _forward_params(model)
    if mapping is not None:
        if names is None:  # forward(**kwargs): everything goes, except labels it does not name
            explicit = _named_params(model)
            kwargs = {k: v for k, v in mapping.items() if k not in _LABEL_KEYS or k in explicit}
        else:
            kwargs = {k: v for k, v in mapping.items() if k in names}
        return model(**kwargs)
    if isinstance(batch, (tuple, list)):
        args = list(batch) if arity is None else list(batch)[: max(arity, 1)]
        return model(*args)
    return model(batch)


def output_tensor(out: Any) -> torch.Tensor:
    """The main tensor of a model output.

    Tensors are returned as is; mappings and HF ``ModelOutput`` give ``logits``,
    else ``last_hidden_state``, else their first tensor; tuples/lists give their
    first tensor (searched depth-first). Raises ``TypeError`` when there is none.

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import output_tensor
        >>> output_tensor({"loss": None, "logits": torch.ones(2)}).tolist()
        [1.0, 1.0]
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in _OUTPUT_KEYS:
            value = out.get(key) if key in out else None
            if isinstance(value, torch.Tensor):
                return value
        values: Sequence[Any] = list(out.values())
    elif isinstance(out, (tuple, list)):
        values = out
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        values = [getattr(out, f.name) for f in dataclasses.fields(out)]
    else:
        raise TypeError(f"output_tensor: model output must hold a tensor, got {type(out).__name__}")
    for value in values:
        try:
            return output_tensor(value)
        except TypeError:
            continue
    raise TypeError(f"output_tensor: no tensor found in model output of type {type(out).__name__}")


def output_kind(out: Any, model: nn.Module | None = None) -> str:
    """``"states"`` when the main output is a representation (hidden states, embeddings), else ``"scores"``.

    A bare tensor is a representation when ``model`` is given and the tensor's last
    dimension is the model's hidden size (a LightningModule returning
    ``last_hidden_state``): argmax over features is noise there, not a prediction.

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import output_kind
        >>> output_kind({"last_hidden_state": torch.ones(1)}), output_kind(torch.ones(1))
        ('states', 'scores')
    """
    if isinstance(out, Mapping):
        for key in _OUTPUT_KEYS:
            if isinstance(out.get(key) if key in out else None, torch.Tensor):
                return "states" if key in _STATE_KEYS else "scores"
    if isinstance(out, torch.Tensor) and model is not None and out.dim() >= 2:
        hidden = hidden_size(model, deep=True)
        if hidden and out.shape[-1] == hidden:
            return "states"
    return "scores"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own training flag afterwards.

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import eval_mode
        >>> m = torch.nn.Dropout().train()
        >>> with eval_mode(m):
        ...     m.training
        False
        >>> m.training
        True
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def timed_forward(model: nn.Module, batch: Any) -> Callable[[], Any]:
    """A no-argument callable running one inference forward of ``model`` on ``batch``."""

    def run() -> Any:
        with torch.inference_mode():
            return call_model(model, batch)

    return run


def forward_times(model: nn.Module, batches: Sequence[Any], *, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds of one inference forward per batch, in order, each synchronised on the model's device
    (``perfhints tune``'s corpus runs; the probes time repeated calls with :func:`timed_forward`).

    Example::

        >>> import torch
        >>> len(forward_times(torch.nn.Linear(4, 2), [torch.randn(3, 4), torch.randn(5, 4)]))
        2
    """
    wait = sync if sync is not None else (device_synchronizer(device_of(model)) or (lambda: None))
    times = []
    for batch in batches:
        run = timed_forward(model, batch)
        wait()
        start = time.perf_counter()
        run()
        wait()
        times.append(time.perf_counter() - start)
    return times


Synchronizer = Callable[[], None]


def device_synchronizer(device: torch.device | str | None) -> Synchronizer | None:
    """The function that waits for ``device``'s queued work (CUDA, XPU, MPS), or ``None`` for the CPU.

    Kernels on an accelerator run asynchronously: a timer that does not synchronise measures
    kernel *launches*. Every timing primitive here calls it around each timed region.

    Example::

        >>> device_synchronizer("cpu") is None
        True
    """
    if device is None:
        return None
    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_available():
        return functools.partial(torch.cuda.synchronize, torch.device(device))
    if kind == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.xpu.synchronize
    if kind == "mps" and torch.backends.mps.is_available():
        return torch.mps.synchronize
    return None


def _resolve_sync(device: torch.device | None, sync: Synchronizer | None) -> Synchronizer:
    chosen = sync if sync is not None else device_synchronizer(device)
    return chosen if chosen is not None else _no_sync


def _no_sync() -> None:
    return None


device_of = model_device  # the name the timings (and the fix pipeline) use


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
                device: torch.device | None = None, sync: Synchronizer | None = None) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs.

    Example::

        >>> from perfcallbacks.measure import median_time
        >>> median_time(lambda: sum(range(1000)), repeats=3, warmup=1) >= 0
        True
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    wait = _resolve_sync(device, sync)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        wait()
        start = time.perf_counter()
        fn()
        wait()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_times(fns: Mapping[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1,
                  device: torch.device | None = None, sync: Synchronizer | None = None) -> dict[str, float]:
    """Median time of each callable, runs interleaved so that machine drift hits all alike.

    Example::

        >>> from perfcallbacks.measure import compare_times
        >>> sorted(compare_times({"a": lambda: 1, "b": lambda: 2}, repeats=3))
        ['a', 'b']
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    wait = _resolve_sync(device, sync)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wait()
            start = time.perf_counter()
            fn()
            wait()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu", torch.float64)
    return t.reshape(1, -1) if t.dim() <= 1 else t.reshape(t.shape[0], -1)


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Same formula as torchmetrics.functional.cosine_similarity(reduction="none"), without its
    # ~7 s import on a 2-core CPU (near-zero cost matters more than the shared implementation).
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


def padding_mask(batch: Any, out: torch.Tensor) -> torch.Tensor | None:
    """The batch's ``attention_mask`` when it lines up with the output's (batch, tokens) dims, else ``None``.

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import padding_mask
        >>> padding_mask({"attention_mask": torch.ones(2, 5)}, torch.zeros(2, 5, 8)).shape
        torch.Size([2, 5])
    """
    mapping = _as_mapping(batch)
    mask = mapping.get("attention_mask") if mapping is not None else None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and out.dim() >= 2 and tuple(mask.shape) == tuple(out.shape[:2]):
        return mask
    return None


def fidelity(ref: Any, new: Any, *, argmax: bool | None = None, mask: torch.Tensor | None = None) -> dict[str, float]:
    """How faithful ``new`` is to ``ref`` (model outputs or tensors of the same shape).

    Returns ``cosine_mean`` / ``cosine_min`` (cosine similarity of each example,
    flattened, along dim 0), ``max_abs_error`` and ``argmax_agreement`` (share of
    positions whose argmax over the last dim agrees; 1.0 for a single value).
    ``argmax_agreement`` is left out when ``argmax`` is false; by default
    (``None``) it is computed for scores (tensors, ``logits``) and left out for
    representations (``last_hidden_state``, embeddings), whose argmax over
    features decides nothing (near-ties flip under any rounding). ``mask``
    (batch, tokens), e.g. from :func:`padding_mask`, leaves padded positions
    out: their states are never used and would swamp the comparison.

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import fidelity
        >>> f = fidelity(torch.eye(3), torch.eye(3))
        >>> f["cosine_min"], f["argmax_agreement"], f["max_abs_error"]
        (1.0, 1.0, 0.0)
    """
    if argmax is None:
        argmax = output_kind(ref) == "scores"
    ref_t, new_t = output_tensor(ref), output_tensor(new)
    if ref_t.shape != new_t.shape:
        raise ValueError(f"fidelity: shapes differ, ref {tuple(ref_t.shape)} vs new {tuple(new_t.shape)}")
    if mask is not None:
        keep = mask.to(ref_t.device).bool()
        expand = keep.reshape(*keep.shape, *([1] * (ref_t.dim() - keep.dim())))
        ref_t = torch.where(expand, ref_t, torch.zeros((), dtype=ref_t.dtype, device=ref_t.device))
        new_t = torch.where(expand.to(new_t.device), new_t, torch.zeros((), dtype=new_t.dtype, device=new_t.device))
    a, b = _rows(ref_t), _rows(new_t)
    both_zero = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
    cos = _cosine_rows(a, b).clamp(-1.0, 1.0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)  # 0 vs 0 is a perfect match
    diff = (a - b).abs()
    result = {
        "cosine_mean": float(cos.mean().item()),
        "cosine_min": float(cos.min().item()),
        "max_abs_error": float(diff.max().item()) if diff.numel() else 0.0,
    }
    if argmax:
        if ref_t.dim() >= 1 and ref_t.shape[-1] > 1:
            same = ref_t.detach().float().argmax(-1) == new_t.detach().float().argmax(-1)
            if mask is not None and tuple(same.shape) == tuple(mask.shape):
                same = same[mask.to(same.device).bool()]
            agree = same.double().mean().item() if same.numel() else 1.0
        else:
            agree = 1.0
        result["argmax_agreement"] = float(agree)
    return result


def measure_threads(model: nn.Module, batch: Any, candidates: Sequence[int], *,
                    repeats: int = 5, warmup: int = 1) -> dict[int, float]:
    """Median forward time (seconds) of ``model`` on ``batch`` for each intra-op thread count.

    The thread count and the model's train/eval mode are restored afterwards.

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import measure_threads
        >>> sorted(measure_threads(torch.nn.Linear(8, 8), torch.randn(4, 8), [1], repeats=2))
        [1]
    """
    counts = [int(c) for c in candidates]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"candidates must be positive thread counts, got {list(candidates)!r}")
    previous = torch.get_num_threads()
    results: dict[int, float] = {}
    try:
        with eval_mode(model):
            run = timed_forward(model, batch)
            for count in dict.fromkeys(counts):
                torch.set_num_threads(count)
                results[count] = median_time(run, repeats=repeats, warmup=warmup, device=device_of(model, batch))
    finally:
        torch.set_num_threads(previous)
    return results


def concat_batch(batch: Any, times: int) -> Any:
    """``batch`` repeated ``times`` along dim 0 (tensors inside mappings/tuples too).

    Builds bigger batches from one real batch; non-tensor leaves are kept as they are.

    Example::

        >>> import torch
        >>> from perfcallbacks.measure import concat_batch
        >>> concat_batch({"x": torch.zeros(2, 3), "n": 1}, 3)["x"].shape
        torch.Size([6, 3])
    """
    if not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be a positive int, got {times!r}")
    if isinstance(batch, torch.Tensor):
        return batch if times == 1 or batch.dim() == 0 else torch.cat([batch] * times, dim=0)
    mapping = _as_mapping(batch)
    if mapping is not None:
        repeated = {k: concat_batch(v, times) for k, v in mapping.items()}
        if isinstance(batch, Mapping):
            try:
                return type(batch)(repeated)
            except Exception:  # e.g. BatchEncoding subclasses with extra required args
                return repeated
        if dataclasses.is_dataclass(batch):
            return dataclasses.replace(batch, **repeated)
        return repeated
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(concat_batch(v, times) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(concat_batch(v, times) for v in batch)
    return batch
