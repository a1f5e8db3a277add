"""The ``autocast`` fix: run inference under autocast only when it is measured faster and faithful."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes._guard import Tolerance, check_margin, model_device, quiet_torch
from perfcallbacks.measure import call_model, compare_times, eval_mode, fidelity, output_tensor, padding_mask
from perfcallbacks.report import FixResult

log = logging.getLogger(__name__)
FIX_ID = "autocast"


def guarded_autocast(model: nn.Module, example_batch: Any, *, profile: Any, margin: float = 0.05,
                     tolerance: Tolerance | None = None, repeats: int = 5
                     ) -> tuple[FixResult, Callable[[], AbstractContextManager[Any]] | None]:
    """Time the forward in fp32 and under ``torch.autocast``; keep autocast only if faster and faithful.

    The dtype is ``profile.fast_autocast_dtype()`` (bf16 when the profile names
    none, so that emulated bf16 gets measured and rejected rather than assumed).
    Returns the :class:`~perfcallbacks.report.FixResult` and, when applied, a
    factory of autocast context managers to wrap inference forwards in.

    Example::

        >>> import torch
        >>> from perfcallbacks import DeviceProfile
        >>> from perfcallbacks.fixes import guarded_autocast
        >>> result, ctx = guarded_autocast(torch.nn.Linear(64, 8), torch.randn(16, 64),
        ...                                profile=DeviceProfile.detect())
        >>> result.status in ("applied", "rejected")
        True
    """
    margin = check_margin(margin)
    tolerance = Tolerance() if tolerance is None else tolerance
    if not isinstance(tolerance, Tolerance):
        raise TypeError(f"tolerance must be a Tolerance, got {type(tolerance).__name__}")
    if not hasattr(profile, "fast_autocast_dtype"):
        raise TypeError(f"profile must be a DeviceProfile, got {type(profile).__name__}")
    details: dict[str, Any] = {}
    try:
        device_type = model_device(model).type
        dtype = profile.fast_autocast_dtype() or torch.bfloat16
        details.update(device_type=device_type, dtype=str(dtype).replace("torch.", ""))
        if not torch.amp.is_autocast_available(device_type):
            return FixResult(FIX_ID, "skipped", f"autocast is not available on {device_type}", details=details), None
        factory = functools.partial(torch.autocast, device_type=device_type, dtype=dtype)

        with eval_mode(model), torch.inference_mode(), quiet_torch():
            ref = call_model(model, example_batch)
            with factory():
                new = call_model(model, example_batch)

            def run_fp32() -> None:
                call_model(model, example_batch)

            def run_amp() -> None:
                with factory():
                    call_model(model, example_batch)

            times = compare_times({"fp32": run_fp32, "autocast": run_amp}, repeats=repeats,
                                  device=torch.device(device_type))
        fid = fidelity(ref, new, mask=padding_mask(example_batch, output_tensor(ref)))
    except Exception as err:
        log.debug("autocast fix failed", exc_info=True)
        return FixResult(FIX_ID, "failed", f"measurement failed: {type(err).__name__}: {err}", details=details), None

    speedup = times["fp32"] / times["autocast"] if times["autocast"] > 0 else None
    details.update(fp32_s=times["fp32"], autocast_s=times["autocast"])
    name = details["dtype"]
    bad = tolerance.violations(fid)
    if speedup is None or speedup < 1.0 + margin:
        return FixResult(FIX_ID, "rejected", f"{name} autocast measured {speedup or 0:.3f}x vs fp32 "
                         f"(needs {1 + margin:.2f}x)" + (" - emulated on this device" if (speedup or 0) < 1 else ""),
                         speedup=speedup, fidelity=fid, details=details), None
    if bad:
        return FixResult(FIX_ID, "rejected", f"{name} autocast outside tolerance: {'; '.join(bad)}",
                         speedup=speedup, fidelity=fid, details=details), None
    return FixResult(FIX_ID, "applied", f"{name} autocast {speedup:.2f}x faster within tolerance",
                     speedup=speedup, fidelity=fid, details=details), factory
