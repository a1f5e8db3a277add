"""Guarded fixes: each one is measured on the user's model and a real batch before it is kept.

- :func:`tune_threads` / :func:`restore_threads` / :func:`training_thread_cap` (``threads``)
- :func:`guarded_autocast` (``autocast``)
- :func:`quantize_guarded` (``dynamic-quantization``)
- :func:`quantize_for_export` (int8 artifact beside the fp32 one)
"""

from perfcallbacks.fixes._guard import Tolerance
from perfcallbacks.fixes.autocast import guarded_autocast
from perfcallbacks.fixes.export import ExportResult, quantize_for_export
from perfcallbacks.fixes.quantize import QuantTolerance, quantize_guarded
from perfcallbacks.fixes.threads import restore_threads, training_thread_cap, tune_threads

__all__ = [
    "ExportResult",
    "QuantTolerance",
    "Tolerance",
    "guarded_autocast",
    "quantize_for_export",
    "quantize_guarded",
    "restore_threads",
    "training_thread_cap",
    "tune_threads",
]
