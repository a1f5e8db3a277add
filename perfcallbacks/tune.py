"""``perfhints tune MODEL_DIR``: measure a HuggingFace model directory and recommend serving settings."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import sys
import time
import warnings
from typing import Any

# torch and the measuring code are imported where they are used: ``perfhints`` registers this
# subcommand in every invocation (``perfhints run``'s parent must not load torch).


def docstring_corpus(n: int = 512, *, min_chars: int = 20, max_chars: int = 600) -> list[str]:
    """``n`` real English paragraphs from the docstrings of installed packages (no download).

    Example::

        >>> from perfcallbacks.tune import docstring_corpus
        >>> len(docstring_corpus(8))
        8
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    import torch
    out: list[str] = []
    seen: set[str] = set()
    # torch only: getattr on transformers' lazy module would import hundreds of model modules.
    sources = [torch, torch.nn, torch.nn.functional, torch.Tensor]
    for src in sources:
        for name in sorted(dir(src)):
            try:
                doc = getattr(getattr(src, name, None), "__doc__", None)
            except Exception:  # lazy modules may fail to import an attribute
                continue
            if not isinstance(doc, str):
                continue
            for para in re.split(r"\n\s*\n", doc):
                text = " ".join(para.split())
                if min_chars <= len(text) <= max_chars and text not in seen and not text.startswith((">>>", "..")):
                    seen.add(text)
                    out.append(text)
                    if len(out) >= n:
                        return out
    return out


# --- measurement --------------------------------------------------------------------------------

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
ORDERS = ("arrival", "length-grouped")


def _load(model_dir: str) -> tuple[Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir).eval()
    return tok, model


def make_batches(tok: Any, texts: list[str], batch_size: int, order: str, max_length: int = 256) -> list[dict]:
    """Dynamic padding per batch; ``length-grouped`` sorts by token length first (like a bucketing sampler)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if order == "length-grouped":
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
        texts = [t for _, t in sorted(zip(lengths, texts), key=lambda p: p[0])]
    return [dict(tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt")) for i in range(0, len(texts), batch_size)]


def _run_batches(model: Any, batches: list[dict]) -> list[float]:
    from perfcallbacks.measure import forward_times

    return forward_times(model, batches)  # synchronised on the model's device, as every timing here


def _worker(model_dir: str, threads: int, texts: list[str], batch_size: int, duration_s: float,
            barrier: Any, queue: Any) -> None:
    """One serving process: its own model and thread count, timed in the same window as its peers."""
    try:
        import torch

        from perfcallbacks.measure import call_model

        torch.set_num_threads(threads)
        tok, model = _load(model_dir)
        batches = make_batches(tok, texts, batch_size, "length-grouped")
        _run_batches(model, batches[:1])  # warm-up
        barrier.wait(timeout=120)
        done, start = 0, time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() - start < duration_s:
                for b in batches:
                    call_model(model, b)
                    done += int(b["input_ids"].shape[0])
        queue.put(done / (time.perf_counter() - start))
    except Exception as err:  # reported to the parent, which turns it into a failed row
        queue.put(f"{type(err).__name__}: {err}")


def measure_workers(model_dir: str, texts: list[str], configs: list[tuple[int, int]], *, batch_size: int = 8,
                    duration_s: float = 2.0) -> list[dict[str, Any]]:
    """Sentences/s of ``workers`` real processes x ``threads`` intra-op threads each, all serving at once."""
    ctx = mp.get_context("spawn")  # fork after torch started its thread pools can hang
    rows = []
    for workers, threads in configs:
        barrier, queue = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(model_dir, threads, texts, batch_size, duration_s, barrier, queue),
                             daemon=True) for _ in range(workers)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        errors = [r for r in results if isinstance(r, str)]
        rows.append({"workers": workers, "threads": threads,
                     "sentences_per_s": None if errors else round(sum(results), 2),
                     **({"error": errors[0]} if errors else {})})
    return rows


def worker_configs(cores: int) -> list[tuple[int, int]]:
    """1 x cores, cores x 1, a middle split, and one oversubscribed (2 x cores) to show its cost."""
    configs = {(1, cores), (cores, 1), (2, cores)} if cores > 1 else {(1, 1), (2, 1)}
    if cores >= 4:
        configs.add((2, cores // 2))
    return sorted(configs)


def measure_batch_sizes(model: Any, tok: Any, texts: list[str], sizes: tuple[int, ...] = BATCH_SIZES, *,
                        max_length: int = 256) -> list[dict[str, Any]]:
    """Sentences/s and p90 batch latency for each batch size, in arrival order and length-grouped."""
    rows = []
    for bs in sizes:  # orders interleaved per size, so load drift hits both alike
        for order in ORDERS:
            batches = make_batches(tok, texts, bs, order, max_length)
            _run_batches(model, batches[:1])
            times = _run_batches(model, batches)
            p90 = sorted(times)[min(len(times) - 1, int(0.9 * len(times)))]
            pads = [1 - b["attention_mask"].float().mean().item() for b in batches]
            rows.append({"order": order, "batch_size": bs, "sentences_per_s": round(len(texts) / sum(times), 2),
                         "p90_latency_ms": round(p90 * 1000, 1), "pad_fraction": round(sum(pads) / len(pads), 3)})
    return rows


def best_row(rows: list[dict[str, Any]], latency_budget_ms: float | None = None) -> dict[str, Any] | None:
    """Highest-throughput row within the latency budget (what the recommendation is made of)."""
    ok = [r for r in rows if r.get("sentences_per_s") is not None
          and (latency_budget_ms is None or r.get("p90_latency_ms", 0) <= latency_budget_ms)]
    return max(ok, key=lambda r: r["sentences_per_s"]) if ok else None


# --- command --------------------------------------------------------------------------------------

def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tune`` to the ``perfhints`` sub-commands (``func=run_tune``).

    Example::

        >>> import argparse
        >>> from perfcallbacks.tune import register
        >>> sub = argparse.ArgumentParser().add_subparsers(dest="command")
        >>> register(sub).parse_args(["models/minilm", "--workers", "2"]).workers
        2
    """
    parser = subparsers.add_parser("tune", help="measure a HuggingFace model dir here and recommend serving settings")
    parser.add_argument("model_dir", help="local HuggingFace model directory (config.json + weights + tokenizer)")
    parser.add_argument("--latency-budget-ms", type=float, default=None, help="p90 per-batch latency budget")
    parser.add_argument("--workers", type=int, default=None, help="also measure this many serving processes")
    parser.add_argument("--sentences", type=int, default=64, help="real sentences per measurement")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE", help="save a throughput plot (needs matplotlib)")
    parser.set_defaults(func=run_tune)
    return parser


def _progress(total: int) -> Any:
    """A tqdm bar on stderr; without tqdm, one line per stage (never minutes of silence)."""
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="perfhints tune", file=sys.stderr, leave=False)
    except ImportError:
        class _Lines:
            done = 0

            def update(self, n: int = 1) -> None:
                self.done += n

            def set_postfix_str(self, s: str) -> None:
                print(f"perfhints tune: [{self.done + 1}/{total}] measuring {s} ...", file=sys.stderr, flush=True)

            def close(self) -> None: ...
        return _Lines()


def missing_plot_dependency() -> str | None:
    """The install command when ``--plot`` cannot work here (checked before minutes of measuring)."""
    import importlib.util

    return None if importlib.util.find_spec("matplotlib") is not None else "pip install matplotlib"


def _check_args(args: argparse.Namespace) -> None:
    if not os.path.isdir(args.model_dir) or not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        raise ValueError(f"MODEL_DIR {args.model_dir!r} is not a HuggingFace model directory (no config.json)")
    if args.latency_budget_ms is not None and args.latency_budget_ms <= 0:
        raise ValueError(f"--latency-budget-ms must be > 0, got {args.latency_budget_ms}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.sentences < 64:
        raise ValueError(f"--sentences must be >= 64 (the largest batch size), got {args.sentences}")


def tune(model_dir: str, *, latency_budget_ms: float | None = None, workers: int | None = None,
         sentences: int = 64) -> dict[str, Any]:
    """Measure ``model_dir`` here; return the tables and the recommendation made from their best rows."""
    from perfcallbacks.device import DeviceProfile
    from perfcallbacks.fixes import guarded_autocast, quantize_guarded

    profile = DeviceProfile.detect()
    cores = profile.physical_cores or os.cpu_count() or 1
    texts = docstring_corpus(sentences)
    configs = worker_configs(cores)
    if workers:
        configs = sorted(set(configs) | {(workers, max(1, cores // workers))})
    bar = _progress(len(configs) + 3)
    try:
        tok, model = _load(model_dir)
        sample = make_batches(tok, texts[:16], 16, "arrival")[0]
        bar.set_postfix_str("int8")
        quant, qmodel = quantize_guarded(model, sample, repeats=3)
        bar.update()
        bar.set_postfix_str("autocast")
        amp, _ = guarded_autocast(model, make_batches(tok, texts[:8], 8, "arrival")[0], profile=profile, repeats=2)
        bar.update()
        bar.set_postfix_str("batch sizes")
        serving = qmodel if quant.status == "applied" else model
        max_length = min(256, int(getattr(model.config, "max_position_embeddings", 512) or 512))
        batch_rows = measure_batch_sizes(serving, tok, texts, max_length=max_length)
        bar.update()
        worker_rows = []
        for config in configs:
            bar.set_postfix_str(f"{config[0]} workers x {config[1]} threads")
            worker_rows += measure_workers(model_dir, texts, [config])
            bar.update()
    finally:
        bar.close()
    best_batch = best_row(batch_rows, latency_budget_ms)
    best_workers = best_row(worker_rows)
    fastest = min((r for r in batch_rows if r.get("p90_latency_ms") is not None),
                  key=lambda r: r["p90_latency_ms"], default=None)
    precision = "int8" if quant.status == "applied" else "fp32"
    return {
        "model_dir": model_dir, "device": profile.to_dict(), "latency_budget_ms": latency_budget_ms,
        "fixes": [quant.to_dict(), amp.to_dict()],
        "workers_table": worker_rows, "batch_table": batch_rows,
        "recommendation": {
            "precision": precision,
            "autocast": amp.status == "applied",
            "workers": best_workers["workers"] if best_workers else 1,
            "threads_per_worker": best_workers["threads"] if best_workers else cores,
            "batch_size": best_batch["batch_size"] if best_batch else 1,
            "order": best_batch["order"] if best_batch else "arrival",
            "sentences_per_s": best_batch["sentences_per_s"] if best_batch else None,
            "p90_latency_ms": best_batch["p90_latency_ms"] if best_batch else None,
            "fits_budget": best_batch is not None,
            # what would fit: the lowest p90 measured (raise the budget to at least this)
            "lowest_p90_latency_ms": fastest["p90_latency_ms"] if fastest else None,
            "lowest_p90_batch": ({"batch_size": fastest["batch_size"], "order": fastest["order"]}
                                 if fastest else None),
        },
    }


def _render(result: dict[str, Any]) -> str:
    lines = [f"perfhints tune {result['model_dir']}", ""]
    for fix in result["fixes"]:
        lines.append(f"  {fix['id']:<22} {fix['status']:<9} {fix['reason']}")
    lines += ["", "  workers x threads   sentences/s (all processes serving at once)"]
    for r in result["workers_table"]:
        lines.append(f"  {r['workers']:>7} x {r['threads']:<7}   {r['sentences_per_s'] or r.get('error')}")
    budget = result["latency_budget_ms"]
    lines += ["", f"  order           batch  sentences/s  p90 ms  pad   (budget: {budget or 'none'} ms)"]
    for r in result["batch_table"]:
        over = " over budget" if budget and r["p90_latency_ms"] > budget else ""
        lines.append(f"  {r['order']:<15} {r['batch_size']:>5}  {r['sentences_per_s']:>11}  "
                     f"{r['p90_latency_ms']:>6}  {r['pad_fraction']:.2f}{over}")
    rec = result["recommendation"]
    if not rec.get("fits_budget", rec.get("sentences_per_s") is not None):
        lowest, at = rec.get("lowest_p90_latency_ms"), rec.get("lowest_p90_batch") or {}
        would = (f"the fastest batch measured (batch {at.get('batch_size')} {at.get('order')}) has p90 {lowest} ms; "
                 f"--latency-budget-ms {int(-(-lowest // 1))} or more would fit it" if lowest is not None
                 else "no batch size could be measured")
        lines += ["", f"Nothing fits the {budget} ms p90 latency budget on this machine: {would}, "
                      "or serve a smaller / int8 model, or add hardware."]
        return "\n".join(lines)
    lines += ["", f"Recommended: {rec['precision']}, {rec['workers']} worker(s) x {rec['threads_per_worker']} "
              f"thread(s), batch {rec['batch_size']} {rec['order']} "
              f"({rec['sentences_per_s']} sentences/s, p90 {rec['p90_latency_ms']} ms per batch)"]
    if rec["order"] == "length-grouped":
        lines.append("  (group requests of similar length before batching: padding grows with the batch otherwise)")
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # checked before measuring; only a broken install gets here
        return "matplotlib could not be imported: no plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for order in ORDERS:
        rows = [r for r in result["batch_table"] if r["order"] == order]
        ax.plot([r["batch_size"] for r in rows], [r["sentences_per_s"] for r in rows], marker="o", label=order)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("sentences/s")
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return f"plot written to {path}"


def run_tune(args: argparse.Namespace) -> int:
    """Entry point of ``perfhints tune`` (see :func:`register`)."""
    _check_args(args)
    if args.plot:
        install = missing_plot_dependency()
        if install:  # before measuring, not after minutes of it
            print(f"perfhints tune: --plot needs matplotlib, which is not installed: {install}", file=sys.stderr)
            return 2
    result = tune(args.model_dir, latency_budget_ms=args.latency_budget_ms, workers=args.workers,
                  sentences=args.sentences)
    note = _plot(result, args.plot) if args.plot else None
    print(json.dumps(result, indent=2, default=str) if args.json else _render(result))
    if note:
        print(note, file=sys.stderr)
    return 0
