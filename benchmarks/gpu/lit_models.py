"""Lightning modules and a quiet Trainer for the GPU suite (imported only where Lightning is used).

Example::

    from lit_models import LitClassifier, quiet_trainer
    from scenarios import mlp, vector_loader
    trainer = quiet_trainer(accelerator="cuda", devices=1, max_steps=30)
    trainer.fit(LitClassifier(mlp(1024, out=8)), vector_loader(4096, 1024, batch_size=256))
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn


class LitClassifier(pl.LightningModule):
    """Wraps any ``net`` mapping a batch ``x`` to logits; batches are ``(x, y)``."""

    def __init__(self, net: nn.Module, lr: float = 0.01) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        nn.functional.cross_entropy(self(x), y)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class LitEncoder(pl.LightningModule):
    """An HF encoder trained on a dummy objective (mean of the last hidden state); batches are dicts."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.model = encoder  # named `model` so perfcallbacks finds the HF config (model_config looks there)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch["input_ids"], batch.get("attention_mask")).float().pow(2).mean()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch["input_ids"], batch.get("attention_mask"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.001)


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A Trainer with no logger, checkpoints, progress bar or summary (the suite's runs write nothing)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
    defaults.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "GPU available but not used", "few workers": the suite plants those
        return pl.Trainer(**defaults)
