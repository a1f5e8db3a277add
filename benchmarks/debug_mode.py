"""debug-mode-on: the cost the hint reports (its warm-up probe) against the real cost of anomaly detection.

For each model, in one process:

* **reported**: a plain training loop driven through ``Advisor`` with
  ``torch.autograd.set_detect_anomaly(True)``; at the end of warm-up the probe times forward +
  backward on one real batch with and without anomaly detection and the hint reports
  ``estimated_step_slowdown`` (step time over step time minus the measured extra).
* **real**: full training steps (forward, backward, optimizer step) of two identical copies of the
  model, one with anomaly detection on and one off, interleaved step by step; median of each.
  Real slowdown = median on / median off.

Acceptance: reported within +/-25% of real. Run::

    python benchmarks/debug_mode.py [--steps 40] [--warmup 10] [--runs 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from perfcallbacks import Advisor

RESULTS = Path(__file__).parent / "results" / "debug_mode.json"


def deep_mlp() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


def wide_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator], torch.Tensor]]] = {
    "deep_mlp_8x64_b32": (deep_mlp, lambda g: torch.randn(32, 64, generator=g)),
    "wide_mlp_1024_b64": (wide_mlp, lambda g: torch.randn(64, 256, generator=g)),
    "small_cnn_b16_32px": (small_cnn, lambda g: torch.randn(16, 3, 32, 32, generator=g)),
}


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()


def reported(make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    advisor = Advisor(model, warmup_steps=warmup, warn=False)
    # A plain loop does not tell the Advisor how long the job is; this one stands for a 2000-step fit, so
    # the probe's budget (5% of the fit) is what a real job would give it.
    advisor.context.batches_per_epoch, advisor.context.epochs = 2000, 1
    with torch.autograd.set_detect_anomaly(True):
        advisor.run_checks("setup")
        for _ in range(warmup + 1):
            with advisor.step((x, y)):
                train_step(model, opt, x, y)
    hint = advisor.report.hint("debug-mode-on")
    measured = dict(advisor.context.debug.measured)
    return {"fired": hint is not None, "evidence": hint.evidence if hint else None,
            "estimated_step_slowdown": hint.evidence.get("estimated_step_slowdown") if hint else None,
            "probe": measured, "advisor_overhead_s": advisor.overhead_s}


def real(make: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    on_model = make()
    off_model = copy.deepcopy(on_model)
    on_opt = torch.optim.SGD(on_model.parameters(), lr=0.01)
    off_opt = torch.optim.SGD(off_model.parameters(), lr=0.01)
    times: dict[str, list[float]] = {"on": [], "off": []}
    for index in range(steps + 2):
        for mode, model, opt in (("on", on_model, on_opt), ("off", off_model, off_opt)):
            with torch.autograd.set_detect_anomaly(mode == "on"):
                start = time.perf_counter()
                train_step(model, opt, x, y)
                elapsed = time.perf_counter() - start
            if index >= 2:  # the first steps pay one-off allocation
                times[mode].append(elapsed)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return {"step_on_ms": on * 1e3, "step_off_ms": off * 1e3, "slowdown": on / off, "steps": steps}


def one_run(steps: int, warmup: int) -> dict[str, Any]:
    rows = []
    for name, (make, inputs) in MODELS.items():
        g = torch.Generator().manual_seed(0)
        x = inputs(g)
        y = torch.randint(0, 10, (x.shape[0],), generator=g)
        rep = reported(make, x, y, warmup)
        act = real(make, x, y, steps)
        est = rep["estimated_step_slowdown"]
        error = None if est is None else est / act["slowdown"] - 1.0
        rows.append({"model": name, "reported": rep, "real": act, "relative_error": error,
                     "within_25pct": error is not None and abs(error) <= 0.25})
        print(f"{name}: reported {est if est is None else f'{est:.2f}x'} | real {act['slowdown']:.2f}x "
              f"({act['step_on_ms']:.2f} vs {act['step_off_ms']:.2f} ms) | error "
              f"{'n/a' if error is None else f'{error:+.1%}'}", flush=True)
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "load_avg_after": os.getloadavg(), "rows": rows}


def ratio_scaled_error(row: dict[str, Any]) -> float | None:
    """The error the previous rule would have made on the same run: a probe slower than the step scaled by
    its on/off ratio (``saved = min(with, step) * (1 - without / with)``) instead of keeping its time without."""
    evidence, probe = row["reported"]["evidence"], row["reported"]["probe"]
    if not evidence or "step_ms" not in evidence or not probe.get("with_s"):
        return None
    step, with_s, without_s = evidence["step_ms"] / 1e3, probe["with_s"], probe["without_s"]
    saved = min(with_s, step) * (1.0 - without_s / with_s)
    return step / max(step - saved, 1e-12) / row["real"]["slowdown"] - 1.0


def _errors(errors: list[float | None]) -> dict[str, Any]:
    known = [e for e in errors if e is not None]
    return {"errors": errors, "median_abs_error": statistics.median(abs(e) for e in known) if known else None,
            "within_25pct": sum(abs(e) <= 0.25 for e in known), "runs": len(errors)}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: every run's error, the median absolute error and how many runs were within +/-25%; the
    same for the previous rule, recomputed from the same probes and steps."""
    out = {}
    for name in MODELS:
        rows = [row for run in runs for row in run["rows"] if row["model"] == name]
        out[name] = {**_errors([row["relative_error"] for row in rows]),
                     "previous_rule": _errors([ratio_scaled_error(row) for row in rows])}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="interleaved real steps per mode")
    parser.add_argument("--warmup", type=int, default=10, help="advisor warm-up steps")
    parser.add_argument("--runs", type=int, default=1, help="runs in a row (each: every model, reported and real)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    runs = []
    for index in range(args.runs):
        print(f"-- run {index + 1} of {args.runs}", flush=True)
        runs.append(one_run(args.steps, args.warmup))
    result = {"benchmark": "debug_mode", "argv": argv if argv is not None else [], "runs": runs,
              "summary": summary(runs)}
    for name, row in result["summary"].items():
        errors = ", ".join("n/a" if e is None else f"{e:+.0%}" for e in row["errors"])
        before = row["previous_rule"]
        print(f"{name}: errors {errors}; within +/-25% in {row['within_25pct']} of {row['runs']} "
              f"(previous rule, same runs: {before['within_25pct']} of {before['runs']})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
