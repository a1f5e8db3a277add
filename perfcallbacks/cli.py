"""The ``perfhints`` command line: device, tune, report, explain, run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from perfcallbacks.device import FAST, DeviceProfile
from perfcallbacks.hints import REGISTRY, unknown_id_message


def magic_configs(profile: DeviceProfile) -> list[str]:
    """The handful of settings that matter most on this device, as advice lines."""
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


def _device(args: argparse.Namespace) -> int:
    profile = DeviceProfile.preset(args.target) if args.target else DeviceProfile.detect()
    if args.json:
        data = profile.to_dict()
        data["native_bf16"] = profile.is_fast("bf16")
        data["magic_configs"] = magic_configs(profile)
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
    return 0


def _report(args: argparse.Namespace) -> int:
    from perfcallbacks.report import Report

    try:
        report = Report.load(args.file)
    except (OSError, ValueError) as err:
        print(f"perfhints report: cannot read {args.file}: {err}", file=sys.stderr)
        return 2
    print(report.render(color=args.color))
    return 0


def _explain(args: argparse.Namespace) -> int:
    if args.id not in REGISTRY:
        print(f"perfhints explain: {unknown_id_message('ID', args.id)}", file=sys.stderr)
        return 2
    print(REGISTRY[args.id].explain())
    return 0


def _list(args: argparse.Namespace) -> int:
    for spec in REGISTRY.values():
        print(f"{spec.id:28} {spec.category:10} {spec.severity:8} {spec.title}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perfhints", description="Measured PyTorch performance hints.")
    sub = parser.add_subparsers(dest="command", required=True)

    device = sub.add_parser("device", help="what this (or a preset) device can do, and the configs that matter")
    device.add_argument("--target", help=f"preset name, one of: {', '.join(DeviceProfile.presets())}")
    device.add_argument("--json", action="store_true", help="machine-readable output")
    device.set_defaults(func=_device)

    report = sub.add_parser("report", help="render a saved JSON report")
    report.add_argument("file")
    report.add_argument("--color", action=argparse.BooleanOptionalAction, default=None)
    report.set_defaults(func=_report)

    explain = sub.add_parser("explain", help="a hint's documentation: what / why / fix / how to silence")
    explain.add_argument("id")
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
