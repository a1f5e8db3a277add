"""Overhead of HFPerfHints on a real HF Trainer run (goal: < 1% of train time).

Two numbers, from the same runs:

* hook share: the callback's own time (every Trainer event and the forward
  pre-hook, as counted in ``report.overhead_s``) over the run's
  ``train_runtime``; this is the precise figure.
* end-to-end ratio: median ``train_runtime`` with the callback over without it,
  runs alternating (with, without, with, ...) so drift hits both sides; on a
  shared 2-core machine this ratio carries a few percent of noise.

Run::

    python benchmarks/overhead_hf.py            # writes benchmarks/results/overhead_hf.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from perfcallbacks import HFPerfHints, PerfHintWarning  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "overhead_hf.json"


class Tokens(torch.utils.data.Dataset):
    """Rows of 16..127 real tokens, dynamically padded by the default collator's caller (fixed 128 here)."""

    def __init__(self, n: int, seq: int = 128) -> None:
        gen = torch.Generator().manual_seed(0)
        self.lengths = torch.randint(16, seq, (n,), generator=gen)
        self.ids = torch.randint(1000, 5000, (n, seq), generator=gen)
        self.seq = seq

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        n = int(self.lengths[i])
        mask = (torch.arange(self.seq) < n).long()
        return {"input_ids": self.ids[i] * mask, "attention_mask": mask, "labels": torch.tensor(i % 2)}


def one_run(with_callback: bool, steps: int, warmup_steps: int, out: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=512, vocab_size=5000))
    callbacks = [HFPerfHints(warmup_steps=warmup_steps, verbose=False)] if with_callback else []
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=16, report_to="none",
                             use_cpu=True, save_strategy="no", logging_steps=steps, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(16 * steps), callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        runtime = trainer.train().metrics["train_runtime"]
    result = {"train_runtime_s": runtime}
    if with_callback:
        advisor = callbacks[0].advisor
        result["hook_s"] = advisor.overhead_s
        result["hook_share"] = advisor.overhead_s / runtime
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3, help="alternating with/without pairs")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    with_cb, without = [], []
    with tempfile.TemporaryDirectory() as tmp:
        one_run(False, 4, 2, tmp)  # warm the process (allocator, kernels) before measuring
        for _ in range(args.pairs):
            with_cb.append(one_run(True, args.steps, args.warmup_steps, tmp))
            without.append(one_run(False, args.steps, args.warmup_steps, tmp))
    on = statistics.median(r["train_runtime_s"] for r in with_cb)
    off = statistics.median(r["train_runtime_s"] for r in without)
    result = {
        "benchmark": "overhead_hf",
        "setup": {"model": "BERT 2x128 (from config)", "batch_size": 16, "seq_len": 128, "steps": args.steps,
                  "warmup_steps": args.warmup_steps, "pairs": args.pairs, "torch": torch.__version__,
                  "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                  "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                  "load_avg_1m": os.getloadavg()[0]},
        "hook_share_median": statistics.median(r["hook_share"] for r in with_cb),
        "hook_s_median": statistics.median(r["hook_s"] for r in with_cb),
        "train_runtime_with_s": on,
        "train_runtime_without_s": off,
        "end_to_end_ratio": on / off,
        "runs": {"with": with_cb, "without": without},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"hook share {result['hook_share_median']:.3%} of train time "
          f"({result['hook_s_median'] * 1000:.1f} ms over {args.steps} steps); "
          f"end-to-end {on:.2f}s vs {off:.2f}s = {result['end_to_end_ratio']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
