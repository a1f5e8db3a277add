"""Typed run facts: what the checks read, built once per phase before they run.

The adapters and probes collect into plain dicts (``RunContext.settings``,
``RunContext.measurements``: their producers write them at different moments,
and probe results stay plain JSON-able data). :func:`collect_run_facts`
reads those dicts and the live model exactly once per phase and turns them into
the frozen records below; a check reads only ``ctx.facts`` and never a dict key
or an ``nn.Module``. The keys are parsed here and nowhere else, so a renamed key
is one edit and a malformed value becomes "unknown" (``None``), never a crash in
a check.

A test builds facts in one line and calls a check directly::

    ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"), phase="inference")
    ctx.facts = RunFacts(measured=Measurements(grad_overhead=1.3))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from perfcallbacks.model_facts import ModelFacts

if TYPE_CHECKING:
    from perfcallbacks.context import RunContext

T = TypeVar("T")


def _number(value: Any) -> float | None:
    """A real number (not a bool), else ``None``."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _latencies(raw: Any) -> dict[int, float]:
    """``{"8": 0.01, ...}`` -> ``{8: 0.01}``, dropping keys and values that are not positive numbers."""
    out: dict[int, float] = {}
    for key, value in (raw.items() if isinstance(raw, Mapping) else ()):
        try:
            size, seconds = int(key), float(value)
        except (TypeError, ValueError):
            continue
        if size > 0 and seconds > 0:
            out[size] = seconds
    return out


# -- framework settings --------------------------------------------------------------------------
@dataclass(frozen=True)
class HFSettings:
    """What the HF adapter (:func:`perfcallbacks.adapters.hf.hf_settings`) reports that a check reads."""

    task: str | None = None  # "sequence-classification", ... (smaller-model-available)
    collator: str | None = None  # qualified class name of the data collator (padding checks)
    pad_to_multiple_of: int | None = None  # the collator's (alignment and padding checks)
    tokenizer_padding: str | None = None  # "max_length" / "longest" / "do_not_pad"
    sampling_strategy: str | None = None  # "group_by_length", "random", ...
    grad_accumulation: int | None = None  # TrainingArguments.gradient_accumulation_steps

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> HFSettings:
        multiple = raw.get("pad_to_multiple_of")
        accumulation = raw.get("grad_accumulation")
        return cls(task=_text(raw.get("task")), collator=_text(raw.get("collator")),
                   pad_to_multiple_of=multiple if isinstance(multiple, int) and not isinstance(multiple, bool)
                   else None,
                   tokenizer_padding=_text(raw.get("tokenizer_padding")),
                   sampling_strategy=_text(raw.get("sampling_strategy")),
                   grad_accumulation=int(accumulation) if _number(accumulation) else None)


@dataclass(frozen=True)
class LightningSettings:
    """What the Lightning adapter reports (``settings["lightning"]``) that a check reads."""

    accumulate_grad_batches: int | None = None

    @classmethod
    def from_raw(cls, raw: Any) -> LightningSettings:
        value = raw.get("accumulate_grad_batches") if isinstance(raw, Mapping) else None
        return cls(accumulate_grad_batches=int(value) if _number(value) else None)


# -- measurements (typed probe results) ----------------------------------------------------------
@dataclass(frozen=True)
class ThreadsMeasure:
    """The thread sweep (``probes.probe_threads`` or the threads fix): median latency per count."""

    current: int | None = None
    latency_s: dict[int, float] = field(default_factory=dict)
    dropped: Any = None  # counts dropped as implausible, as the probe reported them


@dataclass(frozen=True)
class Int8Measure:
    """int8 dynamic quantization measured against fp32: by the probe, or the guarded fix on the job."""

    speedup: float | None = None
    fidelity: dict[str, Any] | None = None
    status: str | None = None  # what the guard decided ("applied", "rejected", ...)
    source: str | None = None  # "probe" (measured only) or "fix" (measured on the job)


@dataclass(frozen=True)
class BatchScaling:
    """Forward latency of the observed batch repeated 1x, 2x, 4x (``probes.probe_batch_scaling``)."""

    batch_size: int = 0  # the observed batch size (the smallest timed one when the probe did not say)
    latency_s: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Measurements:
    """Typed results of the probes (and of a fix measured on the job). ``None`` = not measured."""

    threads: ThreadsMeasure | None = None
    int8: Int8Measure | None = None
    autocast_speedup: float | None = None
    grad_overhead: float | None = None  # forward with autograd / under inference_mode
    batch_scaling: BatchScaling | None = None
    h2d_copy_s: float | None = None  # seconds per step copying the batch host -> device

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Measurements:
        """Parse what :func:`perfcallbacks.probes.run_inference_probes`, the Advisor and adapters wrote."""
        return cls(threads=_threads(raw.get("threads")), int8=_int8(raw.get("int8")),
                   autocast_speedup=_speedup(raw.get("autocast")), grad_overhead=_number(raw.get("grad_overhead")),
                   batch_scaling=_batch_scaling(raw.get("batch_scaling")), h2d_copy_s=_number(raw.get("h2d_copy_s")))


def _speedup(value: Any) -> float | None:
    """A measured speedup: a positive number, or a dict's ``"speedup"``."""
    if isinstance(value, Mapping):
        value = value.get("speedup")
    number = _number(value)
    return float(number) if number is not None and number > 0 else None


def _threads(raw: Any) -> ThreadsMeasure | None:
    if not isinstance(raw, Mapping):
        return None
    current = raw.get("current")
    return ThreadsMeasure(current=current if isinstance(current, int) and not isinstance(current, bool) else None,
                          latency_s=_latencies(raw.get("latency_s")), dropped=raw.get("dropped"))


def _int8(raw: Any) -> Int8Measure | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        return Int8Measure(speedup=_speedup(raw))
    fidelity = raw.get("fidelity")
    return Int8Measure(speedup=_speedup(raw), fidelity=dict(fidelity) if isinstance(fidelity, Mapping) else fidelity,
                       status=_text(raw.get("status")), source=_text(raw.get("source")))


def _batch_scaling(raw: Any) -> BatchScaling | None:
    if not isinstance(raw, Mapping):
        return None
    latency = _latencies(raw.get("latency_s"))
    try:
        base = int(raw.get("batch_size") or (min(latency) if latency else 0))
    except (TypeError, ValueError):
        base = 0
    return BatchScaling(batch_size=base, latency_s=latency)


# -- all of it -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFacts:
    """Everything a check reads besides the plain ``RunContext`` fields and its typed sub-records."""

    model: ModelFacts = field(default_factory=ModelFacts)
    hf: HFSettings = field(default_factory=HFSettings)
    lightning: LightningSettings = field(default_factory=LightningSettings)
    measured: Measurements = field(default_factory=Measurements)
    transformers_version: str | None = None  # the HF adapter's setting, else the installed package's


@functools.lru_cache(maxsize=None)
def installed_version(package: str) -> str | None:
    """The installed distribution's version, or ``None`` when it is not installed (read once per process)."""
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # not installed (or broken metadata): version-specific advice falls back
        return None


def collect_run_facts(ctx: RunContext, on_error: Callable[[str, Exception], None] | None = None) -> RunFacts:
    """Read the model, the settings and the measurements once, for this phase's checks.

    Each part is read on its own: one that raises (an odd model, a malformed setting) is reported to
    ``on_error`` and left "unknown", so the checks that do not need it still see the others.
    """
    def part(name: str, read: Callable[[], T], default: T) -> T:
        try:
            return read()
        except Exception as err:  # principle 1: a fact we cannot read is unknown, never a crash
            if on_error is not None:
                on_error(name, err)
            return default

    version = part("transformers_version", lambda: _text(ctx.settings.get("transformers_version"))
                   or installed_version("transformers"), None)
    return RunFacts(model=part("model", lambda: ModelFacts.of(ctx.model), ModelFacts()),
                    hf=part("hf", lambda: HFSettings.from_raw(ctx.settings), HFSettings()),
                    lightning=part("lightning", lambda: LightningSettings.from_raw(ctx.settings.get("lightning")),
                                   LightningSettings()),
                    measured=part("measured", lambda: Measurements.from_raw(ctx.measurements), Measurements()),
                    transformers_version=version)
