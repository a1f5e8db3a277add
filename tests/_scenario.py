"""Small real Lightning fits for the second-round scenario tests (debug, data, layout, compile)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from perfcallbacks import PerfHintWarning


def lightning_fit(module: Any, loader: Any, *, steps: int = 8, epochs: int | None = None, warmup: int = 5,
                  suppress=(), trainer_kwargs: dict | None = None, **cb_kwargs: Any):
    """Fit ``module`` with a PerfHintCallback; returns (report, callback, recorded PerfHintWarnings)."""
    import lightning.pytorch as pl

    from perfcallbacks import PerfHintCallback

    cb = PerfHintCallback(warmup_steps=warmup, verbose=False, suppress=list(suppress), **cb_kwargs)
    kwargs = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    kwargs.update({"max_epochs": epochs} if epochs else {"max_steps": steps})
    kwargs.update(trainer_kwargs or {})
    trainer = pl.Trainer(callbacks=[cb], **kwargs)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", PerfHintWarning)
        trainer.fit(module, loader)
    return cb.advisor.report, cb, [w for w in seen if issubclass(w.category, PerfHintWarning)]


def loud_new_hints(report, ids) -> list[str]:
    """Hints of the given ids above ``info`` in ``report`` (the clean counterpart keeps this empty)."""
    return [h.id for h in report.hints if h.id in ids and h.severity != "info" and not h.suppressed]


def mlp_module(depth: int = 8, width: int = 32, classes: int = 4):
    """A LightningModule with many small ops (anomaly detection's cost is per op)."""
    import lightning.pytorch as pl

    class DeepMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [nn.Linear(width, width), nn.Tanh()]
            self.net = nn.Sequential(*layers, nn.Linear(width, classes))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return DeepMLP()


def mlp_loader(n: int = 256, width: int = 32, classes: int = 4, batch_size: int = 16, **kwargs: Any) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, width, generator=g), torch.randint(0, classes, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size, **kwargs)
