"""What-if planning: check, from a laptop CPU, a model that is meant to train on an A100.

``PerfHintCallback(target="a100")`` judges the run as if it ran on an A100:
the dims, batch size and precision that would leave its Tensor Cores idle or
badly tiled show up now, on a 2-core CPU, in a few seconds. The second run
applies the advice (aligned widths, batch of 16, TF32 matmuls) and comes out
clean.

Run::

    python examples/lightning/what_if_a100.py
"""

from __future__ import annotations

import argparse
import warnings

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from perfcallbacks import PerfHintCallback, PerfHintWarning


class Planned(pl.LightningModule):
    """A small MLP classifier; ``hidden`` / ``classes`` are the widths being planned."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def run(name: str, *, features: int, hidden: int, classes: int, batch_size: int, steps: int) -> list[str]:
    data = TensorDataset(torch.randn(batch_size * steps, features), torch.randint(0, classes, (batch_size * steps,)))
    cb = PerfHintCallback(target="a100", warmup_steps=min(5, steps), verbose=False, report_path=None)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=f"runs/what_if/{name}",
                         callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)  # the table below says it all once
        trainer.fit(Planned(features, hidden, classes), DataLoader(data, batch_size=batch_size))
    report = cb.advisor.report
    print(f"\n=== {name}: hidden={hidden}, classes={classes}, batch={batch_size}, "
          f"matmul precision {torch.get_float32_matmul_precision()!r} ===")
    print(report.render())
    return report.hint_ids


def main(argv: list[str] | None = None) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    planned = run("as planned", features=300, hidden=1001, classes=37, batch_size=12, steps=args.steps)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on Ampere: Tensor Cores for fp32 matmuls
    try:
        fixed = run("with the advice", features=304, hidden=1024, classes=40, batch_size=16, steps=args.steps)
    finally:
        torch.set_float32_matmul_precision(previous)
    print(f"\nhints as planned: {planned}\nhints after the advice: {fixed}")
    return {"planned": planned, "fixed": fixed}


if __name__ == "__main__":
    main()
