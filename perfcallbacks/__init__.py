"""perfcallbacks: measured performance hints and guarded fixes for PyTorch training and inference.

``import perfcallbacks`` needs only torch; the Lightning and HF callbacks import
their framework when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfcallbacks.hints import REGISTRY, Hint, PerfHintError, PerfHintWarning
from perfcallbacks.report import FixResult, Report

if TYPE_CHECKING:
    from perfcallbacks.advisor import Advisor
    from perfcallbacks.device import DeviceProfile
    from perfcallbacks.adapters.hf import HFPerfHints
    from perfcallbacks.adapters.lightning import PerfHintCallback

__version__ = "0.1.0"

__all__ = [
    "Advisor",
    "DeviceProfile",
    "FixResult",
    "HFPerfHints",
    "Hint",
    "PerfHintCallback",
    "PerfHintError",
    "PerfHintWarning",
    "REGISTRY",
    "Report",
    "quantize_for_export",
]

# Loaded on first use: the ``perfhints run`` launcher imports the package without torch.
_LAZY = {
    "Advisor": ("perfcallbacks.advisor", "Advisor"),
    "DeviceProfile": ("perfcallbacks.device", "DeviceProfile"),
    "PerfHintCallback": ("perfcallbacks.adapters.lightning", "PerfHintCallback"),
    "HFPerfHints": ("perfcallbacks.adapters.hf", "HFPerfHints"),
    "quantize_for_export": ("perfcallbacks.fixes", "quantize_for_export"),
}


def __getattr__(name: str) -> Any:
    # Adapters import Lightning / transformers: load them only when asked for.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'perfcallbacks' has no attribute {name!r}")
