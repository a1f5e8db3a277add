"""A small, ordinary Lightning training script (nothing perfcallbacks-specific in it).

Options: --exit-code N (exit with N after fit), --raise (raise after fit),
--with-callback (the script adds PerfHintCallback itself), --pl (use the
standalone ``pytorch_lightning`` package instead of ``lightning.pytorch``),
--devices N --strategy S (e.g. 2 CPU processes with ddp / ddp_spawn).
"""

import argparse
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--raise", dest="raise_", action="store_true")
parser.add_argument("--with-callback", action="store_true")
parser.add_argument("--pl", action="store_true")
parser.add_argument("--steps", type=int, default=4)
parser.add_argument("--devices", type=int, default=1)
parser.add_argument("--strategy", default="auto")
args = parser.parse_args()

if args.pl:
    import pytorch_lightning as L
else:
    import lightning.pytorch as L


class Boring(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(32, 2)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


data = TensorDataset(torch.randn(64, 32), torch.randint(0, 2, (64,)))
callbacks = []
if args.with_callback:
    from perfcallbacks import PerfHintCallback

    callbacks.append(PerfHintCallback(warmup_steps=2, verbose=False))
trainer = L.Trainer(
    max_steps=args.steps,
    accelerator="cpu",
    devices=args.devices,
    strategy=args.strategy,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    callbacks=callbacks,
)
names = [type(cb).__name__ for cb in trainer.callbacks]
print(f"CALLBACKS={names} RANK={os.environ.get('RANK', '-')}", flush=True)
trainer.fit(Boring(), DataLoader(data, batch_size=8))
print("FIT_DONE", flush=True)
if args.raise_:
    raise RuntimeError("boom after fit")
sys.exit(args.exit_code)
