"""A small, ordinary transformers Trainer script: a tiny BERT classifier on fixed-length padded rows."""

import sys
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments


class Rows(torch.utils.data.Dataset):
    """Token ids padded to 32 with 0, real lengths 4..11: most of every batch is padding."""

    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.rows = []
        for i in range(n):
            length = 4 + i % 8
            ids = torch.zeros(32, dtype=torch.long)
            ids[:length] = torch.randint(1, 100, (length,), generator=g)
            self.rows.append({"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor(i % 2)})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


config = BertConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=100,
    num_labels=2,
    pad_token_id=0,
)
model = BertForSequenceClassification(config)
out = tempfile.mkdtemp()
args = TrainingArguments(
    output_dir=out,
    max_steps=4,
    per_device_train_batch_size=8,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
    logging_strategy="no",
    disable_tqdm=True,
)
trainer = Trainer(model=model, args=args, train_dataset=Rows())
print(f"CALLBACKS={[type(cb).__name__ for cb in trainer.callback_handler.callbacks]}", flush=True)
trainer.train()
print("TRAIN_DONE", flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
