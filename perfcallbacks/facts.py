"""Process-wide facts the checks read: debug modes, determinism, cudnn, compile counters.

Framework-free: called by the :class:`~perfcallbacks.advisor.Advisor` before each phase's checks,
so every adapter and a plain loop see the same facts. Must be cheap (it runs at setup, end of
warm-up and each inference stage) and never raise.
"""

from __future__ import annotations

from typing import Any

from perfcallbacks.context import RunContext


def capture_process_facts(ctx: RunContext, model: Any = None) -> None:
    """Fill the process-wide facts of ``ctx`` (no-op until the debug / compile / layout checks land)."""
    return None
