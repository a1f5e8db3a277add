"""Observation machinery: batch statistics, a self-removing forward pre-hook, step timing.

Everything here is cheap and bounded: batches are summarised into
:class:`~perfcallbacks.context.BatchStats` (shapes and lengths, no tensors
kept), the hook removes itself after ``limit`` calls, and unknown batch types
are skipped, never raised on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from perfcallbacks.context import BatchStats

log = logging.getLogger(__name__)

_MASK_KEYS = ("attention_mask", "mask", "input_mask")
_ID_KEYS = ("input_ids", "ids", "tokens", "token_ids")


def iter_tensors(obj: Any, depth: int = 0):
    """Yield ``(key, tensor)`` pairs from tensors, mappings (incl. BatchEncoding), sequences, dataclasses."""
    if depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        yield "", obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            for sub, tensor in iter_tensors(value, depth + 1):
                yield (str(key) if not sub else f"{key}.{sub}"), tensor
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj[:16]):
            for sub, tensor in iter_tensors(value, depth + 1):
                yield (sub or str(index)), tensor
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            for sub, tensor in iter_tensors(getattr(obj, f.name, None), depth + 1):
                yield (f.name if not sub else f"{f.name}.{sub}"), tensor
    else:
        data = getattr(obj, "data", None)  # BatchEncoding-likes that are not Mappings
        if isinstance(data, Mapping):
            yield from iter_tensors(data, depth + 1)


def _named(tensors: list[tuple[str, torch.Tensor]], names: tuple[str, ...]) -> torch.Tensor | None:
    for key, tensor in tensors:
        if key.rsplit(".", 1)[-1] in names:
            return tensor
    return None


def batch_stats(batch: Any, pad_token_id: int | None = None, hash_rows: bool = False) -> BatchStats | None:
    """Summarise ``batch``: size, padded length, real lengths (from the mask or pad id), dtypes.

    Returns ``None`` for batches with no tensors. Never raises on odd input.

    Example::

        >>> import torch
        >>> stats = batch_stats({"input_ids": torch.ones(2, 4, dtype=torch.long),
        ...                      "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])})
        >>> stats.batch_size, stats.seq_len, stats.pad_fraction
        (2, 4, 0.25)
    """
    try:
        tensors = list(iter_tensors(batch))
    except Exception:  # exotic containers: skip, never crash
        log.debug("perfcallbacks: could not walk batch of type %s", type(batch).__name__, exc_info=True)
        return None
    tensors = [(k, t) for k, t in tensors if t.dim() > 0]
    if not tensors:
        return None
    first = tensors[0][1]
    ids = _named(tensors, _ID_KEYS)
    mask = _named(tensors, _MASK_KEYS)
    seq_len = None
    lengths: tuple[int, ...] = ()
    if mask is not None and mask.dim() == 2:
        seq_len = int(mask.shape[1])
        lengths = tuple(int(n) for n in (mask != 0).sum(dim=1).tolist())
    elif ids is not None and ids.dim() == 2:
        seq_len = int(ids.shape[1])
        if pad_token_id is not None:
            lengths = tuple(int(n) for n in (ids != pad_token_id).sum(dim=1).tolist())
    elif first.dim() == 2 and not first.is_floating_point():
        seq_len = int(first.shape[1])  # an unnamed token tensor
    primary = ids if ids is not None else first
    row_hashes: tuple[int, ...] = ()
    if hash_rows and primary.dim() >= 1:
        row_hashes = _row_hashes(primary)
    return BatchStats(
        batch_size=int(primary.shape[0]),
        seq_len=seq_len,
        lengths=lengths,
        dtypes=tuple(sorted({str(t.dtype).replace("torch.", "") for _, t in tensors})),
        device=first.device.type,
        row_hashes=row_hashes,
    )


def _row_hashes(tensor: torch.Tensor, max_rows: int = 256) -> tuple[int, ...]:
    rows = tensor.detach()[:max_rows].to("cpu").contiguous()
    flat = rows.reshape(rows.shape[0], -1)
    return tuple(zlib.crc32(row.numpy().tobytes()) for row in flat)


class StepTimer:
    """Step time and data wait (gap between one step's end and the next step's start).

    The first step is a warm-up (allocator, autotuning, lazy init): it is
    excluded from the statistics.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        # Waits for the device's queued work at each mark (CUDA kernels are asynchronous): set by
        # the adapter from the model's device (see measure.device_synchronizer); None on CPU.
        self.sync = sync
        self.steps_seen = 0
        self.step_times: list[float] = []
        self.data_wait_times: list[float] = []
        self.epoch_first_waits: list[float] = []  # epoch start -> first batch (includes worker start-up)
        self._start: float | None = None
        self._last_end: float | None = None
        self._epoch_mark: float | None = None

    def start(self, now: float | None = None) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter() if now is None else now
        if self._epoch_mark is not None:
            self.epoch_first_waits.append(max(0.0, now - self._epoch_mark))
            self._epoch_mark = None
        elif self._last_end is not None and self.steps_seen >= 1:
            self.data_wait_times.append(max(0.0, now - self._last_end))
        self._start = now

    @property
    def in_step(self) -> bool:
        """True between :meth:`start` and :meth:`end`."""
        return self._start is not None

    def mark_epoch_start(self, now: float | None = None) -> None:
        """An epoch begins: the wait for its first batch is recorded apart (worker start-up), not as data wait."""
        self._last_end = None
        self._epoch_mark = time.perf_counter() if now is None else now

    def end(self, now: float | None = None) -> None:
        if self.sync is not None and self._start is not None:
            self.sync()
        now = time.perf_counter() if now is None else now
        if self._start is None:
            return
        if self.steps_seen >= 1:
            self.step_times.append(now - self._start)
        self.steps_seen += 1
        self._start = None
        self._last_end = now

    def reset_gap(self) -> None:
        """Forget the previous step's end (epoch boundary, validation loop in between)."""
        self._last_end = None
