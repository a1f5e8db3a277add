"""The GPU benchmarks: every accelerator claim of the product, measured on the GPU at hand.

Each section plants a situation on the real device, reads what perfcallbacks
says about it (the hint, its ``impact``, a fix record) and measures the truth
side by side in this process with synchronised timing (``synctime``). The
verdicts (``claims``) and raw timings go to ``results/<device-name>.json``
plus a markdown table (``results_io``).

Sections, in priority order (a section that would start past the time budget
is recorded as skipped):

* ``device``: ``DeviceProfile.detect()`` vs its preset; bf16/tf32/fp8 GEMMs vs the profile's levels.
* ``measure``: the library's ``compare_times`` / ``median_time`` (``device=``) vs synchronised timing.
* ``tensor-cores``: ``tensor-cores-idle`` fires on an fp32 CUDA model; its impact vs bf16 training steps.
* ``autocast``: the ``autocast`` fix through ``PerfHintCallback(auto_apply=True)`` on predict (status,
  speedup, fidelity) and the ``autocast-available`` impact, vs a synchronised fp32/autocast comparison.
* ``alignment``: ``dim-unaligned`` (767/768/770/776, fp16), ``vocab-unaligned`` (30522 vs 30528),
  ``batch-size-unaligned`` (1021 vs 1024 rows), ``seq-len-unaligned`` (127 vs 128 tokens): impact vs slowdown.
* ``batch-size-small``: fires on a launch-bound run, quiet on a saturated one; the probe's latencies vs synced ones.
* ``device-usage``: ``gpu-unused`` (model left on CPU), ``gpus-idle`` (more than one GPU).
* ``pin-memory``: ``pin-memory-off`` on a copy-heavy Lightning fit, quiet when pinned; copy speed pinned vs pageable.
* ``layout``: ``cudnn-benchmark-off``, ``channels-last-off`` / the ``channels-last`` fix (conv net),
  ``attention-eager`` / the ``sdpa`` fix (HF BERT from a config), ``fp8-eligible`` (FP8 devices) —
  each skipped with its reason while its hint id is not registered.
* ``overhead``: ``PerfHintCallback`` on a 1000-step GPU fit vs a plain fit, alternated (< 1%).

Run (``make gpu-check`` runs it after ``tests/gpu``)::

    python benchmarks/gpu/run_gpu.py [--budget-s 300] [--out benchmarks/gpu/results]
    python benchmarks/gpu/run_gpu.py --dry-run      # CPU, tiny sizes: exercises every code path, judges nothing

Without CUDA (and without ``--dry-run``) it prints that every benchmark is skipped and exits 0.
Exit status: 0 when no claim failed or errored, 1 otherwise (the results are written either way).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for _path in (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from claims import (  # noqa: E402
    Claim,
    agreement_claim,
    capability_claims,
    compare_profiles,
    counts,
    fires_claim,
    impact_claim,
    skipped,
)
from results_io import RESULTS_DIR, build_results, parse_pytest_summary, write_results  # noqa: E402
from scenarios import (  # noqa: E402
    bert_encoder,
    conv_net,
    find_fix,
    find_hint,
    hint_missing,
    image_loader,
    images,
    mlp,
    tiny_lm,
    token_batch,
    token_ids,
    token_loader,
    vector_loader,
)
from synctime import Timing, ratio, sync_for, time_once, time_side_by_side  # noqa: E402

DEFAULT_BUDGET_S = 300.0


class Suite:
    """Shared state of one benchmark run: device, synchroniser, deadline, claims, timings, log."""

    def __init__(self, device: str, budget_s: float, dry: bool) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.sync = sync_for(self.device)
        self.dry = dry
        self.claims: list[Claim] = []
        self.timings: dict[str, Any] = {}

    @property
    def big(self) -> bool:
        """Real sizes on a GPU; tiny ones in a CPU dry run."""
        return self.cuda and not self.dry

    def log(self, message: str) -> None:
        now = _dt.datetime.now().strftime("%H:%M:%S")
        print(f"[gpu-bench {now} +{time.monotonic() - self.start:6.1f}s] {message}", flush=True)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def time(self, key: str, fns: dict[str, Callable[[], Any]], *, repeats: int = 15, warmup: int = 3,
             number: int = 1) -> dict[str, Timing]:
        if not self.big:
            repeats, warmup, number = min(repeats, 3), min(warmup, 1), 1
        result = time_side_by_side(fns, repeats=repeats, warmup=warmup, number=number, sync=self.sync)
        self.timings[key] = {name: t.to_dict() for name, t in result.items()}
        shown = ", ".join(f"{n} {t.median * 1e3:.3f} ms (±{t.spread:.0%})" for n, t in result.items())
        self.log(f"  {key}: {shown}")
        return result

    def add(self, *claims: Claim) -> None:
        for claim in claims:
            self.claims.append(claim)
            verdict = f"dry, would be {claim.verdict}" if self.dry else claim.verdict
            self.log(f"  [{verdict}] {claim.id}: product says {_short(claim.claimed)}, "
                     f"measured {_short(claim.measured)}"
                     + (f" ({claim.note})" if claim.note else ""))


def _restore_state() -> Callable[[], None]:
    # The new-style API only: mixing it with torch.backends.cuda.matmul.allow_tf32 makes
    # torch.get_float32_matmul_precision() raise (torch 2.9+).
    matmul = torch.get_float32_matmul_precision()
    bench = torch.backends.cudnn.benchmark
    threads = torch.get_num_threads()

    def restore() -> None:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.benchmark = bench
        torch.set_num_threads(threads)

    return restore


def run_section(s: Suite, name: str, fn: Callable[[Suite], None], min_left_s: float) -> None:
    """Run one section; out of budget it is skipped, an exception becomes an ``error`` claim."""
    if s.left_s() < min_left_s:
        s.add(skipped(f"{name}/section", f"section {name}", f"out of budget ({s.left_s():.0f} s left, "
                      f"needs ~{min_left_s:.0f} s)"))
        return
    s.log(f"section {name} (budget left {s.left_s():.0f} s)")
    began = time.monotonic()
    restore = _restore_state()
    first = len(s.claims)
    try:
        fn(s)
    except Exception as err:
        tail = traceback.format_exc().strip().splitlines()[-6:]
        s.add(Claim(f"{name}/section", f"section {name} ran", "error", note=f"{type(err).__name__}: {err}",
                    details={"traceback": tail}))
    finally:
        restore()
        if s.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    if s.dry:  # sizes and device are not the real ones: nothing here is a verdict
        for claim in s.claims[first:]:
            if claim.verdict in ("pass", "fail"):
                claim.note = f"dry run on {s.device.type}, would be {claim.verdict}" + (f"; {claim.note}"
                                                                                         if claim.note else "")
                claim.verdict = "info"
    s.log(f"section {name} done in {time.monotonic() - began:.1f} s")


def _advisor(model: nn.Module, loader: Any = None) -> Any:
    from perfcallbacks import Advisor

    return Advisor(model, loader, warn=False)


def _fwd(model: nn.Module, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(*args, **kwargs)

    return run


def _hint_evidence(hint: Any) -> dict[str, Any] | None:
    return None if hint is None else {"impact": hint.impact, "phase": hint.phase, **hint.evidence}


# -- sections ---------------------------------------------------------------------------------------------
def section_device(s: Suite) -> None:
    from perfcallbacks import DeviceProfile
    from perfcallbacks.presets import match_preset

    detected = DeviceProfile.detect()
    preset = match_preset(detected.name)
    if not s.cuda:
        preset = DeviceProfile.preset("h200")  # dry run: exercise the comparison against a GPU preset
    s.add(*compare_profiles(detected, preset))
    n = 8192 if s.big else 128
    g = torch.Generator(device=s.device).manual_seed(0)
    a = torch.randn(n, n, device=s.device, generator=g)
    b = torch.randn(n, n, device=s.device, generator=g)
    a16, b16 = a.bfloat16(), b.bfloat16()
    probed: dict[str, Any] = {}
    if s.cuda:
        probed["bf16_supported"] = bool(torch.cuda.is_bf16_supported())

    def fp32() -> None:
        torch.set_float32_matmul_precision("highest")
        torch.mm(a, b)

    def tf32() -> None:
        torch.set_float32_matmul_precision("high")
        torch.mm(a, b)

    fns: dict[str, Callable[[], Any]] = {"fp32": fp32, "tf32": tf32, "bf16": lambda: torch.mm(a16, b16)}
    fp8 = _fp8_gemm(a, b, s) if s.cuda else None
    if fp8 is not None:
        fns["fp8"] = fp8
    probed["fp8_runs"] = fp8 is not None if s.cuda else None
    t = s.time("device/gemm", fns, repeats=8, warmup=2)
    probed["bf16_over_fp32"] = ratio(t["fp32"], t["bf16"])
    probed["tf32_over_fp32"] = ratio(t["fp32"], t["tf32"])
    if "fp8" in t:
        probed["fp8_over_bf16"] = ratio(t["bf16"], t["fp8"])
    tflops = {k: 2 * n**3 / v.median / 1e12 for k, v in t.items()}
    s.add(*capability_claims(detected, probed))
    s.add(Claim("device/gemm-tflops", f"{n}^3 GEMM rate per precision (TFLOP/s, random data)", "info",
                measured=tflops))
    s.timings["device/profile"] = detected.to_dict()


def _fp8_gemm(a: torch.Tensor, b: torch.Tensor, s: Suite) -> Callable[[], Any] | None:
    """A scaled e4m3 GEMM (``torch._scaled_mm``) when this torch and device run one, else ``None``."""
    if not (hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")):
        return None
    try:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.t().contiguous().to(torch.float8_e4m3fn).t()  # column-major second operand
        one = torch.ones((), device=a.device)

        def run() -> Any:
            return torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        run()
        torch.cuda.synchronize()
        return run
    except Exception as err:
        s.log(f"  fp8 GEMM does not run here: {type(err).__name__}: {err}")
        return None


def section_measure(s: Suite) -> None:
    """The library's own timing (``perfcallbacks.measure``) against ``synctime`` on the same device work."""
    from perfcallbacks.measure import compare_times, median_time

    torch.set_float32_matmul_precision("highest")
    cases = {"large": (4096, 8192), "small": (1024, 1024)} if s.big else {"large": (64, 64), "small": (16, 8)}
    fns = {}
    for name, (width, rows) in cases.items():
        model = mlp(width, 4, device=s.device).eval()
        fns[name] = _fwd(model, torch.randn(rows, width, device=s.device))
    ours = s.time("measure/synctime", fns, repeats=9, warmup=2)
    lib = compare_times(fns, repeats=9, warmup=2, device=s.device)
    single = median_time(fns["large"], repeats=9, warmup=2, device=s.device)
    s.timings["measure/compare_times"] = lib
    for name in fns:
        s.add(agreement_claim(f"measure/compare_times-{name}", "perfcallbacks.measure.compare_times(device=...) "
                              "seconds vs synchronised timing", claimed=lib[name], measured=ours[name].median,
                              note=f"{cases[name][0]}-wide 4-layer fp32 MLP forward on {cases[name][1]} rows"))
    s.add(agreement_claim("measure/median_time-large", "perfcallbacks.measure.median_time(device=...) seconds vs "
                          "synchronised timing", claimed=single, measured=ours["large"].median))


def section_tensor_cores(s: Suite) -> None:
    width, tokens = (4096, 8192) if s.big else (64, 32)
    torch.set_float32_matmul_precision("highest")
    model = mlp(width, 4, device=s.device)
    hint = find_hint(_advisor(model).analyze("setup"), "tensor-cores-idle")
    s.add(fires_claim("tensor-cores-idle/fires", "tensor-cores-idle", expected=True, fired=hint is not None,
                      evidence=_hint_evidence(hint), note="fp32 CUDA MLP, matmul precision 'highest'"))
    x = torch.randn(tokens, width, device=s.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay put: both candidates see the same model

    def step(amp: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = model(x).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    t = s.time("tensor-cores/train-step", {"fp32": step(False), "bf16-autocast": step(True)}, repeats=10)
    s.add(impact_claim("tensor-cores-idle/impact", "tensor-cores-idle", claimed=hint.impact if hint else None,
                       measured=ratio(t["fp32"], t["bf16-autocast"]), fired=hint is not None,
                       note=f"training step of a {width}-wide 4-layer MLP on {tokens} rows, fp32 vs bf16 autocast"))


def section_autocast(s: Suite) -> None:
    from perfcallbacks import DeviceProfile, PerfHintCallback
    from perfcallbacks.measure import fidelity

    from lit_models import LitClassifier, quiet_trainer

    # 96 batches: the guard measures only when its cost is a small share (10%) of the predict job.
    width, rows, bs = (2048, 256 * 96, 256) if s.big else (64, 128, 32)
    lit = LitClassifier(mlp(width, 4, out=16))
    loader = vector_loader(rows, width, batch_size=bs)
    accel = "cuda" if s.cuda else "cpu"
    walls: dict[str, list[float]] = {"plain": [], "auto_apply": []}
    reports: dict[str, Any] = {}
    for round_index in range(2):  # alternate; the first auto_apply run pays the guard's measuring
        for mode in ("plain", "auto_apply") if round_index == 0 else ("auto_apply", "plain"):
            cb = PerfHintCallback(auto_apply=mode == "auto_apply", verbose=False)
            trainer = quiet_trainer(accelerator=accel, devices=1, callbacks=[cb])
            walls[mode].append(time_once(lambda: trainer.predict(lit, loader), sync=s.sync))
            reports.setdefault(mode, cb.advisor.report)
    hint = find_hint(reports["plain"], "autocast-available")
    fix = find_fix(reports["auto_apply"], "autocast")
    s.timings["autocast/predict-wall"] = walls
    # The truth, measured here: one real batch, fp32 vs the profile's fast autocast dtype.
    dtype = DeviceProfile.detect().fast_autocast_dtype() or torch.bfloat16
    model = lit.net.to(s.device).eval()
    xb = next(iter(loader))[0].to(s.device)

    def amp() -> Any:
        with torch.autocast(s.device.type, dtype=dtype):
            return _fwd(model, xb)()

    with torch.inference_mode():
        fid = fidelity(model(xb), amp())
    t = s.time("autocast/forward", {"fp32": _fwd(model, xb), "autocast": amp})
    measured = ratio(t["fp32"], t["autocast"])
    status = fix.status if fix else None
    s.add(Claim("autocast/fix-applied", "auto_apply keeps the autocast fix for predict on this GPU",
                "pass" if status == "applied" else "fail", claimed="applied", measured=status,
                note=fix.reason if fix else "no autocast fix record in the report", hint="autocast-available"))
    if fix is not None and fix.speedup:
        s.add(agreement_claim("autocast/fix-speedup", "the autocast guard's speedup vs a synchronised forward",
                              claimed=fix.speedup, measured=measured, hint="autocast-available",
                              note="the guard times the whole predict_step; ours one forward"))
        cos = (fix.fidelity or {}).get("cosine_mean")
        s.add(Claim("autocast/fix-fidelity", "the fix's fidelity record meets the default tolerance (cosine >= 0.99)",
                    "pass" if cos is not None and cos >= 0.99 else "fail", claimed=">= 0.99",
                    measured=fix.fidelity, details={"measured_here": fid}))
    s.add(impact_claim("autocast-available/impact", "autocast-available", claimed=hint.impact if hint else None,
                       measured=measured, fired=hint is not None, note=f"{dtype} autocast, batch {bs} x {width}"))
    first = walls["plain"][0] / walls["auto_apply"][0]
    later = statistics.median(walls["plain"]) / walls["auto_apply"][-1]
    s.add(Claim("autocast/predict-end-to-end", "whole predict call, plain / auto_apply (guard included first time)",
                "info", measured={"first_call": first, "decision_reused": later},
                note=f"{rows // bs} batches of {bs}"))


def section_alignment(s: Suite) -> None:
    big = s.big
    half = torch.float16 if s.cuda else torch.float32
    # dim-unaligned: the same MLP at four widths.
    tokens = 65536 if big else 64
    widths = (767, 768, 770, 776)
    models = {w: mlp(w, 4, device=s.device, dtype=half) for w in widths}
    xs = {w: torch.randn(tokens, w, device=s.device, dtype=half) for w in widths}
    hints = {w: find_hint(_advisor(models[w]).analyze("setup"), "dim-unaligned") for w in widths}
    t = s.time("alignment/dims-forward", {str(w): _fwd(models[w], xs[w]) for w in widths}, number=3)
    for w in (767, 770, 776):
        raw = ratio(t[str(w)], t["768"])
        s.add(impact_claim(f"dim-unaligned/{w}", "dim-unaligned", claimed=hints[w].impact if hints[w] else None,
                           measured=raw, fired=hints[w] is not None,
                           note=f"forward {tokens} x {w} fp16, 4 layers, vs width 768",
                           details={"per_flop_slowdown": raw * (768 / w) ** 2, "hint": _hint_evidence(hints[w])}))
    s.add(fires_claim("dim-unaligned/768-quiet", "dim-unaligned", expected=False, fired=hints[768] is not None,
                      evidence=_hint_evidence(hints[768])))
    del models, xs
    # vocab-unaligned: an LM head of 30522 vs 30528 rows.
    batch, seq = (32, 512) if big else (2, 8)
    lms = {v: tiny_lm(v, device=s.device, dtype=half) for v in (30522, 30528)}
    ids = {v: token_ids(batch, seq, v, device=s.device) for v in lms}
    vhints = {v: find_hint(_advisor(m).analyze("setup"), "vocab-unaligned") for v, m in lms.items()}
    t = s.time("alignment/vocab-forward", {str(v): _fwd(m, ids[v]) for v, m in lms.items()}, number=3)
    s.add(impact_claim("vocab-unaligned/30522", "vocab-unaligned",
                       claimed=vhints[30522].impact if vhints[30522] else None, measured=ratio(t["30522"], t["30528"]),
                       fired=vhints[30522] is not None, note=f"LM forward, {batch}x{seq} tokens, fp16",
                       details={"hint": _hint_evidence(vhints[30522])}))
    s.add(fires_claim("vocab-unaligned/30528-quiet", "vocab-unaligned", expected=False,
                      fired=vhints[30528] is not None))
    del lms, ids
    # batch-size-unaligned: rows through a wide fp16 MLP, per-row cost.
    width = 4096 if big else 32
    model = mlp(width, 4, device=s.device, dtype=half)
    sizes = (1016, 1021, 1024) if big else (8, 13, 16)
    xs_b = {n: torch.randn(n, width, device=s.device, dtype=half) for n in sizes}
    unaligned = sizes[1]
    bhint = find_hint(_advisor(model, vector_loader(2 * unaligned, width, batch_size=unaligned)).analyze(),
                      "batch-size-unaligned")
    t = s.time("alignment/batch-forward", {str(n): _fwd(model, xs_b[n]) for n in sizes}, number=5)
    per_row = {n: t[str(n)].median / n for n in sizes}
    s.add(impact_claim(f"batch-size-unaligned/{unaligned}", "batch-size-unaligned",
                       claimed=bhint.impact if bhint else None, measured=per_row[unaligned] / per_row[sizes[2]],
                       fired=bhint is not None, note=f"per-row forward time, {unaligned} vs {sizes[2]} rows x {width}",
                       details={"per_row_vs_lower_multiple": per_row[unaligned] / per_row[sizes[0]],
                                "hint": _hint_evidence(bhint)}))
    del model, xs_b
    # seq-len-unaligned: a BERT encoder (SDPA) at 127 vs 128 tokens, per-token cost.
    enc = bert_encoder("sdpa", hidden=768 if big else 32, layers=4 if big else 1, heads=12 if big else 2,
                       intermediate=3072 if big else 64, device=s.device, dtype=half)
    batch = 64 if big else 2
    lens = (120, 127, 128)
    batches = {n: token_batch(batch, n, device=s.device) for n in lens}
    shint = find_hint(_advisor(enc, token_loader(2 * batch, 127, batch_size=batch)).analyze(), "seq-len-unaligned")
    t = s.time("alignment/seq-forward", {str(n): _fwd(enc, **batches[n]) for n in lens}, number=3)
    per_tok = {n: t[str(n)].median / n for n in lens}
    s.add(impact_claim("seq-len-unaligned/127", "seq-len-unaligned", claimed=shint.impact if shint else None,
                       measured=per_tok[127] / per_tok[128], fired=shint is not None,
                       note=f"per-token BERT forward (4 x 768, fp16, SDPA), batch {batch}, 127 vs 128 tokens",
                       details={"per_token_vs_120": per_tok[127] / per_tok[120], "hint": _hint_evidence(shint)}))


def section_batch_small(s: Suite) -> None:
    torch.set_float32_matmul_precision("highest")
    cases = {"tiny": (256, 2, 8), "large": (4096, 4, 8192)} if s.big else {"tiny": (16, 2, 4), "large": (64, 2, 64)}
    for name, (width, depth, batch) in cases.items():
        model = mlp(width, depth, device=s.device).eval()
        x = torch.randn(batch, width, device=s.device)
        adv = _advisor(model)
        adv.probe_inference(model, x)
        hint = find_hint(adv.report, "batch-size-small", "inference")
        probe = adv.context.measurements.get("batch_scaling") or {}
        fns = {str(batch * k): _fwd(model, x.repeat(k, 1)) for k in (1, 2, 4)}
        t = s.time(f"batch-size-small/{name}", fns, repeats=7, warmup=2)
        tput = {k: int(k) / v.median for k, v in t.items()}
        gain = max(tput.values()) / tput[str(batch)]
        expected = name == "tiny"
        s.add(fires_claim(f"batch-size-small/{name}", "batch-size-small", expected=expected, fired=hint is not None,
                          evidence=_hint_evidence(hint),
                          note=f"{width}-wide x{depth} MLP, batch {batch}; synchronised throughput gain at 2x/4x "
                               f"batch: {gain:.2f}x"))
        probe_latency = {str(k): float(v) for k, v in (probe.get("latency_s") or {}).items()}
        base = probe_latency.get(str(batch))
        if base:
            s.add(agreement_claim(f"batch-size-small/{name}-probe-timing", "the batch-scaling probe's latency (s) "
                                  "vs a synchronised one", claimed=base, measured=t[str(batch)].median,
                                  hint="batch-size-small", note="an unsynchronised probe times kernel launches",
                                  details={"probe_latency_s": probe_latency,
                                           "synced_latency_s": {k: v.median for k, v in t.items()}}))
        else:
            s.add(Claim(f"batch-size-small/{name}-probe-timing", "the batch-scaling probe ran", "fail",
                        measured=sorted(adv.context.measurements), note="no batch_scaling measurement",
                        details={"probes_skipped": adv.context.measurements.get("probes_skipped"),
                                 "forward_s": adv.context.measurements.get("forward_s")}))
        if hint is not None:
            s.add(impact_claim(f"batch-size-small/{name}-impact", "batch-size-small", claimed=hint.impact,
                               measured=gain, note="throughput gain, synchronised"))


def section_device_usage(s: Suite) -> None:
    from perfcallbacks import PerfHintCallback

    from lit_models import LitClassifier, quiet_trainer

    cpu_model = mlp(256, 2)
    hint = find_hint(_advisor(cpu_model).analyze("setup"), "gpu-unused")
    s.add(fires_claim("gpu-unused/advisor", "gpu-unused", expected=s.cuda, fired=hint is not None,
                      evidence=_hint_evidence(hint), note="model left on the CPU while CUDA is visible"))
    cb = PerfHintCallback(verbose=False, warmup_steps=3)
    trainer = quiet_trainer(accelerator="cpu", devices=1, max_steps=4, callbacks=[cb])
    trainer.fit(LitClassifier(mlp(64, 2, out=8)), vector_loader(64, 64, batch_size=16))
    hint = find_hint(cb.advisor.report, "gpu-unused")
    s.add(fires_claim("gpu-unused/lightning", "gpu-unused", expected=s.cuda, fired=hint is not None,
                      evidence=_hint_evidence(hint), note="Trainer(accelerator='cpu') on a GPU machine"))
    gpu_model = mlp(256, 2, device=s.device)
    report = _advisor(gpu_model).analyze("setup")
    s.add(fires_claim("gpu-unused/quiet-on-gpu", "gpu-unused", expected=False,
                      fired=find_hint(report, "gpu-unused") is not None))
    count = torch.cuda.device_count() if s.cuda else 0
    if count > 1:
        hint = find_hint(report, "gpus-idle")
        s.add(fires_claim("gpus-idle/fires", "gpus-idle", expected=True, fired=hint is not None,
                          evidence=_hint_evidence(hint), note=f"1 of {count} GPUs used"))
    else:
        s.add(skipped("gpus-idle/fires", "gpus-idle fires with 1 of N GPUs used", f"{count} GPU visible",
                      hint="gpus-idle"))


def section_pin_memory(s: Suite) -> None:
    from perfcallbacks import PerfHintCallback

    from lit_models import LitClassifier, quiet_trainer

    width, rows, bs, steps = (4096, 8192, 2048, 40) if s.big else (64, 256, 32, 8)
    accel = "cuda" if s.cuda else "cpu"
    fired: dict[bool, Any] = {}
    walls: dict[str, list[float]] = {"pageable": [], "pinned": []}
    for round_index in range(2):
        for pin in (False, True) if round_index == 0 else (True, False):
            cb = PerfHintCallback(verbose=False, warmup_steps=min(20, steps - 2))
            trainer = quiet_trainer(accelerator=accel, devices=1, max_steps=steps, callbacks=[cb])
            lit = LitClassifier(nn.Linear(width, 8))
            loader = vector_loader(rows, width, batch_size=bs, pin_memory=pin and s.cuda)
            walls["pinned" if pin else "pageable"].append(time_once(lambda: trainer.fit(lit, loader), sync=s.sync))
            fired.setdefault(pin, find_hint(cb.advisor.report, "pin-memory-off"))
    s.add(fires_claim("pin-memory-off/pageable", "pin-memory-off", expected=s.cuda, fired=fired[False] is not None,
                      evidence=_hint_evidence(fired[False]),
                      note=f"{bs} x {width} fp32 host batches ({bs * width * 4 / 2**20:.0f} MiB), Linear({width}, 8)"))
    s.add(fires_claim("pin-memory-off/pinned-quiet", "pin-memory-off", expected=False, fired=fired[True] is not None))
    s.timings["pin-memory/fit-wall"] = walls
    s.add(impact_claim("pin-memory-off/fit", "pin-memory-off", claimed=fired[False].impact if fired[False] else None,
                       measured=statistics.median(walls["pageable"]) / statistics.median(walls["pinned"]),
                       fired=fired[False] is not None, note=f"{steps}-step fit wall time, pageable / pinned loader"))
    host = torch.randn(bs, width)
    pinned = host.pin_memory() if s.cuda else host
    t = s.time("pin-memory/h2d-copy", {"pageable": lambda: host.to(s.device),
                                        "pinned": lambda: pinned.to(s.device, non_blocking=True)}, repeats=10)
    mib = host.numel() * 4 / 2**20
    s.add(Claim("pin-memory/copy-bandwidth", "host-to-device copy GiB/s, pageable vs pinned", "info",
                measured={k: mib / 1024 / v.median for k, v in t.items()}))


def _fit_and_predict(s: Suite, lit: Any, loader: Any, *, auto_apply: bool = False, steps: int = 12,
                     **trainer_kw: Any) -> tuple[Any, Any]:
    """Fit a few steps then predict, with the callback on; returns (fit report, predict callback report)."""
    from perfcallbacks import PerfHintCallback

    from lit_models import quiet_trainer

    accel = "cuda" if s.cuda else "cpu"
    cb = PerfHintCallback(verbose=False, warmup_steps=min(10, steps - 1))
    quiet_trainer(accelerator=accel, devices=1, max_steps=steps, callbacks=[cb], **trainer_kw).fit(lit, loader)
    cbp = PerfHintCallback(verbose=False, auto_apply=auto_apply)
    quiet_trainer(accelerator=accel, devices=1, callbacks=[cbp], **trainer_kw).predict(lit, loader)
    return cb.advisor.report, cbp.advisor.report


def _either(hint_id: str, *reports: Any) -> Any:
    for report in reports:
        hint = find_hint(report, hint_id)
        if hint is not None:
            return hint
    return None


def _not_registered(s: Suite, hint_id: str, what: str) -> bool:
    reason = hint_missing(hint_id)
    if reason is None:
        return False
    s.add(skipped(f"{hint_id}/section", what, reason, hint=hint_id))
    return True


def section_layout(s: Suite) -> None:
    from lit_models import LitClassifier

    big = s.big
    batch, size = (256, 64) if big else (4, 16)
    if not _not_registered(s, "cudnn-benchmark-off", "cudnn-benchmark-off on a CUDA conv net"):
        planted = _fit_and_predict(s, LitClassifier(conv_net()), image_loader(4 * batch, batch_size=batch, size=size),
                                   benchmark=False)
        clean = _fit_and_predict(s, LitClassifier(conv_net()), image_loader(4 * batch, batch_size=batch, size=size),
                                 benchmark=True)
        hint = _either("cudnn-benchmark-off", *planted)
        s.add(fires_claim("cudnn-benchmark-off/fires", "cudnn-benchmark-off", expected=s.cuda, fired=hint is not None,
                          evidence=_hint_evidence(hint), note="Trainer(benchmark=False), fixed 64x64 images"))
        s.add(fires_claim("cudnn-benchmark-off/quiet", "cudnn-benchmark-off", expected=False,
                          fired=_either("cudnn-benchmark-off", *clean) is not None, note="Trainer(benchmark=True)"))
        model = conv_net(device=s.device).eval()
        x = images(batch, size, device=s.device)

        def with_benchmark(flag: bool) -> Callable[[], Any]:
            def run() -> Any:
                torch.backends.cudnn.benchmark = flag
                return _fwd(model, x)()

            return run

        t = s.time("layout/cudnn-benchmark", {"off": with_benchmark(False), "on": with_benchmark(True)})
        s.add(impact_claim("cudnn-benchmark-off/impact", "cudnn-benchmark-off", claimed=hint.impact if hint else None,
                           measured=ratio(t["off"], t["on"]), fired=hint is not None,
                           note=f"conv forward, batch {batch} x 3 x {size}^2, fp32"))
    if not _not_registered(s, "channels-last-off", "channels-last-off / channels-last fix on a CUDA conv net"):
        precision = "bf16-mixed" if s.cuda else "32-true"
        loader = image_loader(4 * batch, batch_size=batch, size=size)
        planted = _fit_and_predict(s, LitClassifier(conv_net()), loader, auto_apply=True, precision=precision)
        clean = _fit_and_predict(s, LitClassifier(conv_net(channels_last=True)), loader, precision=precision)
        hint = _either("channels-last-off", *planted)
        s.add(fires_claim("channels-last-off/fires", "channels-last-off", expected=s.cuda, fired=hint is not None,
                          evidence=_hint_evidence(hint), note=f"contiguous conv net, {precision}"))
        s.add(fires_claim("channels-last-off/quiet", "channels-last-off", expected=False,
                          fired=_either("channels-last-off", *clean) is not None, note="model in channels_last"))
        dtype = torch.bfloat16 if s.cuda else torch.float32
        plain = conv_net(device=s.device, dtype=dtype).eval()
        cl = conv_net(device=s.device, dtype=dtype, channels_last=True).eval()
        x = images(batch, size, device=s.device, dtype=dtype)
        xcl = x.contiguous(memory_format=torch.channels_last)
        t = s.time("layout/channels-last", {"contiguous": _fwd(plain, x), "channels_last": _fwd(cl, xcl)})
        measured = ratio(t["contiguous"], t["channels_last"])
        s.add(impact_claim("channels-last-off/impact", "channels-last-off", claimed=hint.impact if hint else None,
                           measured=measured, fired=hint is not None, note=f"conv forward, {dtype}, batch {batch}"))
        _fix_claims(s, "channels-last", find_fix(planted[1], "channels-last"), measured)
    if not _not_registered(s, "attention-eager", "attention-eager / sdpa fix on an HF BERT encoder"):
        from lit_models import LitEncoder

        dims = dict(hidden=768, layers=4, heads=12, intermediate=3072) if big else dict(hidden=32, layers=1, heads=2,
                                                                                        intermediate=64)
        seq, nb = (256, 32) if big else (16, 2)
        loader = token_loader(4 * nb, seq, batch_size=nb)
        precision = "bf16-mixed" if s.cuda else "32-true"
        planted = _fit_and_predict(s, LitEncoder(bert_encoder("eager", **dims)), loader, auto_apply=True,
                                   precision=precision)
        clean = _fit_and_predict(s, LitEncoder(bert_encoder("sdpa", **dims)), loader, precision=precision)
        hint = _either("attention-eager", *planted)
        s.add(fires_claim("attention-eager/fires", "attention-eager", expected=True, fired=hint is not None,
                          evidence=_hint_evidence(hint), note="BertModel(attn_implementation='eager')"))
        s.add(fires_claim("attention-eager/quiet", "attention-eager", expected=False,
                          fired=_either("attention-eager", *clean) is not None, note="attn_implementation='sdpa'"))
        dtype = torch.bfloat16 if s.cuda else torch.float32
        eager = bert_encoder("eager", **dims, device=s.device, dtype=dtype)
        sdpa = bert_encoder("sdpa", **dims, device=s.device, dtype=dtype)
        tb = token_batch(nb, seq, device=s.device)
        t = s.time("layout/attention", {"eager": _fwd(eager, **tb), "sdpa": _fwd(sdpa, **tb)})
        measured = ratio(t["eager"], t["sdpa"])
        s.add(impact_claim("attention-eager/impact", "attention-eager", claimed=hint.impact if hint else None,
                           measured=measured, fired=hint is not None, note=f"BERT forward, {dtype}, {nb} x {seq}"))
        _fix_claims(s, "sdpa", find_fix(planted[1], "sdpa"), measured)
    if not _not_registered(s, "fp8-eligible", "fp8-eligible on an FP8-capable GPU"):
        from perfcallbacks import DeviceProfile

        fp8_fast = DeviceProfile.detect().is_fast("fp8")
        width = 8192 if big else 64
        large = mlp(width, 4, device=s.device, dtype=torch.bfloat16 if s.cuda else torch.float32)
        small = mlp(256 if big else 16, 2, device=s.device)
        hint = find_hint(_advisor(large).analyze(), "fp8-eligible")
        s.add(fires_claim("fp8-eligible/large", "fp8-eligible", expected=fp8_fast, fired=hint is not None,
                          evidence=_hint_evidence(hint), note=f"4 x Linear({width}, {width}) bf16; device fp8 "
                                                              f"{'fast' if fp8_fast else 'not fast'}"))
        s.add(fires_claim("fp8-eligible/small-quiet", "fp8-eligible", expected=False,
                          fired=find_hint(_advisor(small).analyze(), "fp8-eligible") is not None))
        if s.cuda and hint is not None:
            a = torch.randn(8192, width, device=s.device)
            w = torch.randn(width, width, device=s.device)
            fp8 = _fp8_gemm(a, w, s)
            if fp8 is not None:
                a16, w16 = a.bfloat16(), w.bfloat16()
                t = s.time("layout/fp8-gemm", {"bf16": lambda: torch.mm(a16, w16), "fp8": fp8})
                s.add(impact_claim("fp8-eligible/impact", "fp8-eligible", claimed=hint.impact,
                                   measured=ratio(t["bf16"], t["fp8"]),
                                   note=f"one 8192 x {width} x {width} GEMM, bf16 vs scaled e4m3 (upper bound: "
                                        "no casts or scaling counted)"))


def _fix_claims(s: Suite, fix_id: str, fix: Any, measured: float) -> None:
    status = fix.status if fix else None
    s.add(Claim(f"{fix_id}/fix-applied", f"auto_apply keeps the {fix_id} fix for predict",
                "pass" if status == "applied" else "fail", claimed="applied", measured=status,
                note=fix.reason if fix else f"no {fix_id} fix record in the predict report"))
    if fix is not None and fix.speedup:
        s.add(agreement_claim(f"{fix_id}/fix-speedup", f"the {fix_id} guard's speedup vs a synchronised forward",
                              claimed=fix.speedup, measured=measured, details={"fidelity": fix.fidelity}))


def section_overhead(s: Suite) -> None:
    from perfcallbacks import PerfHintCallback

    from lit_models import LitClassifier, quiet_trainer

    steps = 1000 if s.big else 40
    accel = "cuda" if s.cuda else "cpu"
    loader = vector_loader(64 * 50, 512, batch_size=64)
    rows: dict[str, list[dict[str, float]]] = {"with": [], "without": []}

    def fit(with_callback: bool) -> dict[str, float]:
        cb = PerfHintCallback(verbose=False) if with_callback else None
        trainer = quiet_trainer(accelerator=accel, devices=1, max_steps=steps, callbacks=[cb] if cb else [])
        wall = time_once(lambda: trainer.fit(LitClassifier(mlp(512, 3, out=8)), loader), sync=s.sync)
        return {"fit_wall_s": wall, "own_s": cb.overhead_s if cb else 0.0}

    fit(True)  # warm imports, CUDA context, allocator: not measured
    pairs = 0
    while pairs < 5:
        began = time.monotonic()
        for flag in (True, False) if pairs % 2 == 0 else (False, True):
            rows["with" if flag else "without"].append(fit(flag))
        pairs += 1
        if pairs >= 3 and s.left_s() < 2 * (time.monotonic() - began) + 20:
            break
    s.timings["overhead/fits"] = rows
    own_share = statistics.median(r["own_s"] / r["fit_wall_s"] for r in rows["with"])
    walls_without = [r["fit_wall_s"] for r in rows["without"]]
    # Paired: each fit with the callback against the plain fit next to it, so slow drift cancels.
    e2e = statistics.median(w["fit_wall_s"] / wo["fit_wall_s"] for w, wo in zip(rows["with"], rows["without"])) - 1.0
    noise = (max(walls_without) - min(walls_without)) / statistics.median(walls_without)
    s.add(Claim("overhead/own-share", f"callback's own hook time / fit wall time, {steps}-step GPU fit (< 1%)",
                "pass" if own_share < 0.01 else "fail", claimed="< 0.01", measured=own_share,
                note=f"median of {len(rows['with'])} fits"))
    s.add(Claim("overhead/end-to-end", f"fit wall time with / without the callback - 1 (< 1%), median of {pairs} pairs",
                "pass" if e2e < 0.01 else "fail", claimed="< 0.01", measured=e2e,
                note=f"spread of the plain fits {noise:.1%}" + (" (larger than the limit: read own-share)"
                                                                 if noise > 0.01 else "")))


SECTIONS: list[tuple[str, Callable[[Suite], None], float]] = [
    ("device", section_device, 10),
    ("measure", section_measure, 10),
    ("tensor-cores", section_tensor_cores, 10),
    ("autocast", section_autocast, 25),
    ("alignment", section_alignment, 30),
    ("batch-size-small", section_batch_small, 10),
    ("device-usage", section_device_usage, 10),
    ("pin-memory", section_pin_memory, 20),
    ("layout", section_layout, 40),
    ("overhead", section_overhead, 40),
]


def environment() -> dict[str, Any]:
    cudnn = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "cudnn": cudnn, "mode": os.environ.get("GPU_CHECK_MODE", "direct"), "cpus": os.cpu_count()}
    for name in ("lightning", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except Exception:
            env[name] = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        env["driver"] = None
    try:
        env["load_average"] = os.getloadavg()
    except OSError:
        pass
    return env


def device_facts(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"name": f"cpu dry run ({platform.processor() or platform.machine()})", "kind": "cpu"}
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "kind": "cuda", "count": torch.cuda.device_count(),
            "compute_capability": [props.major, props.minor], "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="wall-time budget; sections that would start past it are skipped")
    parser.add_argument("--out", default=None, help=f"results folder (default {RESULTS_DIR}; dry runs write "
                                                    "only when this is given)")
    parser.add_argument("--dry-run", action="store_true", help="run every section on the CPU at tiny sizes")
    parser.add_argument("--only", default=None, help="comma-separated section names")
    parser.add_argument("--pytest-log", default=None, help="tests/gpu output to summarise in the results")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu-bench: no CUDA device (torch.cuda.is_available() is False): every GPU benchmark skipped, "
              "no results written", flush=True)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("PERFCALLBACKS_CACHE", "off")  # each run measures; no decisions from earlier runs
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    s = Suite(device, args.budget_s, dry=args.dry_run)
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {name for name, _, _ in SECTIONS}
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; known: {[n for n, _, _ in SECTIONS]}")
    facts = device_facts(s.device)
    s.log(f"device {facts['name']}, torch {torch.__version__}, budget {args.budget_s:.0f} s"
          + (" (dry run)" if s.dry else ""))
    from perfcallbacks.hints import PerfHintWarning

    tests = {}
    if args.pytest_log and Path(args.pytest_log).is_file():
        tests = parse_pytest_summary(Path(args.pytest_log).read_text(errors="replace"))
    env = environment()
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    write = bool(args.out or not s.dry)

    def save() -> tuple[Path, Path]:
        results = build_results(device=facts, environment=env, claims=s.claims, timings=s.timings, tests=tests,
                                elapsed_s=time.monotonic() - s.start, created=created)
        return write_results(results, args.out or RESULTS_DIR)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        warnings.filterwarnings("ignore", module="lightning")
        for name, fn, min_left in SECTIONS:
            if only is None or name in only:
                run_section(s, name, fn, min_left)
                if write:
                    save()  # after every section: a run killed at its time limit keeps what it measured
    summary = counts(s.claims)
    print("\n| verdict | claim | product says | measured | note |\n|---|---|---|---|---|")
    for c in s.claims:
        print(f"| {c.verdict} | {c.id} | {_short(c.claimed)} | {_short(c.measured)} | {c.note[:80]} |")
    print(f"\ngpu-bench: {', '.join(f'{k} {v}' for k, v in summary.items())} in {time.monotonic() - s.start:.0f} s")
    if write:
        json_path, md_path = save()
        print(f"gpu-bench: wrote {json_path} and {md_path}")
    return 1 if summary["fail"] or summary["error"] else 0


def _short(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


if __name__ == "__main__":
    sys.exit(main())
