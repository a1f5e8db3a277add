"""The ``channels-last`` candidate: a copy of a conv model, and its image inputs, in NHWC memory format.

Convolution kernels (cuDNN, oneDNN) work in channels_last; a contiguous (NCHW)
model pays a layout conversion around every conv. The builder only *builds* the
candidate; :mod:`perfcallbacks.fixes.pipeline` measures it on the job's batches
and keeps it when it is faster and its outputs match (float tolerance only: the
arithmetic is the same, only the order of the sums may change).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes._guard import Tolerance, is_compiled, safe_copy
from perfcallbacks.fixes.candidate import Candidate
from perfcallbacks.report import FixResult

FIX_ID = "channels-last"
# Same arithmetic in another summation order: near-exact outputs are required.
TOLERANCE = Tolerance(cosine_mean=0.99999, cosine_min=0.9999, argmax_agreement=0.99)


def to_channels_last(batch: Any) -> Any:
    """``batch`` with every 4-D floating tensor in channels_last (new containers; the input is not modified).

    Tensors, mappings (dict, ``BatchEncoding``), dataclasses, tuples, lists and namedtuples are walked;
    other values are kept as they are.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.channels_last import to_channels_last
        >>> x = torch.zeros(2, 3, 8, 8)
        >>> y = to_channels_last({"pixel_values": x, "labels": torch.zeros(2)})
        >>> y["pixel_values"].is_contiguous(memory_format=torch.channels_last), x.is_contiguous()
        (True, True)
    """
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        converted = {k: to_channels_last(v) for k, v in batch.items()}
        try:
            return type(batch)(converted)
        except Exception:  # mapping types with extra constructor arguments
            return converted
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_channels_last(getattr(batch, f.name))
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_channels_last(v) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_channels_last(v) for v in batch)
    return batch


def image_tensors(batch: Any, limit: int = 8) -> list[torch.Tensor]:
    """The 4-D floating tensors of ``batch`` (at most ``limit``), searched the way :func:`to_channels_last` walks."""
    found: list[torch.Tensor] = []

    def walk(value: Any) -> None:
        if len(found) >= limit:
            return
        if isinstance(value, torch.Tensor):
            if value.dim() == 4 and value.is_floating_point():
                found.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, (tuple, list)):
            for item in value:
                walk(item)

    walk(batch)
    return found


def conv2d_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def weights_channels_last(model: nn.Module) -> bool:
    """True when every Conv2d weight with a spatial kernel is already stored channels_last."""
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.dim() == 4
               and tuple(m.weight.shape[-2:]) != (1, 1)]
    return bool(weights) and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                                 for w in weights)


def channels_last_candidate(model: nn.Module, example_batch: Any, *, profile: Any = None) -> Candidate | FixResult:
    """A channels_last copy of ``model`` whose ``prepare`` converts 4-D image inputs; the user's model is untouched.

    Returns a ``skipped`` :class:`FixResult` when there is nothing to convert (no Conv2d, no 4-D input,
    already channels_last, a compiled model) and ``failed`` when the copy cannot be converted.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.channels_last import channels_last_candidate
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> cand = channels_last_candidate(net, torch.randn(2, 3, 16, 16))
        >>> cand.fix_id, cand.model is net, net[0].weight.is_contiguous()
        ('channels-last', False, True)
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    convs = conv2d_layers(model)
    if not convs:
        return FixResult(FIX_ID, "skipped", "the model has no Conv2d layer: channels_last changes nothing")
    if is_compiled(model):
        return FixResult(FIX_ID, "skipped", "compiled model: convert it before torch.compile "
                                            "(model.to(memory_format=torch.channels_last))")
    images = image_tensors(example_batch)
    if not images:
        return FixResult(FIX_ID, "skipped", "no 4-D image tensor in the batch to convert")
    inputs_cl = all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in images)
    if weights_channels_last(model) and inputs_cl:
        return FixResult(FIX_ID, "skipped", "the model and its inputs are already channels_last")
    try:
        copy = safe_copy(model)
        copy.to(memory_format=torch.channels_last)
    except Exception as err:  # principle 1: a model that cannot be copied or converted is reported, not raised
        return FixResult(FIX_ID, "failed", f"could not build a channels_last copy: {type(err).__name__}: {err}")
    details = {"conv2d_layers": len(convs), "image_inputs": [list(t.shape) for t in images],
               "inputs_were_channels_last": inputs_cl}
    if profile is not None:
        details["device"] = getattr(profile, "name", None)
    return Candidate(FIX_ID, copy, tolerance=TOLERANCE, prepare=to_channels_last, details=details,
                     build_s=time.perf_counter() - start)
