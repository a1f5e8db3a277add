"""The ``perfhints`` command line: device, tune, report (and diff), explain, hints, run.

Importing this module imports no torch: ``perfhints run``'s parent stays small, and
``--version`` / ``explain`` / ``report`` answer at once. Subcommands that need torch
(``device``, ``tune``) import it when they run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from perfcallbacks.hints import REGISTRY, HintSpec, unknown_id_message

if TYPE_CHECKING:
    from perfcallbacks.device import DeviceProfile
    from perfcallbacks.report import Report

# Packages whose versions ``perfhints device`` shows (read from metadata: nothing is imported).
VERSIONED = ("torch", "lightning", "pytorch-lightning", "transformers", "accelerate", "rich", "tqdm")


def magic_configs(profile: DeviceProfile) -> list[str]:
    """The handful of settings that matter most on this device, as advice lines."""
    from perfcallbacks.device import FAST

    lines: list[str] = []
    if profile.kind == "cpu":
        cores = profile.physical_cores
        if profile.is_fast("bf16"):
            lines.append('bf16 is native here (AMX / AVX512-BF16): Trainer(precision="bf16-mixed"), '
                         'torch.autocast("cpu", dtype=torch.bfloat16) for inference')
        else:
            lines.append("bf16 is emulated and slow here (no AVX512-BF16/AMX): keep fp32; do not use bf16 autocast")
        if profile.is_fast("int8_dynamic"):
            vnni = " (VNNI speeds it further)" if "avx512_vnni" in profile.isa else ""
            lines.append(f"int8 dynamic quantization is the low-precision inference path{vnni}: "
                         "PerfHintCallback(auto_apply=True) measures and applies it")
        lines.append(f"fp16 is {profile.supports('fp16')} on this CPU: avoid fp16 weights and fp16 autocast"
                     if not profile.is_fast("fp16") else "fp16 is fast here")
        if cores:
            lines.append(f"threads: {cores} physical cores; one process -> torch.set_num_threads({cores}); "
                         f"N serving workers -> torch.set_num_threads({cores}//N) each (never more threads than cores)")
        lines.append(f"align Linear widths to multiples of {profile.alignment_for('fp32')} floats "
                     f"(vector width); 767 vs 768 measured 1.35-1.53x slower here")
    else:
        bf16 = profile.is_fast("bf16")
        if profile.is_fast("tensor_cores"):
            amp = '"bf16-mixed"' if bf16 else '"16-mixed"'
            lines.append(f"mixed precision on Tensor Cores: Trainer(precision={amp}) / "
                         f"TrainingArguments({'bf16' if bf16 else 'fp16'}=True)")
        else:
            lines.append("no Tensor Cores: mixed precision saves memory more than time")
        if not bf16:
            lines.append(f"no native bf16 (bf16 is {profile.supports('bf16')}): use fp16 + GradScaler, not bf16")
        if profile.is_fast("tf32"):
            lines.append('TF32 for fp32 matmuls: torch.set_float32_matmul_precision("high") / TrainingArguments(tf32=True)')
        if profile.is_fast("fp8"):
            lines.append("FP8 Tensor Cores: Transformer Engine / torchao float8 training for large GEMMs")
        align = profile.alignment
        if "fp16" in align:
            optimal = f", multiples of {align['optimal']} best" if "optimal" in align else ""
            lines.append(f"dims (hidden, FFN, vocab, batch, padded seq len) in multiples of "
                         f"{align['fp16']} (fp16/bf16) / {align.get('int8', 16)} (int8){optimal}")
        if profile.kind == "cuda":
            lines.append("DataLoader(pin_memory=True, num_workers>0, persistent_workers=True) to keep it fed")
        if profile.supports("compile") == FAST:
            lines.append("torch.compile(model) is supported (Triton)")
    return lines


def perfcallbacks_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("perfcallbacks")
    except metadata.PackageNotFoundError:  # a source checkout that is not installed
        from perfcallbacks import __version__

        return __version__


def software_versions() -> dict[str, str | None]:
    """Python, perfcallbacks and the frameworks' installed versions (``None``: not installed)."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": f"{platform.python_version()} ({platform.python_implementation()})",
                                  "perfcallbacks": perfcallbacks_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    if out.get("torch") and torch is not None:  # the build tag matters (2.15.0+cu132 vs 2.13.0+cpu)
        out["torch"] = str(torch.__version__)
    return out


def thread_settings() -> dict[str, Any]:
    """This process's current thread and precision settings (what a fix or a hint would change)."""
    import torch

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "TORCH_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
            "cpus_in_affinity_mask": affinity, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "quantized_engine": torch.backends.quantized.engine, "environment": env,
            "parallel_info": _parallel_backend(torch)}


def _parallel_backend(torch: Any) -> str | None:
    try:
        lines = torch.__config__.parallel_info().splitlines()
    except Exception:  # noqa: BLE001 - a build without the info
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("ATen parallel backend")), None)


def _device(args: argparse.Namespace) -> int:
    from perfcallbacks.device import DeviceProfile

    profile = DeviceProfile.preset(args.target) if args.target else DeviceProfile.detect()
    versions, threads = software_versions(), thread_settings()
    if args.json:
        data = profile.to_dict()
        data["native_bf16"] = profile.is_fast("bf16")
        data["magic_configs"] = magic_configs(profile)
        data["software"] = versions
        data["process"] = threads
        print(json.dumps(data, indent=2))
        return 0
    print(f"{profile.name}  [{profile.kind}, {profile.source}]")
    if profile.compute_capability:
        print(f"  compute capability {profile.compute_capability[0]}.{profile.compute_capability[1]}, "
              f"{profile.memory_gb} GB, count {profile.count}")
    if profile.physical_cores:
        print(f"  cores: {profile.physical_cores} physical / {profile.logical_cores} logical")
    if profile.isa:
        print(f"  ISA: {', '.join(profile.isa)}")
    print("  capabilities: " + ", ".join(f"{k}={v}" for k, v in profile.capabilities.items()))
    print("  alignment: " + ", ".join(f"{k}={v}" for k, v in profile.alignment.items()))
    print("Magic configs that matter here:")
    for line in magic_configs(profile):
        print(f"  - {line}")
    print("Software: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    missing = [k for k, v in versions.items() if v is None]
    if missing:
        print(f"  not installed: {', '.join(missing)}")
    env = ", ".join(f"{k}={v}" for k, v in threads["environment"].items()) or "none set"
    print(f"This process: {threads['intra_op_threads']} intra-op / {threads['inter_op_threads']} inter-op threads "
          f"({threads['parallel_info'] or 'unknown'} backend), {threads['cpus_in_affinity_mask']} CPUs in the "
          f"affinity mask, float32 matmul precision {threads['float32_matmul_precision']!r}, quantized engine "
          f"{threads['quantized_engine']!r}; thread variables: {env}")
    return 0


def _load_report(path: str, command: str) -> Report | None:
    from perfcallbacks.report import Report

    try:
        return Report.load(path)
    except (OSError, ValueError, KeyError) as err:
        print(f"perfhints {command}: cannot read {path}: {err}", file=sys.stderr)
        return None


def _report(args: argparse.Namespace) -> int:
    files = list(args.files)
    if len(files) > 2:
        print("perfhints report: give one report to render, or two (OLD NEW) to compare", file=sys.stderr)
        return 2
    reports = [_load_report(f, "report") for f in files]
    if any(r is None for r in reports):
        return 2
    if len(reports) == 2:
        diff = diff_reports(reports[0], reports[1])
        print(json.dumps(diff, indent=2) if args.json else render_diff(diff, files[0], files[1]))
        return 0
    if args.json:
        print(reports[0].to_json())
        return 0
    from perfcallbacks.render import terminal_width

    print(reports[0].render(color=args.color, width=terminal_width()))
    return 0


def _diff(args: argparse.Namespace) -> int:
    args.files = [args.old, args.new]
    return _report(args)


def _numbers(evidence: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in evidence.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def diff_reports(old: Report, new: Report) -> dict[str, Any]:
    """What changed between two reports: resolved, new and kept hints (with their changed numbers), fixes.

    Hints are matched by (id, phase); a hint that is suppressed or resolved by an applied fix in
    ``new`` counts as resolved.

    Example::

        >>> from perfcallbacks.hints import REGISTRY
        >>> from perfcallbacks.report import Report
        >>> a = Report(hints=[REGISTRY["padding-waste"].make("warmup", "61%", "f", {"pad_fraction": 0.61})])
        >>> diff_reports(a, Report())["resolved"]
        [{'id': 'padding-waste', 'phase': 'warmup', 'severity': 'warning', 'message': '61%'}]
    """
    before = {(h.id, h.phase): h for h in old.open_hints}
    after = {(h.id, h.phase): h for h in new.open_hints}

    def brief(h: Any) -> dict[str, Any]:
        return {"id": h.id, "phase": h.phase, "severity": h.severity, "message": h.message}

    kept = []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        na, nb = _numbers(a.evidence), _numbers(b.evidence)
        changes = {k: [na.get(k), nb.get(k)] for k in sorted(na.keys() | nb.keys()) if na.get(k) != nb.get(k)}
        if a.impact != b.impact:
            changes["impact"] = [a.impact, b.impact]
        if a.severity != b.severity:
            changes["severity"] = [a.severity, b.severity]
        kept.append({**brief(b), "changes": changes})
    fixes_a, fixes_b = {f.id: f for f in old.fixes}, {f.id: f for f in new.fixes}
    fixes = []
    for fid in sorted(fixes_a.keys() | fixes_b.keys()):
        fa, fb = fixes_a.get(fid), fixes_b.get(fid)
        fixes.append({"id": fid, "status": [fa and fa.status, fb and fb.status],
                      "speedup": [fa and fa.speedup, fb and fb.speedup]})
    return {
        "resolved": [brief(before[k]) for k in sorted(before.keys() - after.keys())],
        "new": [brief(after[k]) for k in sorted(after.keys() - before.keys())],
        "kept": kept,
        "fixes": fixes,
        "overhead_s": [old.overhead_s, new.overhead_s],
    }


def render_diff(diff: dict[str, Any], old_name: str, new_name: str) -> str:
    lines = [f"perfhints report {old_name} -> {new_name}"]
    for title, key in (("resolved", "resolved"), ("new", "new")):
        items = diff[key]
        lines.append(f"{title}: {len(items)}")
        lines += [f"  {'-' if key == 'resolved' else '+'} [{h['id']}] ({h['phase']}, {h['severity']}) {h['message']}"
                  for h in items]
    lines.append(f"still open: {len(diff['kept'])}")
    for h in diff["kept"]:
        changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in h["changes"].items()) or "unchanged"
        lines.append(f"  = [{h['id']}] ({h['phase']}) {changes}")
    if diff["fixes"]:
        lines.append("fixes:")
        for f in diff["fixes"]:
            (sa, sb), (va, vb) = f["status"], f["speedup"]
            speed = "" if va == vb else f", speedup {va} -> {vb}"
            lines.append(f"  {f['id']}: {sa or 'absent'} -> {sb or 'absent'}{speed}")
    a, b = diff["overhead_s"]
    lines.append(f"perfcallbacks' own cost: {a:.3f} s -> {b:.3f} s")
    return "\n".join(lines)


def fix_safety(spec: HintSpec) -> str:
    """Whether ``auto_apply`` can fix this hint (guarded: measured before kept) or the fix is the user's."""
    from perfcallbacks.report import FIX_RESOLVES

    fixes = [fid for fid, entries in FIX_RESOLVES.items() if any(hid == spec.id for hid, _ in entries)]
    explicit = getattr(spec, "fix_safety", None)
    if explicit:
        return str(explicit)
    if fixes:
        return (f"guarded: auto_apply=True applies the {', '.join(fixes)} fix only after measuring it on your model "
                "and batches (faster by >= 5% and faithful outputs), else rolls it back and reports it rejected; "
                "saved fp32 checkpoints are never touched.")
    return "manual: the fix changes your code, data or configuration, so it is never applied automatically."


def explain_dict(spec: HintSpec) -> dict[str, Any]:
    """Everything ``perfhints explain`` says about one hint, as data (``--json``)."""
    data: dict[str, Any] = {"id": spec.id, "category": spec.category, "default_severity": spec.severity,
                            "title": spec.title, "what": spec.what, "why": spec.why, "fix": spec.fix,
                            "fix_safety": fix_safety(spec)}
    example = getattr(spec, "example", None)
    if example:
        data["example"] = example
    options = dict(getattr(spec, "options", None) or {})
    data["options"] = options
    data["silence"] = [f'PerfHintCallback(suppress=["{spec.id}"]) / HFPerfHints(suppress=["{spec.id}"]) / '
                       f'Advisor(suppress=["{spec.id}"])',
                       f"PERFHINTS_SUPPRESS={spec.id} (environment; comma-separated ids)",
                       f'warnings.filterwarnings("ignore", message=r"\\[{spec.id}\\]", category=PerfHintWarning)',
                       f"perfhints run --suppress {spec.id} -- python train.py"]
    return data


def explain_text(spec: HintSpec) -> str:
    """``ruff rule``-style documentation of one hint."""
    data = explain_dict(spec)
    out = [f"# {spec.id} ({spec.category}, default severity {spec.severity})", "", spec.title, "",
           "## What it does", spec.what, "", "## Why is this bad?", spec.why, ""]
    if "example" in data:
        out += ["## Example", str(data["example"]), ""]
    out += ["## Fix", spec.fix, "", "## Fix safety", data["fix_safety"], ""]
    out.append("## Options")
    if data["options"]:
        out += [f"- {k}: {v}" for k, v in data["options"].items()]
    else:
        out.append("- suppress= / PERFHINTS_SUPPRESS (below); target= judges the run as if on another device")
    out += ["", "## How to silence this one"] + [f"- {line}" for line in data["silence"]]
    return "\n".join(out)


def _explain(args: argparse.Namespace) -> int:
    if args.all:
        specs = list(REGISTRY.values())
    elif args.id is None:
        print("perfhints explain: give a hint ID or --all (perfhints hints lists them)", file=sys.stderr)
        return 2
    elif args.id not in REGISTRY:
        print(f"perfhints explain: {unknown_id_message('ID', args.id)}", file=sys.stderr)
        return 2
    else:
        specs = [REGISTRY[args.id]]
    if args.json:
        data = [explain_dict(s) for s in specs]
        print(json.dumps(data if args.all else data[0], indent=2))
    else:
        print("\n\n".join(explain_text(s) for s in specs))
    return 0


def _list(args: argparse.Namespace) -> int:
    for spec in REGISTRY.values():
        print(f"{spec.id:28} {spec.category:11} {spec.severity:8} {spec.title}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perfhints", description="Measured PyTorch performance hints.")
    parser.add_argument("--version", action="version", version=f"perfhints (perfcallbacks) {perfcallbacks_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    device = sub.add_parser("device", help="what this (or a preset) device can do, versions, thread settings")
    device.add_argument("--target", help="preset name (a100, h100, t4, cpu-avx2, ...)")
    device.add_argument("--json", action="store_true", help="machine-readable output")
    device.set_defaults(func=_device)

    report = sub.add_parser("report", help="render a saved JSON report, or compare two (OLD NEW)")
    report.add_argument("files", nargs="+", metavar="FILE", help="one report to render; two to compare (OLD NEW)")
    report.add_argument("--color", action=argparse.BooleanOptionalAction, default=None)
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=_report)

    diff = sub.add_parser("diff", help="compare two reports: resolved, new, measured changes")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--json", action="store_true", help="machine-readable output")
    diff.set_defaults(func=_diff, color=None)

    explain = sub.add_parser("explain", help="a hint's documentation: what / why / example / fix / fix safety / "
                                             "options / how to silence")
    explain.add_argument("id", nargs="?")
    explain.add_argument("--all", action="store_true", help="every hint")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.set_defaults(func=_explain)

    hints = sub.add_parser("hints", help="list every hint id")
    hints.set_defaults(func=_list)

    for module in ("perfcallbacks.tune", "perfcallbacks.launch"):
        try:
            __import__(module)
            sys.modules[module].register(sub)
        except (ImportError, AttributeError) as err:  # optional subcommand not built in this install
            import logging

            logging.getLogger("perfcallbacks").debug("perfhints: %s unavailable: %s", module, err)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as err:
        print(f"perfhints {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
