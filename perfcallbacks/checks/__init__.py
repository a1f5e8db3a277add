"""All checks, one module per hint category; importing this package registers them."""

from perfcallbacks.checks import alignment, batch, data, device, inference, model, padding, precision  # noqa: F401
from perfcallbacks.checks import compile, debug, distributed, layout, model_attention  # noqa: F401
from perfcallbacks.checks.registry import CHECKS, Check, check, checks_for

__all__ = ["CHECKS", "Check", "check", "checks_for"]
