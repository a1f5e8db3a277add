"""Overhead of PerfHintCallback on a 200-step Lightning fit (goal: < 1% of fit wall time).

Two measurements of the same runs:

* **own hook time**: the callback's wrapped hooks time themselves
  (``callback.overhead_s``: setup checks, warm-up observation, report), plus the
  unwrapped after-warm-up fast path (one bool check per hook), timed
  separately over many calls and multiplied by the hook calls it sees;
  divided by the fit's wall time and by the summed step time.
* **end to end**: fit wall time with / without the callback, runs alternating,
  several repeats, median ratio (noisy on a shared 2-core machine: the
  own-hook number is the precise one).

Run::

    python benchmarks/overhead_lightning.py [--repeats 5] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from perfcallbacks import PerfHintCallback, PerfHintWarning

RESULTS = Path(__file__).parent / "results" / "overhead_lightning.json"
FAST_PATH_CALLS = 200_000  # calls timed for the after-warm-up fast path


class TinyMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StepClock(pl.Callback):
    """Sum of step times (batch start -> batch end), the denominator of the per-step share."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._start = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.total_s += time.perf_counter() - self._start
        self.steps += 1


def fit_once(steps: int, with_callback: bool) -> dict[str, float]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64 * 16, 32), torch.randint(0, 8, (64 * 16,)))
    clock = StepClock()
    callbacks: list[pl.Callback] = [clock]
    cb = None
    if with_callback:
        cb = PerfHintCallback(verbose=False)
        callbacks.append(cb)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         default_root_dir="/tmp/perfcallbacks-overhead")
    start = time.perf_counter()
    trainer.fit(TinyMLP(), DataLoader(data, batch_size=16))
    wall = time.perf_counter() - start
    row = {"fit_wall_s": wall, "step_sum_s": clock.total_s, "steps": clock.steps}
    if cb is not None:
        row["hook_s"] = cb.overhead_s
        row["advisor_s"] = cb.advisor.overhead_s
        row["report_write_s"] = cb._report_s
        row["warmup_steps"] = cb.warmup_steps
    return row


def fast_path_cost_s() -> float:
    """Seconds per call of an after-warm-up batch hook (the unwrapped bool check)."""
    cb = PerfHintCallback(verbose=False)
    hook = cb.on_train_batch_start
    start = time.perf_counter()
    for i in range(FAST_PATH_CALLS):
        hook(None, None, None, i)
    return (time.perf_counter() - start) / FAST_PATH_CALLS


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1 = least noise)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    warnings.simplefilter("ignore", PerfHintWarning)

    fit_once(20, True)  # warm imports / allocator once, not measured
    with_rows, without_rows = [], []
    for i in range(args.repeats):  # alternate, switching which goes first, so drift hits both alike
        order = (True, False) if i % 2 == 0 else (False, True)
        for flag in order:
            (with_rows if flag else without_rows).append(fit_once(args.steps, flag))
    per_call = fast_path_cost_s()

    shares_wall, shares_step, per_step_us, shares_no_report = [], [], [], []
    for row in with_rows:
        quiet_steps = max(0, row["steps"] - row["warmup_steps"])
        own = row["hook_s"] + 2 * quiet_steps * per_call  # 2 batch hooks per step after warm-up
        row["own_overhead_s"] = own
        shares_wall.append(own / row["fit_wall_s"])
        shares_step.append(own / row["step_sum_s"])
        shares_no_report.append((own - row["report_write_s"]) / row["fit_wall_s"])
        per_step_us.append(own / row["steps"] * 1e6)
    median_step_ms = statistics.median(r["step_sum_s"] / r["steps"] for r in without_rows) * 1e3
    e2e = statistics.median(w["fit_wall_s"] for w in with_rows) / statistics.median(
        w["fit_wall_s"] for w in without_rows)
    result = {
        "benchmark": "overhead_lightning",
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "lightning": pl.__version__,
                    "cpu": platform.processor() or platform.machine(), "cores_visible": len(
                        __import__("os").sched_getaffinity(0))},
        "median_step_ms_without": round(median_step_ms, 4),
        "own_overhead_share_of_fit_wall": round(statistics.median(shares_wall), 6),
        "own_overhead_share_of_step_time": round(statistics.median(shares_step), 6),
        "own_overhead_us_per_step": round(statistics.median(per_step_us), 2),
        "report_write_ms": round(statistics.median(r["report_write_s"] for r in with_rows) * 1e3, 3),
        "own_overhead_share_of_fit_wall_without_report_write": round(statistics.median(shares_no_report), 6),
        "fast_path_hook_ns": round(per_call * 1e9, 1),
        "end_to_end_ratio_median": round(e2e, 4),
        "runs_with": with_rows,
        "runs_without": without_rows,
    }
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("runs_")}, indent=2))
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2))
        print(f"saved {RESULTS}")
    return result


if __name__ == "__main__":
    main()
