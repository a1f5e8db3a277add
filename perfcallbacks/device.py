"""What a device can do: the record that ``torch.device`` lacks.

A :class:`DeviceProfile` is a plain record of facts (kind, name, cores, ISA,
memory, which precisions are fast, the alignment its matrix units want). Every
check reads one, so tests and "what-if" planning pass a preset instead of
needing the hardware. Probing is kept in small functions that take their inputs
(``/proc/cpuinfo`` text, affinity set) so tests can inject them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import platform
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from perfcallbacks._lazy import lazy_module

torch = lazy_module("torch")  # loads on first use: the checks import this module (see _lazy)

# Capability levels, ordered from best to worst (tests/test_types.py keeps Level equal to LEVELS).
Level = Literal["fast", "supported", "emulated", "unsupported"]
FAST: Level = "fast"
SUPPORTED: Level = "supported"  # works natively, but is not where this device shines
EMULATED: Level = "emulated"  # accepted by torch, but computed the slow way
UNSUPPORTED: Level = "unsupported"
LEVELS: tuple[Level, ...] = (FAST, SUPPORTED, EMULATED, UNSUPPORTED)

FEATURES = ("fp16", "bf16", "tf32", "fp8", "tensor_cores", "int8_dynamic", "compile")
DeviceKind = Literal["cpu", "cuda", "mps", "xpu"]
KINDS: tuple[DeviceKind, ...] = ("cpu", "cuda", "mps", "xpu")


@dataclass(frozen=True)
class DeviceProfile:
    """Facts about one device (local or hypothetical) that the checks reason on.

    Args:
        kind: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"xpu"``.
        name: human-readable name (``"NVIDIA A100-SXM4-80GB"``, ``"AMD EPYC"``).
        count: accelerators of this kind visible (0 for a CPU profile).
        compute_capability: CUDA compute capability, e.g. ``(8, 0)``.
        memory_gb: memory per accelerator (or host memory for a CPU), GiB.
        physical_cores / logical_cores: host CPU cores usable by this process
            (affinity mask applied); ``None`` when unknown (GPU presets).
        isa: CPU ISA features that matter for kernels (``avx2``, ``avx512``,
            ``avx512_vnni``, ``avx512_bf16``, ``amx``, ``neon``).
        capabilities: feature -> level (``fast``/``supported``/``emulated``/``unsupported``)
            for every name in :data:`FEATURES`.
        alignment: dtype -> multiple of elements the matrix units want
            (``fp32``, ``fp16``, ``bf16``, ``int8``, ...); ``optimal`` is the
            multiple that gives the best tiles on large GEMMs (e.g. 64 on A100).
        source: ``"detected"`` or ``"preset:<key>"``.

    Example::

        >>> from perfcallbacks import DeviceProfile
        >>> a100 = DeviceProfile.preset("a100")
        >>> a100.supports("bf16"), a100.alignment_for(torch.bfloat16)
        ('fast', 8)
        >>> DeviceProfile.detect().kind in ("cpu", "cuda", "mps", "xpu")
        True
    """

    kind: DeviceKind
    name: str
    count: int = 0
    compute_capability: tuple[int, int] | None = None
    memory_gb: float | None = None
    physical_cores: int | None = None
    logical_cores: int | None = None
    isa: tuple[str, ...] = ()
    capabilities: dict[str, Level] = field(default_factory=dict)
    alignment: dict[str, int] = field(default_factory=dict)
    source: str = "detected"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"DeviceProfile kind must be one of {KINDS}, got {self.kind!r}")
        for feature, level in self.capabilities.items():
            if feature not in FEATURES or level not in LEVELS:
                raise ValueError(
                    f"DeviceProfile capabilities must map {FEATURES} to {LEVELS}, got {feature!r}: {level!r}"
                )

    # -- queries ---------------------------------------------------------------
    @property
    def is_accelerator(self) -> bool:
        return self.kind != "cpu"

    @property
    def has_matrix_units(self) -> bool:
        """Tensor Cores (CUDA), AMX (CPU) or an Apple/Intel matrix engine."""
        return self.supports("tensor_cores") == FAST

    def supports(self, feature: str) -> Level:
        """Level of ``feature`` on this device (one of :data:`LEVELS`)."""
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        return self.capabilities.get(feature, UNSUPPORTED)

    def is_fast(self, feature: str) -> bool:
        return self.supports(feature) == FAST

    def alignment_for(self, dtype: torch.dtype | str) -> int:
        """Multiple of elements that GEMM dims should have for ``dtype`` (1 = no preference)."""
        key = _dtype_key(dtype)
        return int(self.alignment.get(key, self.alignment.get("fp32", 1)))

    def fast_autocast_dtype(self) -> torch.dtype | None:
        """The low-precision dtype autocast should use here, or ``None`` if none is fast."""
        if self.kind == "cpu":
            return torch.bfloat16 if self.is_fast("bf16") else None
        if self.is_fast("bf16"):
            return torch.bfloat16
        if self.is_fast("fp16"):
            return torch.float16
        return None

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose (every field is a plain value or a flat dict): dataclasses.asdict
        # deep-copies and showed up in the callback's per-report cost.
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        data["isa"] = list(self.isa)
        data["notes"] = list(self.notes)
        data["capabilities"] = dict(self.capabilities)
        data["alignment"] = dict(self.alignment)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceProfile:
        data = dict(data)
        cc = data.get("compute_capability")
        data["compute_capability"] = tuple(cc) if cc else None
        data["isa"] = tuple(data.get("isa") or ())
        data["notes"] = tuple(data.get("notes") or ())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> DeviceProfile:
        return dataclasses.replace(self, **changes)

    # -- constructors ----------------------------------------------------------
    @classmethod
    def detect(cls, kind: DeviceKind | None = None) -> DeviceProfile:
        """Profile of this machine: the best accelerator present, else the CPU.

        ``kind="cpu"`` forces the host CPU profile even when a GPU is present.
        """
        if kind not in (None, *KINDS):
            raise ValueError(f"kind must be None or one of {KINDS}, got {kind!r}")
        if kind in (None, "cuda") and torch.cuda.is_available():
            return detect_cuda()
        if kind in (None, "mps") and _mps_available():
            return _detect_mps()
        if kind in (None, "xpu") and _xpu_available():
            return _detect_xpu()
        return _detect_cpu_once()

    @classmethod
    def preset(cls, name: str) -> DeviceProfile:
        """A built-in profile by forgiving name (``"A100"``, ``"nvidia-a100-sxm4-80gb"``).

        Raises:
            ValueError: for an unknown name; the message lists the known presets.
        """
        from perfcallbacks.presets import resolve_preset

        return resolve_preset(name)

    @classmethod
    def presets(cls) -> list[str]:
        """Keys of all built-in presets."""
        from perfcallbacks.presets import PRESETS

        return sorted(PRESETS)


def resolve_target(target: str | DeviceProfile | None, *, argument: str = "target") -> DeviceProfile | None:
    """Validate a ``target`` argument: ``None``, a preset name or a profile."""
    if target is None or isinstance(target, DeviceProfile):
        return target
    if isinstance(target, str):
        try:
            return DeviceProfile.preset(target)
        except ValueError as err:
            raise ValueError(f"{argument}: {err}") from None
    raise TypeError(
        f"{argument} must be None, a preset name (str) or a DeviceProfile, got {type(target).__name__}"
    )


def _dtype_key(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):
        return dtype
    return {
        torch.float32: "fp32",
        torch.float16: "fp16",
        torch.bfloat16: "bf16",
        torch.int8: "int8",
        torch.float64: "fp64",
    }.get(dtype, "fp32")


# -- CPU probing ----------------------------------------------------------------

def read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def cpu_isa(cpuinfo: str = "") -> tuple[str, ...]:
    """ISA features from torch's own probes, completed by ``/proc/cpuinfo`` flags."""
    found: set[str] = set()
    cpu = getattr(torch, "cpu", None)
    probes = {
        "avx2": "_is_avx2_supported",
        "avx512": "_is_avx512_supported",
        "avx512_vnni": "_is_vnni_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx": "_is_amx_tile_supported",
    }
    for feature, probe in probes.items():
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                found.add(feature)
        except Exception:  # probe missing on this build: fall back to flags
            pass
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    flag_map = {
        "avx2": "avx2",
        "avx512f": "avx512",
        "avx512_vnni": "avx512_vnni",
        "avx512_bf16": "avx512_bf16",
        "amx_tile": "amx",
        "asimd": "neon",
        "fma": "fma",
    }
    found.update(ours for flag, ours in flag_map.items() if flag in flags)
    if platform.machine().lower() in ("arm64", "aarch64"):
        found.add("neon")
    return tuple(sorted(found))


def cpu_core_counts(cpuinfo: str = "", affinity: set[int] | None = None) -> tuple[int, int]:
    """(physical, logical) cores usable by this process, honouring the affinity mask.

    Physical cores are the distinct (physical id, core id) pairs among the CPUs in
    the affinity mask; without topology in ``cpuinfo`` every logical CPU counts.
    """
    if affinity is None:
        try:
            affinity = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = set(range(os.cpu_count() or 1))
    logical = max(1, len(affinity))
    cores: set[tuple[str, str]] = set()
    processor = physical_id = core_id = None
    for line in (cpuinfo + "\n\n").splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processor = int(value) if value.isdigit() else None
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not line.strip():
            if processor is not None and processor in affinity and core_id is not None:
                cores.add((physical_id or "0", core_id))
            processor = physical_id = core_id = None
    physical = len(cores) if cores else logical
    return max(1, min(physical, logical)), logical


def _cpu_name(cpuinfo: str) -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine() or "cpu")


def cpu_capabilities(isa: tuple[str, ...] | set[str]) -> tuple[dict[str, Level], dict[str, int]]:
    """Capability levels and GEMM alignment of a CPU with these ISA features.

    Sources: Intel AMX/AVX-512 BF16 are the only x86 paths with native bf16
    matmuls (oneDNN docs); without them torch emulates bf16 through fp32
    conversions (measured here: 6.1x slower on AVX2). fbgemm's int8 GEMM
    (dynamic quantization) runs on AVX2 and gets VNNI's ``vpdpbusd`` on
    AVX-512 VNNI. A vector register holds 8 fp32 on AVX2 and 16 on AVX-512, so
    widths that are not such multiples need masked tails (measured here: width
    767 is 1.35-1.53x slower than 768).
    """
    isa = set(isa)
    amx = "amx" in isa
    native_bf16 = amx or "avx512_bf16" in isa
    x86 = bool(isa & {"avx2", "avx512"})
    caps: dict[str, Level] = {
        "fp16": SUPPORTED if amx else EMULATED,
        "bf16": FAST if native_bf16 else EMULATED,
        "tf32": UNSUPPORTED,
        "fp8": UNSUPPORTED,
        "tensor_cores": FAST if amx else UNSUPPORTED,
        "int8_dynamic": FAST if x86 else (SUPPORTED if "neon" in isa else UNSUPPORTED),
        "compile": SUPPORTED,
    }
    lanes = 16 if "avx512" in isa else 8 if "avx2" in isa else 4
    align = {"fp32": lanes, "fp16": lanes, "bf16": 2 * lanes if native_bf16 else lanes, "int8": 4 * lanes}
    if amx:
        # AMX tiles are 16 rows x 64 bytes: 32 bf16 / 64 int8 per row.
        align.update(bf16=32, int8=64, optimal=64)
    return caps, align


def detect_cpu(cpuinfo: str | None = None, affinity: set[int] | None = None) -> DeviceProfile:
    """Profile of the host CPU (inputs injectable for tests)."""
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    isa = cpu_isa(cpuinfo)
    physical, logical = cpu_core_counts(cpuinfo, affinity)
    caps, align = cpu_capabilities(isa)
    memory = _host_memory_gb()
    return DeviceProfile(
        kind="cpu",
        name=_cpu_name(cpuinfo),
        count=0,
        memory_gb=memory,
        physical_cores=physical,
        logical_cores=logical,
        isa=isa,
        capabilities=caps,
        alignment=align,
    )


@functools.lru_cache(maxsize=1)
def _detect_cpu_once() -> DeviceProfile:
    """The host CPU does not change within a process: probe it once (profiles are immutable)."""
    return detect_cpu()


def _host_memory_gb() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


# -- accelerators ---------------------------------------------------------------

def cuda_capabilities(cc: tuple[int, int]) -> tuple[dict[str, Level], dict[str, int]]:
    """Capability levels from the CUDA compute capability (fallback for unknown GPUs).

    Sources: NVIDIA CUDA C Programming Guide (compute capabilities table) and the
    architecture whitepapers: Tensor Cores from Volta (7.0); bf16 and TF32 from
    Ampere (8.0); FP8 from Ada (8.9) and Hopper (9.0). NVIDIA's "Matrix
    Multiplication Background" guide: Tensor Cores want fp16/bf16 dims in
    multiples of 8, int8 in multiples of 16, TF32 in multiples of 4; on A100
    and later, multiples of 64 fp16 elements (128 bytes) give the best tiles.
    """
    major, minor = cc
    tensor_cores = major >= 7
    ampere = major >= 8
    fp8 = cc >= (8, 9)
    caps: dict[str, Level] = {
        # Pascal P100 (6.0) has fast fp16; consumer Pascal/Maxwell run it at a fraction of fp32.
        "fp16": FAST if tensor_cores or cc in ((6, 0), (6, 2)) else SUPPORTED if major >= 6 else EMULATED,
        "bf16": FAST if ampere else EMULATED,
        "tf32": FAST if ampere else UNSUPPORTED,
        "fp8": FAST if fp8 else UNSUPPORTED,
        "tensor_cores": FAST if tensor_cores else UNSUPPORTED,
        "int8_dynamic": UNSUPPORTED,  # torch.ao dynamic quantization is a CPU path
        # Triton (torch.compile's GPU backend) needs compute capability >= 7.0.
        "compile": FAST if tensor_cores else UNSUPPORTED,
    }
    align = {"fp32": 1, "fp16": 8, "bf16": 8, "tf32": 4, "int8": 16, "fp8": 16}
    if not tensor_cores:
        align = {"fp32": 1}
    if ampere and not (major == 8 and minor in (6, 7, 9)):
        align["optimal"] = 64  # data-centre parts with large tiles (A100, H100)
    return caps, align


def detect_cuda(index: int | None = None) -> DeviceProfile:
    """Profile of the current CUDA device, matched to a preset when known."""
    index = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(index)
    cc = (props.major, props.minor)
    count = torch.cuda.device_count()
    physical, logical = cpu_core_counts(read_cpuinfo())
    from perfcallbacks.presets import match_preset

    known = match_preset(props.name)
    if known is not None:
        base = known
    else:
        caps, align = cuda_capabilities(cc)
        base = DeviceProfile(kind="cuda", name=props.name, capabilities=caps, alignment=align)
    return base.replace(
        name=props.name,
        count=count,
        compute_capability=cc,
        memory_gb=round(props.total_memory / 2**30, 1),
        physical_cores=physical,
        logical_cores=logical,
        isa=cpu_isa(read_cpuinfo()),
        source="detected",
    )


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def _xpu_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    try:
        return bool(xpu and xpu.is_available())
    except Exception:
        return False


def _detect_mps() -> DeviceProfile:
    from perfcallbacks.presets import PRESETS

    physical, logical = cpu_core_counts(read_cpuinfo())
    return PRESETS["apple-m"].replace(count=1, physical_cores=physical, logical_cores=logical, source="detected")


def _detect_xpu() -> DeviceProfile:
    physical, logical = cpu_core_counts(read_cpuinfo())
    name = torch.xpu.get_device_name(0)
    caps = {"fp16": FAST, "bf16": FAST, "tf32": SUPPORTED, "fp8": UNSUPPORTED, "tensor_cores": FAST,
            "int8_dynamic": UNSUPPORTED, "compile": SUPPORTED}
    return DeviceProfile(kind="xpu", name=name, count=torch.xpu.device_count(), physical_cores=physical,
                         logical_cores=logical, capabilities=caps,
                         alignment={"fp32": 1, "fp16": 8, "bf16": 8, "int8": 16})


def close_matches(word: str, choices: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Close matches for an error message (shared by presets, hint ids, CLI)."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
