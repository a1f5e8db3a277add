"""The Lightning fit the captures show: PerfHintCallback on a model whose batches are padded to 128
tokens for ~12-token rows, with Lightning's default progress bar (rich when installed; DEMO_BAR=tqdm for TQDM)."""

import os
import time

import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar
import torch
from torch.utils.data import DataLoader

from perfcallbacks import PerfHintCallback

torch.manual_seed(0)
MAX_LEN, VOCAB = 128, 512
rows = [torch.randint(1, VOCAB, (n,)) for n in torch.randint(8, 17, (512,)).tolist()]


def collate(items):  # the mistake: pad every batch to MAX_LEN
    ids = torch.zeros(len(items), MAX_LEN, dtype=torch.long)
    mask = torch.zeros(len(items), MAX_LEN, dtype=torch.long)
    for i, (r, _) in enumerate(items):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([y for _, y in items])}


class TinyEncoder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 64)
        self.mix = torch.nn.Linear(64, 64)
        self.head = torch.nn.Linear(64, 2)

    def training_step(self, batch, batch_idx):
        h = torch.relu(self.mix(self.embed(batch["input_ids"])))
        m = batch["attention_mask"].unsqueeze(-1)
        loss = torch.nn.functional.cross_entropy(self.head((h * m).sum(1) / m.sum(1)), batch["labels"])
        self.log("train_loss", loss, prog_bar=True)
        time.sleep(0.05)  # a visible bar
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


bar = [TQDMProgressBar()] if os.environ.get("DEMO_BAR") == "tqdm" else []  # default: rich when installed
trainer = L.Trainer(max_steps=24, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_model_summary=False, callbacks=[*bar, PerfHintCallback(warmup_steps=8)])
trainer.fit(TinyEncoder(), DataLoader([(r, i % 2) for i, r in enumerate(rows)], batch_size=16, collate_fn=collate))
print("FIT_DONE", flush=True)
