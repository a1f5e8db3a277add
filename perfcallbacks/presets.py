"""Built-in device profiles for "what-if" planning (``target="a100"``).

Facts come from vendor specifications:
- NVIDIA GPU datasheets (memory) and the CUDA C Programming Guide's compute
  capability table; Tensor Core generations from the Volta / Turing / Ampere /
  Ada / Hopper architecture whitepapers (bf16 + TF32 from Ampere, FP8 from Ada
  and Hopper); GeForce GTX 950M is Maxwell (5.0), without Tensor Cores.
- Intel: AVX-512 VNNI from 2nd-gen Xeon Scalable (Cascade Lake); AMX-BF16/INT8
  and AVX512-BF16 from 4th-gen Xeon Scalable (Sapphire Rapids); both from the
  Intel Xeon product briefs and the oneDNN CPU ISA documentation.
- Apple M-series through PyTorch's MPS backend: fp16 native, bf16 from macOS 14
  (PyTorch MPS docs), no Tensor Cores in NVIDIA's sense.
"""

from __future__ import annotations

import re

from perfcallbacks.device import (
    EMULATED,
    FAST,
    SUPPORTED,
    UNSUPPORTED,
    DeviceProfile,
    close_matches,
    cpu_capabilities,
    cuda_capabilities,
)


def _cpu(key: str, name: str, isa: tuple[str, ...], cores: int, note: str) -> DeviceProfile:
    caps, align = cpu_capabilities(isa)
    return DeviceProfile(kind="cpu", name=name, physical_cores=cores, logical_cores=2 * cores,
                         isa=isa, capabilities=caps, alignment=align, source=f"preset:{key}", notes=(note,))


def _gpu(key: str, name: str, cc: tuple[int, int], memory_gb: float, note: str) -> DeviceProfile:
    caps, align = cuda_capabilities(cc)
    return DeviceProfile(kind="cuda", name=name, count=1, compute_capability=cc, memory_gb=memory_gb,
                         capabilities=caps, alignment=align, source=f"preset:{key}", notes=(note,))


PRESETS: dict[str, DeviceProfile] = {
    "cpu-avx2": _cpu("cpu-avx2", "Generic x86-64 CPU with AVX2", ("avx2", "fma"), 8,
                     "bf16 is emulated (slow); int8 dynamic quantization is the low-precision path"),
    "cpu-avx512-vnni": _cpu("cpu-avx512-vnni", "Intel Xeon (Cascade Lake class, AVX-512 VNNI)",
                            ("avx2", "avx512", "avx512_vnni", "fma"), 24,
                            "VNNI speeds up int8 GEMMs; bf16 still emulated"),
    "cpu-amx": _cpu("cpu-amx", "Intel Xeon (Sapphire Rapids class, AMX)",
                    ("amx", "avx2", "avx512", "avx512_bf16", "avx512_vnni", "fma"), 32,
                    "AMX tiles make bf16 and int8 matmuls fast"),
    "apple-m": DeviceProfile(
        kind="mps", name="Apple M-series (MPS)", count=1, memory_gb=16.0,
        capabilities={"fp16": FAST, "bf16": SUPPORTED, "tf32": UNSUPPORTED, "fp8": UNSUPPORTED,
                      "tensor_cores": UNSUPPORTED, "int8_dynamic": UNSUPPORTED, "compile": SUPPORTED},
        alignment={"fp32": 1, "fp16": 8, "bf16": 8}, source="preset:apple-m",
        notes=("unified memory: pin_memory does nothing; fp16 autocast is the fast path",)),
    "gtx-950m": _gpu("gtx-950m", "NVIDIA GeForce GTX 950M", (5, 0), 4.0,
                     "Maxwell: no Tensor Cores, no fast fp16, no torch.compile (Triton needs 7.0)"),
    "t4": _gpu("t4", "NVIDIA T4", (7, 5), 16.0, "Turing Tensor Cores: fp16 AMP; no native bf16, no TF32"),
    "v100": _gpu("v100", "NVIDIA V100", (7, 0), 32.0, "Volta Tensor Cores: fp16 AMP; no native bf16, no TF32"),
    "a10g": _gpu("a10g", "NVIDIA A10G", (8, 6), 24.0, "Ampere: bf16-mixed, TF32"),
    "l4": _gpu("l4", "NVIDIA L4", (8, 9), 24.0, "Ada: bf16-mixed, TF32, FP8 Tensor Cores"),
    "a100": _gpu("a100", "NVIDIA A100", (8, 0), 80.0, "Ampere: bf16-mixed, TF32, dims in multiples of 8 (64 best)"),
    "h100": _gpu("h100", "NVIDIA H100", (9, 0), 80.0, "Hopper: bf16-mixed, TF32, FP8 Tensor Cores"),
    "h200": _gpu("h200", "NVIDIA H200", (9, 0), 141.0, "Hopper with 141 GB HBM3e: bf16-mixed, TF32, FP8"),
    "rtx-3090": _gpu("rtx-3090", "NVIDIA GeForce RTX 3090", (8, 6), 24.0, "Ampere consumer: bf16-mixed, TF32"),
    "rtx-4090": _gpu("rtx-4090", "NVIDIA GeForce RTX 4090", (8, 9), 24.0, "Ada consumer: bf16-mixed, TF32, FP8"),
}

# Other spellings people use.
ALIASES = {
    "cpu": "cpu-avx2",
    "avx2": "cpu-avx2",
    "avx512": "cpu-avx512-vnni",
    "vnni": "cpu-avx512-vnni",
    "cascade-lake": "cpu-avx512-vnni",
    "cascadelake": "cpu-avx512-vnni",
    "amx": "cpu-amx",
    "sapphire-rapids": "cpu-amx",
    "sapphirerapids": "cpu-amx",
    "mps": "apple-m",
    "apple": "apple-m",
    "m1": "apple-m",
    "m2": "apple-m",
    "m3": "apple-m",
    "m4": "apple-m",
    "950m": "gtx-950m",
    "3090": "rtx-3090",
    "4090": "rtx-4090",
}

_PREFIXES = ("nvidia", "geforce", "tesla", "intel", "xeon")


def _normalise(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    parts = [p for p in text.split("-") if p not in _PREFIXES]
    return "-".join(parts)


def match_preset(name: str) -> DeviceProfile | None:
    """The preset a device name refers to, or ``None``.

    Forgiving: ``"A100"``, ``"a100-sxm4-80gb"`` and ``"NVIDIA A100-SXM4-80GB"``
    all give the A100 profile (the longest matching key wins, so ``"h100"``
    never resolves to ``"h10"``-like prefixes).
    """
    norm = _normalise(name)
    if not norm:
        return None
    if norm in PRESETS:
        return PRESETS[norm]
    if norm in ALIASES:
        return PRESETS[ALIASES[norm]]
    tokens = norm.split("-")
    candidates = {**{k: k for k in PRESETS}, **ALIASES}
    best: str | None = None
    for key, target in candidates.items():
        key_tokens = key.split("-")
        for i in range(len(tokens) - len(key_tokens) + 1):
            if tokens[i:i + len(key_tokens)] == key_tokens and (best is None or len(key) > len(best)):
                best = key
    return PRESETS[candidates[best]] if best else None


def resolve_preset(name: str) -> DeviceProfile:
    if not isinstance(name, str):
        raise TypeError(f"preset name must be a str, got {type(name).__name__}")
    found = match_preset(name)
    if found is None:
        hints = close_matches(_normalise(name), list(PRESETS) + list(ALIASES))
        maybe = f" Did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
        raise ValueError(f"unknown device preset {name!r}.{maybe} Known presets: {', '.join(sorted(PRESETS))}")
    return found


__all__ = ["PRESETS", "ALIASES", "match_preset", "resolve_preset", "EMULATED", "UNSUPPORTED"]
