"""Process-wide torch settings a fix may change, captured at stage start and put back at stage end.

Example::

    >>> import torch
    >>> from perfcallbacks.process_state import ProcessState
    >>> state = ProcessState.capture()
    >>> torch.set_float32_matmul_precision("high")
    >>> state.restore()
    ['matmul_precision']
    >>> torch.get_float32_matmul_precision() == state.matmul_precision
    True
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

log = logging.getLogger("perfcallbacks")


def _quantized_engine() -> str | None:
    try:
        return str(torch.backends.quantized.engine)
    except Exception:  # builds without quantized engines
        return None


@dataclass(frozen=True)
class ProcessState:
    """Intra-op threads, float32 matmul precision and the quantized engine, as they were."""

    threads: int
    matmul_precision: str
    quantized_engine: str | None

    @classmethod
    def capture(cls) -> ProcessState:
        return cls(torch.get_num_threads(), torch.get_float32_matmul_precision(), _quantized_engine())

    def restore(self) -> list[str]:
        """Put every setting back; returns the names of those that had changed."""
        changed = []
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
            changed.append("threads")
        if torch.get_float32_matmul_precision() != self.matmul_precision:
            torch.set_float32_matmul_precision(self.matmul_precision)
            changed.append("matmul_precision")
        if self.quantized_engine is not None and _quantized_engine() != self.quantized_engine:
            try:
                torch.backends.quantized.engine = self.quantized_engine
                changed.append("quantized_engine")
            except Exception:
                log.debug("perfcallbacks: could not restore the quantized engine", exc_info=True)
        return changed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
