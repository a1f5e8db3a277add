"""An ordinary Lightning script with a padding mistake (``--padded``: every batch padded to 128
tokens for ~12-token sentences) or without it (dynamic padding: the clean case).

Options: --padded, --steps N. Nothing perfcallbacks-specific in it.
"""

import argparse

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

parser = argparse.ArgumentParser()
parser.add_argument("--padded", action="store_true")
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--progress", action="store_true")
args = parser.parse_args()
torch.manual_seed(0)
MAX_LEN, VOCAB = 128, 512
lengths = torch.randint(8, 17, (256,)).tolist()
rows = [torch.randint(1, VOCAB, (n,)) for n in lengths]


def collate(items):
    width = MAX_LEN if args.padded else max(len(r) for r, _ in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for i, (r, _) in enumerate(items):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([y for _, y in items])}


class TinyEncoder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 64)
        self.mix = torch.nn.Linear(64, 64)
        self.head = torch.nn.Linear(64, 2)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.mix(self.embed(input_ids)))
        h = (h * attention_mask.unsqueeze(-1)).sum(1) / attention_mask.sum(1, keepdim=True)
        return self.head(h)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


data = [(r, i % 2) for i, r in enumerate(rows)]
trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=args.progress, enable_model_summary=False)
trainer.fit(TinyEncoder(), DataLoader(data, batch_size=16, collate_fn=collate))
print("FIT_DONE", flush=True)
