"""What the GPU suite judges: a product claim, the number measured for it, and the verdict.

A :class:`Claim` is one line of the results table. Verdicts:

* ``pass`` / ``fail``: the measurement agrees / disagrees with what the product says;
* ``info``: measured, but the product states no number to hold it against
  (e.g. a hint whose ``impact`` is ``None``);
* ``skip``: not measured here (the hint id is not registered yet, one GPU only, out of budget);
* ``error``: the measurement itself raised (a defect of the suite or of the product).

Impacts are speedup factors (``1.5`` = the fix makes it 1.5x faster). "Within
±25%" compares the factors: ``|measured / claimed - 1| <= 0.25``.

Example::

    >>> from claims import impact_claim
    >>> impact_claim("dim-unaligned/767", "dim-unaligned", claimed=1.5, measured=1.4).verdict
    'pass'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("pass", "fail", "info", "skip", "error")
# The acceptance band for a hint's impact against the measured ratio.
IMPACT_TOLERANCE = 0.25
# Detected memory vs the preset's: GiB vs datasheet GB and driver reservations differ by a few %.
MEMORY_TOLERANCE = 0.05
# A precision is "fast" when its large GEMM beats the slower path by this much (see capability_claims).
FAST_MIN_SPEEDUP = {"bf16": 2.0, "tf32": 2.0, "fp8": 1.3}


@dataclass
class Claim:
    """One judged statement: ``claimed`` by the product, ``measured`` here."""

    id: str
    what: str
    verdict: str
    claimed: Any = None
    measured: Any = None
    note: str = ""
    hint: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Claim verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "what": self.what, "verdict": self.verdict, "claimed": _plain(self.claimed),
                "measured": _plain(self.measured), "note": self.note, "hint": self.hint,
                "details": _plain(self.details)}


def _plain(value: Any) -> Any:
    """JSON-safe: floats rounded to 4 significant digits, NaN/inf as None, tuples as lists."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.4g}")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def within(claimed: float, measured: float, tolerance: float = IMPACT_TOLERANCE) -> bool:
    """``measured`` lies within ``±tolerance`` of ``claimed`` (as factors)."""
    if not (isinstance(claimed, (int, float)) and isinstance(measured, (int, float))):
        return False
    if claimed <= 0 or not math.isfinite(claimed) or not math.isfinite(measured):
        return False
    return abs(measured / claimed - 1.0) <= tolerance


def impact_claim(claim_id: str, hint_id: str, *, claimed: float | None, measured: float, fired: bool = True,
                 tolerance: float = IMPACT_TOLERANCE, note: str = "", details: dict[str, Any] | None = None) -> Claim:
    """Judge a hint's ``impact`` against the slowdown measured side by side.

    ``fired=False`` (the hint stayed quiet): the product implies no gain, so a
    measured slowdown beyond the tolerance is a missed hint.
    """
    details = dict(details or {})
    if not fired:
        ok = within(1.0, measured, tolerance)
        return Claim(claim_id, f"{hint_id} quiet: measured slowdown within ±{tolerance:.0%} of 1.0",
                     "pass" if ok else "fail", claimed=1.0, measured=measured, hint=hint_id,
                     note=note or ("" if ok else "hint quiet, but the fix measurably pays"), details=details)
    if claimed is None:
        return Claim(claim_id, f"{hint_id} fired; measured slowdown (the hint states no impact)", "info",
                     claimed=None, measured=measured, hint=hint_id,
                     note=note or "the hint carries impact=None: nothing to hold the measurement against",
                     details=details)
    ok = within(claimed, measured, tolerance)
    return Claim(claim_id, f"{hint_id} impact vs measured slowdown, within ±{tolerance:.0%}",
                 "pass" if ok else "fail", claimed=claimed, measured=measured, hint=hint_id, note=note,
                 details=details)


def agreement_claim(claim_id: str, what: str, *, claimed: float | None, measured: float,
                    tolerance: float = IMPACT_TOLERANCE, note: str = "", hint: str | None = None,
                    details: dict[str, Any] | None = None) -> Claim:
    """A number the product measured itself (a guard's speedup, a probe's latency) against ours, within ±tolerance."""
    ok = claimed is not None and within(claimed, measured, tolerance)
    return Claim(claim_id, f"{what}, within ±{tolerance:.0%}", "pass" if ok else "fail", claimed=claimed,
                 measured=measured, note=note, hint=hint, details=dict(details or {}))


def fires_claim(claim_id: str, hint_id: str, *, expected: bool, fired: bool, evidence: dict[str, Any] | None = None,
                note: str = "") -> Claim:
    """Judge whether a hint fired (``expected=True``) or stayed quiet (``expected=False``)."""
    what = f"{hint_id} {'fires' if expected else 'stays quiet'}"
    return Claim(claim_id, what, "pass" if fired == expected else "fail", claimed=expected, measured=fired,
                 hint=hint_id, note=note, details={"evidence": evidence} if evidence else {})


def skipped(claim_id: str, what: str, reason: str, hint: str | None = None) -> Claim:
    return Claim(claim_id, what, "skip", note=reason, hint=hint)


def compare_profiles(detected: Any, preset: Any, *, memory_tolerance: float = MEMORY_TOLERANCE) -> list[Claim]:
    """``DeviceProfile.detect()`` of the GPU at hand against its built-in preset, field by field.

    Compared: the preset the name resolves to, compute capability, memory (±5%),
    and the levels of bf16, fp8, tf32 and Tensor Cores. ``preset`` is ``None``
    when the name matches no preset (the device needs one).
    """
    if preset is None:
        return [Claim("device/preset", "the detected device name resolves to a preset", "fail",
                      claimed="a preset", measured=detected.name,
                      note="no preset matches this GPU: add one to perfcallbacks/presets.py")]
    claims = [Claim("device/preset", "the detected device name resolves to a preset", "pass",
                    claimed=preset.source, measured=detected.name)]
    cc_ok = tuple(detected.compute_capability or ()) == tuple(preset.compute_capability or ())
    claims.append(Claim("device/capability", "compute capability: detected vs preset", "pass" if cc_ok else "fail",
                        claimed=list(preset.compute_capability or ()),
                        measured=list(detected.compute_capability or ())))
    mem_ok = bool(preset.memory_gb and detected.memory_gb
                  and within(preset.memory_gb, detected.memory_gb, memory_tolerance))
    claims.append(Claim("device/memory", f"memory (GiB): detected vs preset, within ±{memory_tolerance:.0%}",
                        "pass" if mem_ok else "fail", claimed=preset.memory_gb, measured=detected.memory_gb))
    for feature in ("bf16", "fp8", "tf32", "tensor_cores"):
        a, b = preset.supports(feature), detected.supports(feature)
        claims.append(Claim(f"device/{feature}", f"{feature} level: detected vs preset", "pass" if a == b else "fail",
                            claimed=a, measured=b))
    return claims


def capability_claims(profile: Any, probed: dict[str, Any]) -> list[Claim]:
    """The profile's precision levels against what the hardware showed.

    ``probed`` keys (each optional): ``bf16_supported`` (``torch.cuda.is_bf16_supported()``),
    ``bf16_over_fp32`` (GEMM speedup of bf16 over strict fp32), ``tf32_over_fp32``,
    ``fp8_runs`` (a scaled fp8 GEMM ran), ``fp8_over_bf16`` (its speedup over bf16).
    A level of ``fast`` needs the measured speedup over the slower path to reach ``FAST_MIN_SPEEDUP``
    (bf16/tf32 over strict fp32: 2x, Tensor Cores give 7-15x on large GEMMs; fp8 over bf16: 1.3x, peak 2x).
    """
    claims: list[Claim] = []

    def judge(cid: str, feature: str, speed_key: str | None, runs_key: str | None) -> None:
        fast_min = FAST_MIN_SPEEDUP[feature]
        level = profile.supports(feature)
        runs = probed.get(runs_key) if runs_key else None
        speed = probed.get(speed_key) if speed_key else None
        if runs is None and speed is None:
            claims.append(skipped(cid, f"{feature} level vs hardware", "not probed"))
            return
        if level == "fast":
            ok = (runs is not False) and (speed is None or speed >= fast_min)
        elif level in ("unsupported", "emulated"):
            ok = runs is not True or (speed is not None and speed < 1.0)
        else:
            ok = runs is not False
        claims.append(Claim(cid, f"{feature} level '{level}' vs hardware (fast = runs and >= {fast_min}x)",
                            "pass" if ok else "fail", claimed=level,
                            measured={"runs": runs, "speedup": speed}))

    judge("device/bf16-hw", "bf16", "bf16_over_fp32", "bf16_supported")
    judge("device/tf32-hw", "tf32", "tf32_over_fp32", None)
    judge("device/fp8-hw", "fp8", "fp8_over_bf16", "fp8_runs")
    return claims


def counts(claims: list[Claim]) -> dict[str, int]:
    """Claims per verdict (every verdict present, zeros included)."""
    out = dict.fromkeys(VERDICTS, 0)
    for claim in claims:
        out[claim.verdict] += 1
    return out
