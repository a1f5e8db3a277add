"""The fix pipeline: every guarded inference fix is judged the same way, on the user's own job.

One :class:`GuardedCalls` object stands in for the method the framework calls once per batch
(Lightning's ``predict_step``, the HF model's ``forward``, a plain model's ``__call__``). On the
first call it runs the user's method (timed) and plans: the job is ``first call's time x calls
expected``; a fix is measured only when its expected cost is a small share of that
(``Options.guard_budget``, default 10%), else it is ``skipped`` with the numbers. While a fix is
on trial the user's own method answers every call and the candidate runs on the same inputs as a
shadow: speed is the median of these paired, interleaved timings (the job's real spread of shapes
and first-call costs included) and fidelity is judged on every row seen, with a statistical bound
rather than a point estimate. Once decided, an applied candidate answers the remaining calls; the
user's module is never modified.

Decisions are reused: in this process for the same model structure and unchanged weights (the
candidate itself is kept), and across processes through :mod:`perfcallbacks.fixes.cache` (the
candidate is rebuilt from its ``params`` without measuring; changed weights mean fidelity is
verified again on the first call).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes.candidate import Candidate
from perfcallbacks.fixes.ranks import RankGroup, shortest_job
from perfcallbacks.measure import Synchronizer, device_of, device_synchronizer, output_kind, output_tensor, padding_mask
from perfcallbacks.report import FixResult

log = logging.getLogger("perfcallbacks.fixes")

# One-sided 95% normal quantile: the bounds below are "at least this, with 95% confidence".
Z95 = 1.645
MARGIN = 0.05  # a fix must be at least 5% faster at its slow end
MIN_CALLS = 2  # paired timings before a speed decision
# A candidate's first call is cold (allocations, oneDNN primitives, lazy init): channels-last read 0.54-0.79x on
# it against 1.09x steady. Once MIN_CALLS later (warm) samples exist, speed is judged on those alone; before, on
# all samples, which can only make a fix look slower (a cold call never applies a fix, it can delay one).
COLD_CALLS = 1
MAX_CALLS = 6  # give up on an undecided fix after this many shadow calls
MIN_ROWS = 16  # rows before a cosine bound is trusted
# Our own bookkeeping per shadow call (fidelity maths), as a share of the call: part of the estimate.
_BOOKKEEPING = 0.05


# -- statistics ---------------------------------------------------------------------------------------
def wilson_lower(successes: int, trials: int, z: float = Z95) -> float:
    """One-sided lower confidence bound of a proportion (Wilson score interval).

    Zero disagreements in 32 rows is consistent with a true agreement of 0.92:

    Example::

        >>> round(wilson_lower(32, 32), 3), round(wilson_lower(300, 300), 3)
        (0.922, 0.991)
    """
    if trials <= 0:
        return 0.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - spread) / denom)


def rows_for_agreement(tolerance: float, z: float = Z95) -> int:
    """Rows (all agreeing) needed before the Wilson bound reaches ``tolerance``.

    Example::

        >>> rows_for_agreement(0.99)
        268
    """
    if tolerance <= 0:
        return 1
    if tolerance >= 1:
        return 10**9
    return math.ceil(z * z * tolerance / (1 - tolerance))


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (``q`` in [0, 1]) of a non-empty sequence.

    Example::

        >>> quantile([1.0, 2.0, 3.0, 4.0], 0.25)
        1.75
    """
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Evidence:
    """Fidelity and speed seen so far for one candidate, over the job's own calls."""

    cosines: list[float] = field(default_factory=list)
    agree: int = 0
    compared: int = 0  # positions whose argmax / label was compared
    max_abs: float = 0.0
    ratios: list[float] = field(default_factory=list)  # reference time / candidate time, per call
    dropped: list[float] = field(default_factory=list)  # implausible ratios (measurement errors)
    shape_mismatch: bool = False

    @property
    def rows(self) -> int:
        return max(len(self.cosines), self.compared)

    def add_outputs(self, ref: Any, new: Any, batch: Any, owner: nn.Module | None) -> None:
        ref_t, new_t = output_tensor(ref).detach(), output_tensor(new).detach()
        if ref_t.shape != new_t.shape:
            self.shape_mismatch = True
            return
        if not ref_t.is_floating_point():  # predicted labels / ids: exact agreement per element
            same = (ref_t == new_t).reshape(-1)
            self.agree += int(same.sum())
            self.compared += int(same.numel())
            return
        ref_f, new_f = ref_t.to("cpu", torch.float64), new_t.to("cpu", torch.float64)
        mask = padding_mask(batch, ref_t)
        keep = None
        if mask is not None:
            keep = mask.to("cpu").bool()
            expand = keep.reshape(*keep.shape, *([1] * (ref_f.dim() - keep.dim())))
            ref_f, new_f = ref_f * expand, new_f * expand
        a = ref_f.reshape(1, -1) if ref_f.dim() <= 1 else ref_f.reshape(ref_f.shape[0], -1)
        b = new_f.reshape(1, -1) if new_f.dim() <= 1 else new_f.reshape(new_f.shape[0], -1)
        both_zero = (a.norm(dim=1) == 0) & (b.norm(dim=1) == 0)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).clamp(-1, 1)
        cos = torch.where(both_zero, torch.ones_like(cos), cos)
        self.cosines.extend(float(c) for c in cos)
        if a.numel():
            self.max_abs = max(self.max_abs, float((a - b).abs().max()))
        if output_kind(ref, owner) == "scores" and ref_t.dim() >= 1 and ref_t.shape[-1] > 1:
            same = ref_t.float().argmax(-1) == new_t.float().argmax(-1)
            if keep is not None and tuple(same.shape) == tuple(keep.shape):
                same = same.cpu()[keep]
            self.agree += int(same.sum())
            self.compared += int(same.numel())

    def fidelity(self) -> dict[str, float]:
        out: dict[str, float] = {"rows": float(self.rows)}
        if self.cosines:
            n = len(self.cosines)
            mean = statistics.fmean(self.cosines)
            sd = statistics.stdev(self.cosines) if n > 1 else 0.0
            out.update(cosine_mean=mean, cosine_min=min(self.cosines),
                       cosine_mean_lower95=mean - Z95 * sd / math.sqrt(n) if n > 1 else mean,
                       max_abs_error=self.max_abs)
        if self.compared:
            out.update(argmax_agreement=self.agree / self.compared,
                       agreement_lower95=wilson_lower(self.agree, self.compared),
                       compared=float(self.compared))
        return out

    def speed(self) -> dict[str, float] | None:
        """Speed so far: on the warm samples once there are :data:`MIN_CALLS` of them (``warm`` = 1.0), else
        on all, the candidate's cold first call included (it can only make the fix look slower)."""
        if not self.ratios:
            return None
        warm = self.ratios[COLD_CALLS:]
        samples = warm if len(warm) >= MIN_CALLS else self.ratios
        return {"median": statistics.median(samples), "slow_end": quantile(samples, 0.25),
                "min": min(samples), "max": max(samples), "calls": float(len(samples)),
                "warm": float(len(warm) >= MIN_CALLS)}


def judge_fidelity(ev: Evidence, tol: Any) -> tuple[list[str], list[str]]:
    """``(violations, missing)``: limits the evidence breaks, and claims it cannot support yet."""
    if ev.shape_mismatch:
        return ["output shape differs from the original's"], []
    fid = ev.fidelity()
    bad: list[str] = []
    missing: list[str] = []
    if ev.cosines:
        if tol.cosine_mean is not None and fid["cosine_mean"] < tol.cosine_mean:
            bad.append(f"cosine mean {fid['cosine_mean']:.4f} < {tol.cosine_mean}")
        elif tol.cosine_mean is not None and (len(ev.cosines) < MIN_ROWS
                                              or fid["cosine_mean_lower95"] < tol.cosine_mean):
            missing.append(f"cosine mean lower bound {fid['cosine_mean_lower95']:.4f} on {len(ev.cosines)} rows "
                           f"< {tol.cosine_mean}")
        if tol.cosine_min is not None and fid["cosine_min"] < tol.cosine_min:
            bad.append(f"cosine min {fid['cosine_min']:.4f} < {tol.cosine_min}")
        if tol.max_abs_error is not None and fid["max_abs_error"] > tol.max_abs_error:
            bad.append(f"max abs error {fid['max_abs_error']:.3g} > {tol.max_abs_error}")
    if ev.compared and tol.argmax_agreement is not None:
        if fid["argmax_agreement"] < tol.argmax_agreement:
            bad.append(f"agreement {fid['argmax_agreement']:.4f} on {ev.compared} rows < {tol.argmax_agreement}")
        elif fid["agreement_lower95"] < tol.argmax_agreement:
            missing.append(f"agreement lower bound {fid['agreement_lower95']:.4f} on {ev.compared} rows "
                           f"< {tol.argmax_agreement} (needs ~{rows_for_agreement(tol.argmax_agreement)} rows)")
    if not ev.cosines and not ev.compared:
        missing.append("no comparable output rows yet")
    return bad, missing


# -- which fixes exist ------------------------------------------------------------------------------
Builder = Callable[[nn.Module, Any, Any, "dict[str, Any] | None"], "Candidate | FixResult"]


@dataclass(frozen=True)
class FixSpec:
    """One guarded inference fix as the pipeline sees it.

    Args:
        fix_id: the report id.
        stages: where it may run (``"validate"``, ``"test"``, ``"predict"``).
        build: ``build(model, batch, profile, params) -> Candidate | FixResult``; ``params`` from a cached
            decision (rebuild exactly that, no measuring) or ``None``.
        plausible_max: a measured speedup above this is a measurement error, not a result.
        exclusive_with: fixes this one does not combine with (the first applied wins).
        applies: ``applies(model, profile) -> reason | None``, a cheap test before any measuring.
        quiet_when_not_applicable: leave a fix that does not apply out of the report.
    """

    fix_id: str
    stages: tuple[str, ...]
    build: Builder
    plausible_max: float = 4.0
    exclusive_with: tuple[str, ...] = ()
    # Cheap structural test before any measuring: a reason it does not apply, or None.
    applies: Callable[[nn.Module, Any], str | None] | None = None
    # The tolerance its candidates keep (planning: how many rows a fidelity claim needs).
    tolerance: Any = None
    # Not applicable -> leave it out of the report (a Linear model has no conv layout to change).
    quiet_when_not_applicable: bool = False


def _build_int8(model: nn.Module, batch: Any, profile: Any, params: dict[str, Any] | None) -> Candidate | FixResult:
    from perfcallbacks.fixes.quantize import int8_candidate

    if params:
        return int8_candidate(model, batch, backend=params.get("backend", "auto"),
                              fp32_layers=params.get("fp32_layers"))
    return int8_candidate(model, batch)


def _build_autocast(model: nn.Module, batch: Any, profile: Any, params: dict[str, Any] | None) -> Candidate | FixResult:
    import functools

    device = device_of(model, batch)
    dtype = profile.fast_autocast_dtype() if profile is not None else None
    if dtype is None:
        return FixResult("autocast", "skipped", f"{getattr(profile, 'name', device.type)} has no fast "
                         "low-precision dtype for autocast (it would be emulated)")
    if not torch.amp.is_autocast_available(device.type):
        return FixResult("autocast", "skipped", f"autocast is not available on {device.type}")
    from perfcallbacks.fixes._guard import Tolerance

    name = str(dtype).replace("torch.", "")
    return Candidate("autocast", model, tolerance=Tolerance(),
                     context=functools.partial(torch.autocast, device_type=device.type, dtype=dtype),
                     details={"dtype": name, "device_type": device.type}, params={"dtype": name})


def _optional_builder(module: str, name: str, fix_id: str) -> Builder:
    """A builder from a fix module that may not exist in this build (skipped, never a crash)."""

    def build(model: nn.Module, batch: Any, profile: Any, params: dict[str, Any] | None) -> Candidate | FixResult:
        import importlib

        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            return FixResult(fix_id, "skipped", f"fix not available: {err}")
        return fn(model, batch, profile=profile)

    return build


def _has_conv2d(model: nn.Module, profile: Any) -> str | None:
    return None if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "no Conv2d layer"


def _has_eager_attention(model: nn.Module, profile: Any) -> str | None:
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) == "eager":
            return None
    return "no HF attention in eager mode"


def _int8_applies(model: nn.Module, profile: Any) -> str | None:
    from perfcallbacks.fixes.quantize import _skip_reason

    return _skip_reason(model)


def _autocast_applies(model: nn.Module, profile: Any) -> str | None:
    dtype = profile.fast_autocast_dtype() if profile is not None else None
    if dtype is None:
        return f"{getattr(profile, 'name', 'this device')} has no fast low-precision dtype (it would be emulated)"
    if device_of(model).type == "cpu" and dtype == torch.float16:
        return "fp16 autocast on a CPU is emulated"
    return None


INFERENCE = ("validate", "test", "predict")
FIXES: tuple[FixSpec, ...] = (
    FixSpec("sdpa", INFERENCE, _optional_builder("perfcallbacks.fixes.sdpa", "sdpa_candidate", "sdpa"),
            applies=_has_eager_attention, quiet_when_not_applicable=True),
    FixSpec("channels-last", INFERENCE,
            _optional_builder("perfcallbacks.fixes.channels_last", "channels_last_candidate", "channels-last"),
            applies=_has_conv2d, quiet_when_not_applicable=True),
    FixSpec("dynamic-quantization", ("predict",), _build_int8, exclusive_with=("autocast",), applies=_int8_applies),
    FixSpec("autocast", INFERENCE, _build_autocast, plausible_max=8.0, exclusive_with=("dynamic-quantization",),
            applies=_autocast_applies),
)


# -- decision reuse -----------------------------------------------------------------------------------
# In this process: key -> {"decision": dict, "candidate": Candidate | None, "weights": str}.
_MEMO: dict[str, dict[str, Any]] = {}


def _key_parts(owner: nn.Module, spec: FixSpec, profile: Any, batch: Any,
               owner_facts: dict[str, Any] | None = None) -> tuple[str, str] | None:
    """``(decision key, weights fingerprint)``, or ``None`` when the cache module is unavailable.

    ``owner_facts`` keeps the owner's signature, dtype and weights fingerprint between the fixes of one
    stage (weights do not change inside a stage; each costs a walk over the model's tensors)."""
    try:
        from perfcallbacks.context import dominant_param_dtype
        from perfcallbacks.fixes.cache import decision_key, model_signature, shape_bucket, weights_fingerprint
        from perfcallbacks.observe import batch_stats

        facts = owner_facts if owner_facts is not None else {}
        if not facts:
            facts.update(signature=model_signature(owner), dtype=dominant_param_dtype(owner),
                         weights=weights_fingerprint(owner))
        stats = batch_stats(batch)
        device = profile.to_dict() if hasattr(profile, "to_dict") else str(profile)
        device = {k: device.get(k) for k in ("kind", "name", "count", "capability", "isa")} if isinstance(device, dict) \
            else device
        key = decision_key(fix_id=spec.fix_id, model_signature=facts["signature"], dtype=facts["dtype"],
                           device=device, torch_version=torch.__version__, threads=torch.get_num_threads(),
                           bucket=shape_bucket(stats.batch_size if stats else None, stats.seq_len if stats else None))
        return key, facts["weights"]
    except Exception:  # no key: measure as if cold
        log.debug("perfcallbacks: no decision key", exc_info=True)
        return None


def clear_memo() -> None:
    """Forget the in-process decisions (tests; or after you changed the model in ways we cannot see)."""
    _MEMO.clear()


# -- the call wrapper ----------------------------------------------------------------------------------
@dataclass
class _Trial:
    spec: FixSpec
    candidate: Candidate
    evidence: Evidence = field(default_factory=Evidence)
    cost_s: float = 0.0
    key: str | None = None
    weights: str | None = None
    verify_only: bool = False  # a reused decision: fidelity is checked, speed is not re-measured
    reused: dict[str, Any] | None = None
    refinements: int = 0
    planned_calls: int = MIN_CALLS  # shadow calls the budget was planned for (the fidelity claim's rows)
    calls_shadowed: int = 0  # calls the user's method answered during the trial, refinements included
    candidate_s: list[float] = field(default_factory=list)  # the current candidate's call times (budgeting)


class GuardedCalls:
    """Stands in for the per-batch method of ``owner`` during one inference stage and decides the fixes.

    Args:
        owner: the module whose per-batch method is guarded (a LightningModule, an HF model, a plain model).
        method: the method name the framework calls per batch (``"predict_step"``, ``"forward"``, ``"__call__"``).
        stage: ``"validate"`` / ``"test"`` / ``"predict"``.
        profile: the local :class:`~perfcallbacks.device.DeviceProfile` (what the fixes run on).
        expected_calls: calls the job will make (the loader's ``len``), ``None`` when unknown.
        record: called with every :class:`FixResult` as it is decided.
        batch_of: ``batch_of(args, kwargs)`` -> the batch inside a call's arguments.
        with_batch: ``with_batch(args, kwargs, new_batch)`` -> ``(args, kwargs)`` with the batch replaced.
        guard_budget: share of the estimated job the measuring may cost.
        cache: a :class:`~perfcallbacks.fixes.cache.DecisionCache` (``None`` = no on-disk reuse).
        specs: the fixes to consider (default: all of :data:`FIXES` allowed in ``stage``).
        original: the user's callable when the caller routes calls itself (nothing is patched).
        clock / sync: the timer and the device synchroniser (tests inject them).
        observe: called with each call's batch (the plain loop's view of its inference batches).
        ranks: a :class:`~perfcallbacks.fixes.ranks.RankGroup` under several processes: rank zero
            measures, the others follow its decision (every rank must build its GuardedCalls, since
            the constructor and each call of the trial window are collectives).

    Example::

        >>> import torch
        >>> from perfcallbacks import DeviceProfile
        >>> from perfcallbacks.fixes.pipeline import GuardedCalls
        >>> model = torch.nn.Linear(4, 2)
        >>> results = []
        >>> guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(),
        ...                      expected_calls=2, record=results.append, cache=None)
        >>> out = guard(torch.randn(3, 4)); out.shape          # a 2-call job: measuring would not pay
        torch.Size([3, 2])
        >>> {r.status for r in guard.finish()}
        {'skipped'}
    """

    def __init__(self, owner: nn.Module, method: str, *, stage: str, profile: Any, expected_calls: int | None,
                 record: Callable[[FixResult], Any], batch_of: Callable[[tuple, dict], Any] | None = None,
                 with_batch: Callable[[tuple, dict, Any], tuple[tuple, dict]] | None = None,
                 guard_budget: float = 0.10, cache: Any = None, specs: Sequence[FixSpec] | None = None,
                 original: Callable[..., Any] | None = None, clock: Callable[[], float] = time.perf_counter,
                 sync: Synchronizer | None = None, observe: Callable[[Any], Any] | None = None,
                 ranks: RankGroup | None = None) -> None:
        self.owner = owner
        self.method = method
        self.stage = stage
        self.profile = profile
        self.expected_calls = expected_calls if expected_calls is None or expected_calls > 0 else None
        self.record = record
        self.batch_of = batch_of or _first_arg
        self.with_batch = with_batch or _replace_first_arg
        self.guard_budget = float(guard_budget)
        self.cache = cache
        self.original = original if original is not None else getattr(owner, method)
        # Look like the method we stand in for: frameworks read its signature (HF drops dataset columns
        # that forward() does not accept).
        self.__wrapped__ = self.original
        for attr in ("__name__", "__qualname__", "__doc__"):
            try:
                setattr(self, attr, getattr(self.original, attr))
            except (AttributeError, TypeError):
                pass
        self.clock = clock
        self._sync = sync if sync is not None else device_synchronizer(device_of(owner))
        self.observe = observe  # a plain loop's batches reach the inference checks through here
        self.calls = 0
        self.first_call_s: float | None = None
        self.active: Candidate | None = None  # the applied candidate answering calls
        self.trial: _Trial | None = None
        self.results: list[FixResult] = []
        self.cost_s = 0.0
        self._installed = False
        self.specs = self._applicable([s for s in (FIXES if specs is None else specs) if stage in s.stages])
        self.pending = list(self.specs)
        self._owner_facts: dict[str, Any] = {}  # the owner's key parts, computed once per stage
        self.ranks = ranks
        self._share_until: int | None = None  # last call of the window in which rank zero's decision is shared
        if ranks is not None:
            self._plan_sharing(ranks)

    def _plan_sharing(self, ranks: RankGroup) -> None:
        """Collective: the window is the shortest rank's job; only rank zero measures."""
        try:
            window = shortest_job(ranks, self.expected_calls)
        except Exception:  # principle 1: a broken group means no sharing, never an error in the user's stage
            log.debug("perfcallbacks: could not plan the shared decision", exc_info=True)
            self._conclude_all("skipped", "the ranks could not agree on a trial window: no rank measures")
            return
        if not window:
            self._conclude_all("skipped", f"a rank of {ranks.world_size} does not know its job's length (a loader "
                               "without len): the decision could not be shared, so no rank measures")
            return
        self._share_until = window
        if ranks.rank != 0:
            self.pending = []  # this rank follows rank zero's decision

    def _applicable(self, specs: list[FixSpec]) -> list[FixSpec]:
        keep = []
        for spec in specs:
            try:
                reason = spec.applies(self.owner, self.profile) if spec.applies else None
            except Exception as err:  # principle 1
                reason = f"could not inspect the model: {type(err).__name__}: {err}"
            if reason is None:
                keep.append(spec)
            elif not spec.quiet_when_not_applicable:
                self._record(FixResult(spec.fix_id, "skipped", reason), 0.0)
        return keep

    # -- installing on the owner (instance attribute shadows the class method) ---------------------
    def install(self) -> GuardedCalls:
        if self.method in vars(self.owner):  # already patched by someone else: leave it alone
            self._conclude_all("skipped", f"{type(self.owner).__name__}.{self.method} is already wrapped")
            return self
        setattr(self.owner, self.method, self)
        self._installed = True
        return self

    def uninstall(self) -> None:
        if self._installed:
            try:
                delattr(self.owner, self.method)
            except AttributeError:
                pass
            self._installed = False

    def finish(self) -> list[FixResult]:
        """Stage over: conclude what is still undecided, take the wrapper off. Returns every result."""
        self.uninstall()
        if self.trial is not None:
            self._conclude_trial(final=True)
        if self.pending:
            calls = self.calls
            self._conclude_all("skipped", f"the job ended after {calls} call(s) before this fix could be measured")
        return list(self.results)

    # -- one framework call ----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.observe is not None:
            try:
                self.observe(self.batch_of(args, kwargs))
            except Exception:  # principle 1
                log.debug("perfcallbacks: could not observe a call", exc_info=True)
        try:
            if self.trial is None and not self.pending:
                out = self._run_active(args, kwargs)
            else:
                out = self._guarded_call(args, kwargs)
        except _UserError as err:  # the user's own method raised: theirs, not ours
            raise err.original from None
        if self._share_until is not None:
            self._exchange(args, kwargs)
        return out

    # -- several ranks: rank zero decides, the others follow ----------------------------------------
    def _exchange(self, args: tuple, kwargs: dict) -> None:
        """Collective at the end of every call of the window (same call index on every rank)."""
        ranks = self.ranks
        assert ranks is not None and self._share_until is not None
        payload: dict[str, Any] | None = None
        if ranks.rank == 0:
            try:
                payload = self._decision_payload()
            except Exception:  # principle 1: the other ranks still get an answer (keep the user's model)
                log.debug("perfcallbacks: could not state the fix decision", exc_info=True)
                payload = {"final": True, "active": None}
        try:
            payload = ranks.broadcast(payload)
        except Exception:  # a broken group: stop sharing; this rank keeps what it runs now
            log.debug("perfcallbacks: sharing the fix decision failed", exc_info=True)
            self._share_until = None
            return
        if not payload or not payload.get("final"):
            return
        self._share_until = None
        if ranks.rank != 0 and payload.get("active"):
            self._follow(payload["active"], args, kwargs)

    def _decision_payload(self) -> dict[str, Any]:
        decided = self.trial is None and not self.pending
        if not decided and self.calls >= (self._share_until or 0):
            # The shortest rank's job ends here: what is undecided now stays undecided.
            if self.trial is not None:
                self._conclude_trial(final=True)
            self._conclude_all("skipped", f"the shortest rank's share of the job ({self._share_until} calls) ended "
                               "before this fix could be measured")
            decided = True
        active = self.active
        return {"final": decided, "active": None if not decided or active is None else {
            "fix_id": active.fix_id, "params": dict(active.params),
            "reason": next((r.reason for r in reversed(self.results) if r.id == active.fix_id), "")}}

    def _follow(self, active: dict[str, Any], args: tuple, kwargs: dict) -> None:
        """Build rank zero's applied candidate here from its params (kept for this model's later stages)."""
        fix_id = str(active.get("fix_id"))
        spec = next((s for s in self.specs if s.fix_id == fix_id), None)
        if spec is None:
            self._record(FixResult(fix_id, "skipped", "rank zero applied it; it does not apply on this rank"), 0.0)
            return
        start = self.clock()
        try:
            batch = self.batch_of(args, kwargs)
            parts = _key_parts(self.owner, spec, self.profile, batch, self._owner_facts)
            key, weights = parts if parts else (None, None)
            memo = _MEMO.get(key) if key else None
            cand = memo.get("candidate") if memo and memo.get("weights") == weights else None
            if cand is None or cand.params != active.get("params"):
                built, _ = self._build(spec, batch, dict(active.get("params") or {}))
                if isinstance(built, FixResult):
                    self._record(built, self.clock() - start)
                    return
                cand = built
                if key:
                    _MEMO[key] = {"decision": {"status": "applied", "kind": "speed", "params": dict(cand.params),
                                               "reason": active.get("reason", ""), "weights": weights},
                                  "candidate": cand, "weights": weights}
        except Exception as err:  # principle 1: this rank keeps the user's model
            log.debug("perfcallbacks: could not follow rank zero's fix", exc_info=True)
            self._record(FixResult(fix_id, "failed", f"could not build rank zero's decision here: "
                                   f"{type(err).__name__}: {err}"), self.clock() - start)
            return
        self.active = cand
        self._record(FixResult(fix_id, "applied", f"decided on rank 0: {active.get('reason', '')}",
                               details={"decided_on_rank": 0, **cand.details}), self.clock() - start)

    def _guarded_call(self, args: tuple, kwargs: dict) -> Any:
        if self.calls == 1 and self.trial is None:
            self._reuse_before_first_call(args, kwargs)
            if self.trial is None and not self.pending:
                return self._run_active(args, kwargs)
        ref_s, out = self._timed(lambda: self._run_active(args, kwargs), user=True)
        if self.first_call_s is None:
            self.first_call_s = ref_s
        try:
            batch = self.batch_of(args, kwargs)
            if self.trial is None:
                self._start_next(batch, args, kwargs, out, ref_s)
            else:
                self._shadow(self.trial, batch, args, kwargs, out, ref_s)
        except Exception as err:  # principle 1: our failure costs the fix, never the user's call
            log.debug("perfcallbacks: guarded fix failed", exc_info=True)
            fix_id = self.trial.spec.fix_id if self.trial else (self.pending[0].fix_id if self.pending else "?")
            self.trial = None
            if self.pending and self.pending[0].fix_id == fix_id:
                self.pending.pop(0)
            self._record(FixResult(fix_id, "failed", f"measurement failed: {type(err).__name__}: {err}"), 0.0)
        return out

    def _run_active(self, args: tuple, kwargs: dict) -> Any:
        if self.active is not None:
            try:
                return self._call_candidate(self.active, args, kwargs)
            except Exception as err:  # an applied fix that breaks on a later batch: back to the original
                log.debug("perfcallbacks: applied fix failed on a call", exc_info=True)
                failed, self.active = self.active, None
                self._record(FixResult(failed.fix_id, "failed", f"rolled back: the fixed model raised on call "
                                       f"{self.calls}: {type(err).__name__}: {err}"), 0.0)
        try:
            return self.original(*args, **kwargs)
        except Exception as err:
            raise _UserError(err) from err

    def _call_candidate(self, cand: Candidate, args: tuple, kwargs: dict) -> Any:
        batch = self.batch_of(args, kwargs)
        args, kwargs = self.with_batch(args, kwargs, cand.prepare(batch))
        fn = self.original if cand.model is self.owner else getattr(cand.model, self.method)
        if cand.context is None:
            return fn(*args, **kwargs)
        with cand.context():
            return fn(*args, **kwargs)

    def _timed(self, fn: Callable[[], Any], user: bool = False) -> tuple[float, Any]:
        if self._sync is not None:
            self._sync()
        start = self.clock()
        out = fn()
        if self._sync is not None:
            self._sync()
        return self.clock() - start, out

    # -- planning -------------------------------------------------------------------------------
    def _remaining_calls(self) -> int | None:
        return None if self.expected_calls is None else max(0, self.expected_calls - self.calls)

    def _job_s(self) -> float | None:
        if self.expected_calls is None or self.first_call_s is None:
            return None
        return self.first_call_s * self.expected_calls

    def _start_next(self, batch: Any, args: tuple, kwargs: dict, ref_out: Any, ref_s: float) -> None:
        """Begin the next pending fix on this call (which already ran on the active model)."""
        try:
            output_tensor(ref_out)
        except TypeError:  # e.g. a validation_step that only logs: nothing to judge fidelity on
            self._conclude_all("skipped", f"{self.method} returned no tensor to compare "
                               f"({type(ref_out).__name__}): fidelity cannot be judged, so nothing is changed")
            return
        while self.pending and self.trial is None:
            spec = self.pending.pop(0)
            if self.active is not None and self.active.fix_id in spec.exclusive_with:
                self._record(FixResult(spec.fix_id, "skipped", f"{self.active.fix_id} is applied; the two do not "
                                       "combine"), 0.0)
                continue
            self._begin(spec, batch, args, kwargs, ref_out, ref_s)

    def _calls_needed(self, ref_out: Any, batch: Any, tol: Any) -> int:
        from perfcallbacks.observe import batch_stats

        stats = batch_stats(batch)
        rows = max(1, stats.batch_size if stats and stats.batch_size else 1)
        try:
            tensor = output_tensor(ref_out)
            scores = not tensor.is_floating_point() or output_kind(ref_out, self.owner) == "scores"
        except TypeError:
            scores = False
        need_rows = MIN_ROWS
        if scores and getattr(tol, "argmax_agreement", None) is not None:
            need_rows = rows_for_agreement(tol.argmax_agreement)
        return max(MIN_CALLS, math.ceil(need_rows / rows))

    def _begin(self, spec: FixSpec, batch: Any, args: tuple, kwargs: dict, ref_out: Any, ref_s: float) -> None:
        remaining = self._remaining_calls()
        parts = _key_parts(self.owner, spec, self.profile, batch, self._owner_facts)
        key, weights = parts if parts else (None, None)
        reused = _MEMO.get(key) if key else None
        source = "this process"
        if reused is None and key and self.cache is not None:
            stored = self.cache.get(key)
            if stored:
                reused, source = {"decision": stored, "candidate": None, "weights": stored.get("weights")}, "cache"
        if reused is not None:
            if self._reuse(spec, reused, source, key, weights, batch, args, kwargs, ref_out):
                return
        job_s = self._job_s()
        if remaining is None or job_s is None:
            self._record(FixResult(spec.fix_id, "skipped", "the job's length is unknown (a loader without len): "
                                   "pass expected_batches to measure fixes within budget"), 0.0)
            return
        # Cost estimate: building (~half a call) + shadow calls at up to the original's speed.
        per_call = self.first_call_s or 0.0
        from perfcallbacks.fixes._guard import Tolerance

        needed = self._calls_needed(ref_out, batch, spec.tolerance if spec.tolerance is not None else Tolerance())
        estimate = per_call * (0.5 + needed * (1 + _BOOKKEEPING))
        allowed = self.guard_budget * job_s - self.cost_s
        if needed > remaining + 1 or estimate > allowed:
            why = (f"{remaining} more call(s) x {per_call:.3f} s = {per_call * remaining:.2f} s left of a "
                   f"~{job_s:.2f} s job (estimated from its first call); measuring would cost ~{estimate:.2f} s "
                   f"({needed} shadow calls), more than {self.guard_budget:.0%} of the job")
            if needed > remaining + 1:
                why = (f"the job is too short to support the fidelity claim: {needed} calls needed, "
                       f"{remaining + 1} available ({why})")
            self._record(FixResult(spec.fix_id, "skipped", why, details={
                "first_call_s": per_call, "expected_calls": self.expected_calls, "estimated_cost_s": estimate,
                "shadow_calls_needed": needed}), 0.0)
            return
        built, build_s = self._build(spec, batch, None)
        if isinstance(built, FixResult):
            self._record(built, build_s)
            return
        trial = _Trial(spec, built, key=key, weights=weights, planned_calls=needed)
        trial.cost_s += build_s
        self.trial = trial
        self._shadow(trial, batch, args, kwargs, ref_out, ref_s)

    def _build(self, spec: FixSpec, batch: Any, params: dict[str, Any] | None) -> tuple[Candidate | FixResult, float]:
        # The owner's instance patch (us) must not be copied into the candidate.
        patched = self._installed
        if patched:
            delattr(self.owner, self.method)
        start = self.clock()
        try:
            built = spec.build(self.owner, batch, self.profile, params)
            if isinstance(built, Candidate):
                _reattach(self.owner, built.model)
        finally:
            if patched:
                setattr(self.owner, self.method, self)
        return built, self.clock() - start

    def _reuse_before_first_call(self, args: tuple, kwargs: dict) -> None:
        """Fixes decided before for this model, these weights and shapes: settled before the job's first call.

        Only decisions that need no measuring are settled here (applied with the same weights, or
        rejected); the rest wait for the first call as usual.
        """
        try:
            batch = self.batch_of(args, kwargs)
            for spec in list(self.pending):
                if self.active is not None and self.active.fix_id in spec.exclusive_with:
                    break
                parts = _key_parts(self.owner, spec, self.profile, batch, self._owner_facts)
                if not parts:
                    break
                key, weights = parts
                reused, source = _MEMO.get(key), "this process"
                if reused is None and self.cache is not None:
                    stored = self.cache.get(key)
                    if stored:
                        reused, source = {"decision": stored, "candidate": None, "weights": stored.get("weights")}, \
                            "cache"
                if reused is None or reused.get("weights") != weights:
                    break  # measure or verify on the first call, in order
                decision = reused.get("decision") or {}
                if decision.get("status") not in ("applied", "rejected"):
                    break
                self.pending.remove(spec)
                self._reuse(spec, reused, source, key, weights, batch, args, kwargs, None)
        except Exception:  # principle 1: reuse is an optimisation; the first call measures instead
            log.debug("perfcallbacks: could not reuse a decision", exc_info=True)

    def _reuse(self, spec: FixSpec, reused: dict[str, Any], source: str, key: str | None, weights: str | None,
               batch: Any, args: tuple, kwargs: dict, ref_out: Any) -> bool:
        """Apply (or skip) from an earlier decision; True when the fix is settled or on a verify-only trial."""
        decision = reused.get("decision") or {}
        same_weights = weights is not None and reused.get("weights") == weights
        status = decision.get("status")
        if status == "rejected" and (same_weights or decision.get("kind") == "speed"):
            self._record(FixResult(spec.fix_id, "rejected", f"reused the decision from {source}: "
                                   f"{decision.get('reason', '')}", speedup=decision.get("speedup"),
                                   fidelity=dict(decision.get("fidelity") or {}),
                                   details={"reused": source}), 0.0)
            return True
        if status != "applied":
            return False
        start = self.clock()
        cand = reused.get("candidate")
        build_s = 0.0
        if cand is None or not same_weights:
            built, build_s = self._build(spec, batch, dict(decision.get("params") or {}))
            if isinstance(built, FixResult):
                return False  # cannot rebuild here: measure from scratch
            cand = built
        if same_weights:
            self.active = cand
            _MEMO[key] = {"decision": decision, "candidate": cand, "weights": weights}  # type: ignore[index]
            self._record(FixResult(spec.fix_id, "applied", f"reused the decision from {source} (same model and "
                                   f"weights): {decision.get('reason', '')}", speedup=decision.get("speedup"),
                                   fidelity=dict(decision.get("fidelity") or {}),
                                   details={"reused": source, **cand.details}), self.clock() - start)
            return True
        # Weights changed: the speed decision holds, fidelity is verified again on this job.
        trial = _Trial(spec, cand, key=key, weights=weights, verify_only=True, reused=decision)
        trial.cost_s += build_s
        self.trial = trial
        self._shadow(trial, batch, args, kwargs, ref_out, None)
        return True

    # -- trial --------------------------------------------------------------------------------------
    def _shadow(self, trial: _Trial, batch: Any, args: tuple, kwargs: dict, ref_out: Any, ref_s: float | None) -> None:
        with _unlogged(trial.candidate.model):
            cand_s, cand_out = self._timed(lambda: self._call_candidate(trial.candidate, args, kwargs))
        start = self.clock()
        ev = trial.evidence
        trial.calls_shadowed += 1
        trial.candidate_s.append(cand_s)
        if ref_s is not None and cand_s > 0:
            ratio = ref_s / cand_s
            (ev.ratios if ratio <= trial.spec.plausible_max else ev.dropped).append(ratio)
        ev.add_outputs(ref_out, cand_out, batch, self.owner)
        trial.cost_s += cand_s + (self.clock() - start)
        self._maybe_decide(trial)

    def _maybe_decide(self, trial: _Trial) -> None:
        ev = trial.evidence
        bad, missing = judge_fidelity(ev, trial.candidate.tolerance)
        if bad:
            refined = trial.candidate.refine(bad) if trial.candidate.refine and not trial.verify_only else None
            if refined is not None:
                trial.refinements += 1
                trial.cost_s += refined.build_s
                trial.candidate, trial.evidence = refined, Evidence()
                trial.candidate_s = []  # a new model: its first call is cold again (a new Evidence too)
                return
            self._conclude(trial, "rejected", f"outside tolerance: {'; '.join(bad)}", kind="fidelity")
            return
        speed = ev.speed()
        if trial.verify_only:
            if not missing or len(ev.cosines) + ev.compared >= MIN_ROWS:
                self._conclude(trial, "applied", "speed decision reused; fidelity verified again on this job "
                               "(weights changed)", kind="fidelity")
            return
        enough_speed = speed is not None and speed["calls"] >= MIN_CALLS
        if enough_speed and speed["warm"] and speed["median"] < 1 + MARGIN:
            self._conclude(trial, "rejected", f"measured {speed['median']:.2f}x (slow end {speed['slow_end']:.2f}x), "
                           f"needs {1 + MARGIN:.2f}x", kind="speed")
            return
        if enough_speed and speed["slow_end"] >= 1 + MARGIN and not missing:
            self._conclude(trial, "applied", f"{speed['median']:.2f}x faster (slow end {speed['slow_end']:.2f}x) "
                           f"on {int(speed['calls'])} of the job's calls, within tolerance on {ev.rows} rows",
                           kind="speed")
            return
        # Undecided: go on only while calls remain and the budget allows one more shadow call.
        remaining = self._remaining_calls() or 0
        job_s = self._job_s() or 0.0
        # The next shadow call costs what this candidate's warm calls cost (its first one was cold).
        warm_s = trial.candidate_s[COLD_CALLS:] or trial.candidate_s
        per_call = statistics.median(warm_s) if warm_s else (self.first_call_s or 0.0)
        next_cost = per_call * (1 + _BOOKKEEPING)
        over_budget = self.cost_s + trial.cost_s + next_cost > self.guard_budget * job_s
        limit = max(MAX_CALLS, trial.planned_calls) + 3 * trial.refinements
        if remaining <= 0 or over_budget or len(ev.ratios) + len(ev.dropped) >= limit:
            self._conclude_trial(final=True)

    def _conclude_trial(self, final: bool) -> None:
        trial = self.trial
        if trial is None:
            return
        ev = trial.evidence
        bad, missing = judge_fidelity(ev, trial.candidate.tolerance)
        speed = ev.speed()
        if bad:
            self._conclude(trial, "rejected", f"outside tolerance: {'; '.join(bad)}", kind="fidelity")
        elif trial.verify_only and not bad and ev.rows:
            self._conclude(trial, "applied", "speed decision reused; fidelity verified again on this job",
                           kind="fidelity")
        elif missing:
            self._conclude(trial, "skipped", f"not enough of the job to support the claim: {'; '.join(missing)}",
                           kind="evidence")
        elif speed is None or speed["calls"] < MIN_CALLS:
            self._conclude(trial, "skipped", f"not enough calls to time it ({0 if speed is None else int(speed['calls'])}"
                           f" of {MIN_CALLS})", kind="evidence")
        else:
            self._conclude(trial, "rejected", f"slow end {speed['slow_end']:.2f}x (median {speed['median']:.2f}x) "
                           f"does not beat {1 + MARGIN:.2f}x", kind="speed")

    def _conclude(self, trial: _Trial, status: str, reason: str, *, kind: str) -> None:
        self.trial = None
        ev = trial.evidence
        speed = ev.speed()
        fid = ev.fidelity()
        if trial.verify_only and trial.reused:
            speedup = trial.reused.get("speedup")
        else:
            speedup = None if speed is None else speed["median"]
        details = dict(trial.candidate.details)
        details.update(calls_measured=len(ev.ratios), calls_shadowed=trial.calls_shadowed,
                       refinements=trial.refinements,
                       first_call_s=self.first_call_s, expected_calls=self.expected_calls)
        if speed is not None:
            details["speedup_spread"] = {k: round(v, 3) for k, v in speed.items() if k not in ("median", "warm")}
            details["speed_judged_on"] = "warm calls" if speed["warm"] else "all calls (the first one cold)"
            details["ratios"] = [round(r, 3) for r in ev.ratios]
        if ev.dropped:
            details["implausible_ratios_dropped"] = [round(r, 2) for r in ev.dropped]
        if status == "applied":
            self.active = trial.candidate
        result = FixResult(trial.spec.fix_id, status, reason, speedup=speedup, fidelity=fid, details=details)
        self._record(result, trial.cost_s)
        if trial.key and kind in ("speed", "fidelity") and status in ("applied", "rejected"):
            decision = {"status": status, "kind": kind, "reason": reason, "speedup": speedup,
                        "fidelity": {k: v for k, v in fid.items()}, "params": dict(trial.candidate.params),
                        "weights": trial.weights}
            _MEMO[trial.key] = {"decision": decision, "candidate": trial.candidate if status == "applied" else None,
                                "weights": trial.weights}
            if self.cache is not None:
                self.cache.put(trial.key, decision)

    def _conclude_all(self, status: str, reason: str) -> None:
        for spec in self.pending:
            self._record(FixResult(spec.fix_id, status, reason), 0.0)
        self.pending = []

    def _record(self, result: FixResult, cost_s: float) -> None:
        self.cost_s += cost_s
        set_cost(result, cost_s)
        self.results.append(result)
        try:
            self.record(result)
        except Exception:
            log.debug("perfcallbacks: recording a fix failed", exc_info=True)


@contextlib.contextmanager
def _unlogged(model: nn.Module) -> Iterator[None]:
    """A shadow call must not log: the user's step already logged this batch. A LightningModule's
    ``self.log`` would count the batch twice in the user's metrics, and with ``sync_dist=True`` start a
    collective on rank zero alone. Instance attributes shadow the methods for the call, then go."""
    names = [n for n in ("log", "log_dict") if callable(getattr(model, n, None)) and n not in vars(model)]
    if not names or "_trainer" not in vars(model):  # a LightningModule (its trainer given back by _reattach)
        yield
        return
    for name in names:
        setattr(model, name, _no_log)
    try:
        yield
    finally:
        for name in names:
            model.__dict__.pop(name, None)


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


def _reattach(owner: nn.Module, copy: nn.Module) -> None:
    """Give a copied LightningModule its trainer back (Lightning's ``__getstate__`` drops it on copy):
    the candidate's ``predict_step`` may log, read ``self.trainer`` or save a checkpoint."""
    if copy is owner:
        return
    for attr in ("_trainer", "_fabric"):
        ref = owner.__dict__.get(attr)
        if ref is not None and copy.__dict__.get(attr, None) is None:
            copy.__dict__[attr] = ref


class _UserError(Exception):
    """Carries an exception raised by the user's own method through our containment."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def set_cost(result: FixResult, cost_s: float) -> None:
    """Attach the guard's measuring time to ``result`` (``cost_s`` in the report)."""
    if hasattr(result, "cost_s"):
        result.cost_s = round(float(cost_s), 4)  # type: ignore[attr-defined]
    else:
        result.details["cost_s"] = round(float(cost_s), 4)


def _first_arg(args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    return kwargs


def _replace_first_arg(args: tuple, kwargs: dict, batch: Any) -> tuple[tuple, dict]:
    if args:
        return (batch, *args[1:]), kwargs
    return args, dict(batch) if isinstance(batch, dict) else kwargs


def kwargs_batch(args: tuple, kwargs: dict) -> Any:
    """``batch_of`` for a model called as ``model(**inputs)`` (HF): the keyword arguments are the batch."""
    return kwargs if kwargs else (args[0] if len(args) == 1 else args)


def kwargs_with_batch(args: tuple, kwargs: dict, batch: Any) -> tuple[tuple, dict]:
    if kwargs and isinstance(batch, dict):
        return args, batch
    if len(args) == 1:
        return (batch,), kwargs
    return (tuple(batch) if isinstance(batch, (tuple, list)) else args), kwargs


class GuardedModule(nn.Module):
    """What :meth:`Advisor.optimize_inference` returns: call it like the model; it decides on the job's calls.

    While a fix is on trial the original model answers (and the candidate shadows it); afterwards the
    chosen one does. Attributes not found here are looked up on the original model.
    """

    def __init__(self, model: nn.Module, guard: GuardedCalls) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # not registered: no second copy in state_dict/parameters
        object.__setattr__(self, "guard", guard)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.guard(*args, **kwargs)

    @property
    def fixes(self) -> list[FixResult]:
        return list(self.guard.results)

    @property
    def chosen(self) -> nn.Module:
        """The module answering calls now: the original model or the applied candidate."""
        active = self.guard.active
        return self._model if active is None else active.model

    def finish(self) -> list[FixResult]:
        """Conclude undecided fixes (e.g. the loop ended early); returns every result."""
        return self.guard.finish()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_model"), name)
