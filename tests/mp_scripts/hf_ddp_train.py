"""Launched by tests/test_hf_multiprocess.py under ``torch.distributed.run --nproc_per_node 2`` (CPU, gloo).

Trains a tiny BERT with HFPerfHints on every rank and records, per rank, the
PerfHintWarnings it emitted into ``<out>/warnings-rank<k>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from perfcallbacks import HFPerfHints, PerfHintWarning


class Tokens(torch.utils.data.Dataset):
    """Token rows of varied length (4..60) padded to 64: padding the advisor should notice."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        n = 4 + (i * 7) % 57
        ids = [101] + [1000 + (i * 13 + j) % 500 for j in range(n - 2)] + [102]
        pad = 64 - len(ids)
        return {"input_ids": torch.tensor(ids + [0] * pad), "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                "labels": torch.tensor(i % 2)}


def main(out_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, vocab_size=2000))
    args = TrainingArguments(output_dir=out_dir, max_steps=4, per_device_train_batch_size=8, report_to="none",
                             use_cpu=True, save_strategy="no", logging_steps=2, disable_tqdm=True,
                             ddp_backend="gloo")
    callback = HFPerfHints(warmup_steps=3, target="a100", verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PerfHintWarning)
        trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
        trainer.train()
    ctx = callback.advisor.context
    record = {"rank": rank, "world_size": ctx.world_size, "distributed": ctx.distributed,
              "local_world_size": ctx.local_world_size, "is_rank_zero": callback.advisor.is_rank_zero,
              "steps": trainer.state.global_step, "hints": sorted(callback.advisor.hints),
              "warned": [str(w.message).split("]")[0].lstrip("[") for w in caught
                         if issubclass(w.category, PerfHintWarning)]}
    with open(os.path.join(out_dir, f"warnings-rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump(record, fh)


if __name__ == "__main__":
    main(sys.argv[1])
