"""A PerfHintCallback that writes what each DDP rank saw: spawned children never send the callback back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from perfcallbacks import PerfHintCallback


class RankRecorder(PerfHintCallback):
    """At train end, writes ``{"rank": N, **self.record(trainer)}`` to ``<out_dir>/rank<N>.json``.

    Subclasses (module level, so a spawned child can unpickle them) say what in :meth:`record`.
    """

    def __init__(self, out_dir: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir

    def record(self, trainer: Any) -> dict[str, Any]:
        return {}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_end(trainer, pl_module)
        record = {"rank": trainer.global_rank, **self.record(trainer)}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
