"""Sharing one rank's fix decision with the others (DDP inference).

Under several processes only rank zero measures a fix (the other ranks would each decide alone,
under their siblings' load, and could disagree); the others answer with the user's own model until
rank zero has decided, then build the same candidate from the decision's ``params``. The exchange
is one object per call during the trial window, at the end of the same call index on every rank;
the window ends at the shortest rank's last call, so no rank waits for a call its sibling never makes.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger("perfcallbacks.fixes")


class RankGroup(Protocol):
    """The two collectives the pipeline needs (every rank calls each, in the same order)."""

    rank: int
    world_size: int

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""

    def broadcast(self, obj: Any) -> Any:
        """Rank zero's ``obj`` on every rank."""


class TorchRankGroup:
    """:class:`RankGroup` over ``torch.distributed``'s default process group (gloo, NCCL, ...).

    Example::

        >>> TorchRankGroup.current() is None   # no process group in this process
        True
    """

    def __init__(self, dist: Any) -> None:
        self._dist = dist
        self.rank = int(dist.get_rank())
        self.world_size = int(dist.get_world_size())

    @classmethod
    def current(cls) -> TorchRankGroup | None:
        """The default process group when one is initialised with several ranks, else ``None``."""
        try:
            import torch.distributed as dist

            if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
                return None
            return cls(dist)
        except Exception:  # principle 1: no group means no sharing, never a failure
            log.debug("perfcallbacks: no usable process group", exc_info=True)
            return None

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]


def shortest_job(group: RankGroup, expected_calls: int | None) -> int | None:
    """The fewest calls any rank will make (``None`` when a rank does not know its own)."""
    counts = group.gather(-1 if expected_calls is None else int(expected_calls))
    return None if any(c is None or c < 0 for c in counts) else min(counts)
