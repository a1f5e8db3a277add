"""workers-restart: the seconds the hint says ``persistent_workers=True`` saves, against the seconds it saves.

A Lightning fit whose train and val loaders start one worker each with a slow ``worker_init_fn`` (what
opening a dataset or loading a tokenizer in every worker costs), every epoch and every validation:

* **hinted**: the fit with ``PerfHintCallback``; the two ``workers-restart`` hints (training loader at the end
  of the warm-up, validation loader after the fit's first validation) give ``seconds_saved_estimate``.
* **plain** / **persistent**: the same fit without the callback, ``persistent_workers=False`` and ``True``,
  alternated; real saving = median plain - median persistent (whole ``trainer.fit`` wall time).

Run::

    python benchmarks/workers_restart.py [--repeats 3] [--startup 0.3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from perfcallbacks import PerfHintCallback
from perfcallbacks.hints import PerfHintWarning

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "workers_restart.json"
sys.path.insert(0, str(HERE / "gpu"))
from lit_models import LitClassifier  # noqa: E402  (the GPU suite's module: any net, (x, y) batches)


class SlowStart:
    """``worker_init_fn``: each new worker pays ``seconds`` before its first batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, worker_id: int) -> None:
        time.sleep(self.seconds)


def loader(n: int, persistent: bool, startup: float, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 4, (n,), generator=g))
    return DataLoader(data, batch_size=16, num_workers=1, persistent_workers=persistent,
                      worker_init_fn=SlowStart(startup), multiprocessing_context="fork")


def fit(persistent: bool, startup: float, epochs: int, callback: PerfHintCallback | None) -> float:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[callback] if callback else [])
    torch.manual_seed(0)
    model = LitClassifier(nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4)))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        trainer.fit(model, loader(640, persistent, startup, 0), loader(160, persistent, startup, 1))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="alternated plain / persistent pairs")
    parser.add_argument("--startup", type=float, default=0.3, help="seconds each new worker takes to start")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    callback = PerfHintCallback(verbose=False)
    hinted_s = fit(False, args.startup, args.epochs, callback)
    hints = {h.evidence["loader"]: h.evidence for h in callback.advisor.report.hints
             if h.id == "workers-restart"}
    predicted = sum(ev["seconds_saved_estimate"] for ev in hints.values())
    plain, persistent = [], []
    for _ in range(args.repeats):
        plain.append(fit(False, args.startup, args.epochs, None))
        persistent.append(fit(True, args.startup, args.epochs, None))
    real = statistics.median(plain) - statistics.median(persistent)
    result = {"benchmark": "workers_restart", "argv": argv if argv is not None else [], "torch": torch.__version__,
              "lightning": pl.__version__, "cpu": platform.processor() or platform.machine(),
              "load_avg_after": os.getloadavg(), "startup_s": args.startup, "epochs": args.epochs,
              "hints": hints, "predicted_saving_s": predicted, "hinted_fit_s": hinted_s,
              "plain_fit_s": plain, "persistent_fit_s": persistent, "real_saving_s": real,
              "relative_error": predicted / real - 1.0 if real > 0 else None}
    for which, ev in sorted(hints.items()):
        print(f"{which}: start-up {ev['startup_s_per_epoch']:.2f} s per epoch, {ev['restarts_to_come']} restarts "
              f"to come, saves {ev['seconds_saved_estimate']:.2f} s")
    print(f"predicted saving {predicted:.2f} s | real: plain {statistics.median(plain):.2f} s - persistent "
          f"{statistics.median(persistent):.2f} s = {real:.2f} s | hinted fit {hinted_s:.2f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
