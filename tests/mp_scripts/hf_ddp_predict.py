"""Launched by tests/test_hf_multiprocess.py under ``torch.distributed.run --nproc_per_node 2`` (CPU, gloo).

``Trainer.predict`` with ``HFPerfHints(auto_apply=True)`` on every rank, with one stand-in fix whose candidate
is the same model without a fixed delay: rank zero must decide it and rank 1 follow. Each rank records what
it saw into ``<out>/predict-rank<k>.json``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import perfcallbacks.fixes.pipeline as pipeline
from perfcallbacks import Advisor, HFPerfHints
from perfcallbacks.fixes._guard import Tolerance
from perfcallbacks.fixes.candidate import Candidate


class SlowBert(BertForSequenceClassification):
    """The user's model: every forward pays a fixed delay (a stand-in for a slow fp32 model)."""

    delay_s = 0.04
    calls = 0

    def forward(self, input_ids=None, attention_mask=None, labels=None):  # named: HF keeps these columns
        type(self).calls += 1 if self.delay_s else 0
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def fast_copy_spec() -> pipeline.FixSpec:
    tol = Tolerance(cosine_mean=0.999, argmax_agreement=None)

    def build(model, batch, profile, params):
        fast = copy.deepcopy(model)
        fast.delay_s = 0.0
        return Candidate("fake-fast", fast, tolerance=tol)

    return pipeline.FixSpec("fake-fast", ("predict",), build, plausible_max=1e6, tolerance=tol)


class Tokens(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 401  # 101 batches of 4: ranks of 51 and 50 calls (accelerate evens them out)

    def __getitem__(self, i: int) -> dict:
        ids = [101] + [1000 + (i * 13 + j) % 500 for j in range(14)] + [102]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(16, dtype=torch.long)}


def main(out_dir: str) -> None:
    pipeline.FIXES = (fast_copy_spec(),)
    Advisor.probe_inference = lambda self, model, batch, **kw: []
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    model = SlowBert(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                vocab_size=2000))
    args = TrainingArguments(output_dir=out_dir, per_device_eval_batch_size=4, report_to="none", use_cpu=True,
                             disable_tqdm=True, ddp_backend="gloo")
    callback = HFPerfHints(auto_apply=True, verbose=False)
    trainer = Trainer(model=model, args=args, callbacks=[callback])
    logits = torch.as_tensor(trainer.predict(Tokens()).predictions)
    model.delay_s = 0.0
    with torch.inference_mode():
        ref = model.eval()(**{k: torch.stack([Tokens()[i][k] for i in range(len(Tokens()))])
                              for k in ("input_ids", "attention_mask")}).logits
    fixes = [{"id": f.id, "status": f.status, "reason": f.reason, "shadowed": f.details.get("calls_shadowed")}
             for f in callback.advisor.fixes if f.id == "fake-fast"]
    record = {"rank": rank, "fixes": fixes, "slow_calls": SlowBert.calls,
              "max_error": float((logits[:len(ref)] - ref).abs().max()), "rows": int(logits.shape[0])}
    with open(os.path.join(out_dir, f"predict-rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump(record, fh)


if __name__ == "__main__":
    main(sys.argv[1])
