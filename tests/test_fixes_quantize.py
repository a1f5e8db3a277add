from __future__ import annotations

import collections
import dataclasses
import itertools
import warnings

import pytest
import torch

from perfcallbacks.fixes import QuantTolerance, quantize, quantize_guarded
from perfcallbacks.fixes.candidate import Candidate
from perfcallbacks.fixes.int8 import Int8DynamicLinear, available_backends, linear_layers
from perfcallbacks.fixes.quantize import fastest_backend, first_rows, int8_candidate, layer_shapes
from perfcallbacks.report import FixResult
from tests._tiny import mlp, snapshot, tiny_bert, tiny_bert_batch


def _inputs(batch: dict) -> dict:
    """The forward's inputs (transformers 4.x base models take **kwargs and choke on labels)."""
    return {k: v for k, v in batch.items() if k != "labels"}

ALL_FP32 = QuantTolerance(max_fp32_fraction=1.0)


def _wide_mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512),
                               torch.nn.ReLU(), torch.nn.Linear(512, 16))


def _structure(model: torch.nn.Module) -> list[tuple[str, int, type, frozenset[str], bool]]:
    """Every module's name, identity, type, attribute names and train flag: any write shows up."""
    return [(n, id(m), type(m), frozenset(vars(m)), m.training) for n, m in model.named_modules()]


def _int8_names(model: torch.nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, Int8DynamicLinear)}


def _count_int8_linear(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = quantize.int8_linear

    def counting(linear, backend):
        calls.append(backend)
        return real(linear, backend)

    monkeypatch.setattr(quantize, "int8_linear", counting)
    return calls


# -- int8_candidate: a copy, never the user's model ------------------------------------------------
def test_candidate_is_a_copy_and_leaves_the_user_model_exactly():
    model = tiny_bert().train()
    before, structure = snapshot(model), _structure(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch.ao deprecation noise reaches the user
        cand = int8_candidate(model, tiny_bert_batch())
        refined = cand.refine(["cosine_mean 0.9 < 0.99"])
    assert isinstance(cand, Candidate) and cand.fix_id == "dynamic-quantization"
    assert snapshot(model) == before and _structure(model) == structure  # bytes, modules, attributes, flags
    assert not _int8_names(model)
    for c in (cand, refined):
        assert c.model is not model and _int8_names(c.model)
        assert not {id(m) for m in c.model.modules()} & {id(m) for m in model.modules()}
        assert c.model.training == model.training  # mirrors the user's flags
    # Chosen design: parameters are shared (read-only at inference), buffers are the copy's own.
    emb, emb_copy = model.embeddings.word_embeddings.weight, cand.model.embeddings.word_embeddings.weight
    assert emb_copy is emb
    user_buffers = {b.data_ptr() for b in model.buffers()}
    assert not user_buffers & {b.data_ptr() for b in cand.model.buffers()}


def test_running_the_candidate_in_train_mode_writes_nothing_of_the_user():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 4)).train()
    before = snapshot(model)
    cand = int8_candidate(model, torch.randn(8, 16))
    cand.model.train()(torch.randn(8, 16) * 5 + 3)  # BatchNorm updates the running stats of *its* buffers
    assert snapshot(model) == before
    assert snapshot(cand.model)["1.running_mean"] != before["1.running_mean"]


def test_candidate_outputs_are_int8_and_close():
    model = _wide_mlp()
    x = torch.randn(64, 512)
    cand = int8_candidate(model, x, tolerance=QuantTolerance(max_fp32_fraction=0.0))
    assert cand.details["layers_fp32"] == [] and _int8_names(cand.model) == {"0", "2", "4"}
    with torch.inference_mode():
        ref, out = model(x), cand.model(x)
    assert not torch.equal(ref, out)  # it really runs int8
    assert torch.nn.functional.cosine_similarity(ref, out).min() > 0.99


def test_details_and_params():
    cand = int8_candidate(tiny_bert(), tiny_bert_batch())
    d = cand.details
    total = len(linear_layers(tiny_bert()))
    assert d["layers_total"] == total and d["layers_int8"] == total - len(d["layers_fp32"])
    assert d["backend"] in available_backends() and d["weight_bits"] in (7, 8)
    assert len(d["most_sensitive"]) == 5 and list(d["most_sensitive"].values()) == sorted(
        d["most_sensitive"].values(), reverse=True)
    assert d["sensitivity_rows"] == quantize.SENSITIVITY_ROWS
    assert {"copy", "quantize", "sensitivity", "total"} <= set(d["build_timing_s"])
    assert cand.build_s > 0 and cand.build_s == pytest.approx(d["build_timing_s"]["total"], abs=1e-3)
    assert cand.params == {"backend": d["backend"], "fp32_layers": d["layers_fp32"]}
    assert cand.tolerance == QuantTolerance()


def test_clearly_sensitive_layers_start_fp32(monkeypatch):
    # One layer's int8 error is far above the others': the initial candidate keeps it (and only it) fp32.
    monkeypatch.setattr(quantize, "_scores", lambda model, rows, layers, int8: {
        n: (1.0 if i == 2 else 0.1 + 0.01 * i) for i, n in enumerate(layers)})
    model = tiny_bert()
    cand = int8_candidate(model, tiny_bert_batch(), tolerance=ALL_FP32)
    names = list(linear_layers(model))
    assert cand.details["layers_fp32"] == [names[2]]
    assert names[2] not in _int8_names(cand.model) and _int8_names(cand.model) == set(names) - {names[2]}


# -- refine ------------------------------------------------------------------------------------------
def test_refine_doubles_the_fp32_layers_and_reuses_the_int8_ones(monkeypatch):
    model = tiny_bert()
    cand = int8_candidate(model, tiny_bert_batch(), tolerance=ALL_FP32)
    order = list(cand.details["most_sensitive"])
    calls = _count_int8_linear(monkeypatch)  # from here on, nothing may be quantized again
    total = cand.details["layers_total"]
    seen = [cand]
    while (nxt := seen[-1].refine(["max_abs_error 0.1 > 0"])) is not None:
        seen.append(nxt)
    assert not calls
    counts = [len(c.details["layers_fp32"]) for c in seen]
    assert counts[-1] == total and all(b == min(total, max(1, 2 * a)) for a, b in itertools.pairwise(counts))
    for prev, nxt in itertools.pairwise(seen):
        assert set(prev.details["layers_fp32"]) < set(nxt.details["layers_fp32"])
        assert nxt.details["violations"] == ["max_abs_error 0.1 > 0"]
        assert nxt.details["refined_from"] == len(prev.details["layers_fp32"])
        assert nxt.model is not prev.model
        for name in _int8_names(nxt.model):  # the very same int8 modules, not rebuilt
            assert nxt.model.get_submodule(name) is prev.model.get_submodule(name)
    # The most sensitive layers go back to fp32 first.
    assert seen[1].details["layers_fp32"][: len(order[:2])] == order[: len(seen[1].details["layers_fp32"])][:2]
    with torch.inference_mode():
        assert torch.allclose(seen[-1].model(**_inputs(tiny_bert_batch())).last_hidden_state,
                              model(**_inputs(tiny_bert_batch())).last_hidden_state, atol=1e-6)


def test_refine_stops_at_max_fp32_fraction():
    model = tiny_bert()
    total = len(linear_layers(model))
    cand = int8_candidate(model, tiny_bert_batch(), tolerance=QuantTolerance(max_fp32_fraction=0.3))
    cap = int(0.3 * total)
    while (nxt := cand.refine(["x"])) is not None:
        cand = nxt
    assert len(cand.details["layers_fp32"]) == cap
    zero = int8_candidate(model, tiny_bert_batch(), tolerance=QuantTolerance(max_fp32_fraction=0.0))
    assert zero.details["layers_fp32"] == [] and zero.refine(["x"]) is None


def test_refine_never_raises(monkeypatch):
    cand = int8_candidate(tiny_bert(), tiny_bert_batch(), tolerance=ALL_FP32)
    monkeypatch.setattr(quantize, "_sharing_copy", lambda m: (_ for _ in ()).throw(RuntimeError("boom")))
    assert cand.refine(["x"]) is None


# -- fp32_layers from a cached decision ------------------------------------------------------------
def test_fp32_layers_are_honoured_without_any_forward(monkeypatch):
    model = tiny_bert()
    names = list(linear_layers(model))
    given = [names[5], names[1]]
    calls = _count_int8_linear(monkeypatch)
    monkeypatch.setattr(quantize, "_scores", lambda *a: pytest.fail("no sensitivity forward with fp32_layers"))
    cand = int8_candidate(model, "not a batch: never run", backend="fbgemm" if "fbgemm" in available_backends()
                          else "auto", fp32_layers=given)
    assert isinstance(cand, Candidate), cand
    assert cand.details["layers_fp32"] == [names[1], names[5]]  # exactly those, in module order
    assert _int8_names(cand.model) == set(names) - set(given)
    assert len(calls) == len(names) - len(given)  # the fp32 ones are never quantized
    assert "most_sensitive" not in cand.details and cand.details["fp32_rule"] == "given (fp32_layers)"


def test_rebuilding_from_params_gives_the_same_model():
    model, batch = tiny_bert(), tiny_bert_batch()
    first = int8_candidate(model, batch, tolerance=ALL_FP32).refine(["x"])
    again = int8_candidate(model, batch, **first.params)
    assert again.details["layers_fp32"] == sorted(first.details["layers_fp32"], key=list(linear_layers(model)).index)
    with torch.inference_mode():
        assert torch.equal(first.model(**_inputs(batch)).last_hidden_state, again.model(**_inputs(batch)).last_hidden_state)


def test_refine_after_fp32_layers_ranks_the_rest_once():
    model = tiny_bert()
    names = list(linear_layers(model))
    cand = int8_candidate(model, tiny_bert_batch(), fp32_layers=[names[0]], tolerance=ALL_FP32)
    nxt = cand.refine(["x"])
    assert nxt.details["layers_fp32"][0] == names[0] and len(nxt.details["layers_fp32"]) == 2
    assert names[0] not in nxt.details["most_sensitive"] and "sensitivity" in nxt.details["build_timing_s"]
    assert "sensitivity" not in nxt.refine(["x"]).details["build_timing_s"]  # ranked once


def test_fp32_layers_errors():
    model = tiny_bert()
    with pytest.raises(TypeError, match="fp32_layers"):
        int8_candidate(model, tiny_bert_batch(), fp32_layers="encoder.layer.0.output.dense")
    with pytest.raises(TypeError, match="fp32_layers"):
        int8_candidate(model, tiny_bert_batch(), fp32_layers=[1, 2])
    stale = int8_candidate(model, tiny_bert_batch(), fp32_layers=["no.such.layer"])
    assert isinstance(stale, FixResult) and stale.status == "failed" and "no.such.layer" in stale.reason


# -- skip reasons and failures ---------------------------------------------------------------------
def test_skip_reasons():
    def reason(model, batch=None):
        result = int8_candidate(model, torch.zeros(2, 128) if batch is None else batch)
        assert isinstance(result, FixResult) and result.status == "skipped", result
        return result.reason

    assert "no nn.Linear" in reason(torch.nn.Sequential(torch.nn.ReLU()), torch.zeros(2, 2))
    assert "not fp32" in reason(mlp().double())
    assert "on meta" in reason(mlp().to("meta"))
    with warnings.catch_warnings():  # torch.compile's own TorchScript deprecation noise (user code, not ours)
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(mlp())
    assert "compile" in reason(compiled)
    cand = int8_candidate(mlp(), torch.randn(4, 128))
    assert "already quantized" in reason(cand.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        ao = quantize_dynamic(mlp(), {torch.nn.Linear}, dtype=torch.qint8)
    assert "already quantized" in reason(ao)


def test_no_backend_is_skipped_with_the_reasons(monkeypatch):
    monkeypatch.setattr(quantize, "backend_status", lambda: {
        "fbgemm": "gone", "onednn": "gone", "torch.ao": "gone", "torchao": "torchao is not installed"})
    result = int8_candidate(mlp(), torch.zeros(2, 128))
    assert result.status == "skipped" and "no int8 backend" in result.reason and "torchao is not installed" in \
        result.reason
    result = int8_candidate(mlp(), torch.zeros(2, 128), backend="onednn")
    assert result.status == "skipped" and "'onednn' unavailable: gone" in result.reason


def test_a_batch_that_does_not_fit_is_failed_not_raised():
    result = int8_candidate(mlp(), torch.zeros(2, 7))
    assert isinstance(result, FixResult) and result.status == "failed" and "build failed" in result.reason


def test_argument_errors_of_the_builder():
    with pytest.raises(ValueError, match="backend"):
        int8_candidate(mlp(), torch.zeros(2, 128), backend="tensorrt")
    with pytest.raises(TypeError, match="tolerance"):
        int8_candidate(mlp(), torch.zeros(2, 128), tolerance=0.99)


# -- odd batches ------------------------------------------------------------------------------------
class _Kw(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(32, 64), torch.nn.Linear(64, 8)
        self.rows: list[int] = []

    def forward(self, x, *, scale=1.0, tag=None):
        assert tag in (None, "keep-me")  # non-tensor values arrive unchanged
        self.rows.append(x.shape[0])
        return self.b(torch.relu(self.a(x))) * scale


@dataclasses.dataclass
class _Batch:
    x: torch.Tensor
    y: torch.Tensor


Pair = collections.namedtuple("Pair", "x y")


def test_first_rows_of_odd_batches():
    x, y = torch.randn(32, 5), torch.arange(32)
    assert first_rows(x).shape == (4, 5) and first_rows(x[:3]).shape == (3, 5)
    t = first_rows((x, y, "tag", torch.ones(5)))
    assert isinstance(t, tuple) and t[0].shape == (4, 5) and t[1].tolist() == [0, 1, 2, 3]
    assert t[2] == "tag" and t[3].shape == (5,)  # not a per-row tensor: kept whole
    d = first_rows({"x": x, "n": 3, "names": ["a"] * 32, "scalar": torch.tensor(2.0)})
    assert d["x"].shape == (4, 5) and d["n"] == 3 and len(d["names"]) == 32 and d["scalar"].item() == 2.0
    assert first_rows([x, y])[0].shape == (4, 5)
    p = first_rows(Pair(x, y))
    assert isinstance(p, Pair) and p.y.shape == (4,)
    b = first_rows(_Batch(x, y))
    assert isinstance(b, _Batch) and b.x.shape == (4, 5)
    assert first_rows("text") == "text" and first_rows(torch.tensor(1.0)).dim() == 0


@pytest.mark.parametrize("kind", ["tuple", "dict", "batch_encoding"])
def test_odd_batches_build(kind):
    if kind == "batch_encoding":
        transformers = pytest.importorskip("transformers")
        model, raw = tiny_bert(), tiny_bert_batch(batch=16)
        batch = transformers.BatchEncoding({k: v for k, v in raw.items() if k != "labels"})
    else:
        model = _Kw()
        x = torch.randn(16, 32)
        batch = (x, torch.zeros(16)) if kind == "tuple" else {"x": x, "scale": 2.0, "tag": "keep-me",
                                                                "labels": torch.zeros(16)}
    cand = int8_candidate(model, batch, tolerance=ALL_FP32)
    assert isinstance(cand, Candidate), cand
    if isinstance(model, _Kw):
        assert model.rows == [] and cand.model.rows == [4]  # the sensitivity forward saw 4 rows, on the copy
    assert cand.details["sensitivity_rows"] == 4
    assert set(cand.details["most_sensitive"]) <= set(linear_layers(model))


# -- backend choice ----------------------------------------------------------------------------------
def test_fastest_backend_is_measured_once_and_cached(monkeypatch):
    ops = [b for b in available_backends() if b in ("fbgemm", "onednn")]
    if len(ops) < 2:
        pytest.skip(f"one prepacked backend here ({ops}): nothing to choose")
    monkeypatch.setattr(quantize, "_FASTEST", {})
    calls = _count_int8_linear(monkeypatch)
    name, ms = fastest_backend(ops, {(64, 128): 2, (128, 64): 1})
    assert name in ops and set(ms) == set(ops) and all(v > 0 for v in ms.values())
    assert len(calls) == 2 * len(ops)
    assert fastest_backend(ops, {(64, 128): 2, (128, 64): 1}) == (name, ms) and len(calls) == 2 * len(ops)
    assert fastest_backend(ops[:1], {(64, 128): 2}) == (ops[0], {})  # one candidate: nothing timed


def test_backend_choice_rules(monkeypatch):
    monkeypatch.setattr(quantize, "_FASTEST", {})
    if len([b for b in available_backends() if b in ("fbgemm", "onednn")]) == 2:
        cand = int8_candidate(_wide_mlp(), torch.randn(8, 512))
        assert cand.details["backend"] in ("fbgemm", "onednn") and "backend_choice" in cand.details
    for backend in available_backends():
        cand = int8_candidate(_wide_mlp(), torch.randn(8, 512), backend=backend)
        assert cand.details["backend"] == backend and "backend_choice" not in cand.details
    # no prepacked ops: the stock fallback, not timed
    monkeypatch.setattr(quantize, "backend_status", lambda: {"fbgemm": "gone", "onednn": "gone", "torch.ao": None,
                                                             "torchao": "not installed"})
    assert quantize._backend_candidates("auto") == (["torch.ao"], "")


def test_layer_shapes_weighs_by_weights():
    layers = linear_layers(tiny_bert())  # 9 of 32x32 (attention + pooler), 2 each of 32x64 / 64x32 (FFN)
    assert layer_shapes(layers) == {(32, 32): 9}
    assert list(layer_shapes(layers, top=3).items()) == [((32, 32), 9), ((32, 64), 2), ((64, 32), 2)]
    wide = linear_layers(_wide_mlp())  # one layer each: the biggest wins
    assert layer_shapes(wide) == {(512, 1024): 1} or layer_shapes(wide) == {(1024, 512): 1}


# -- quantize_guarded: the same candidate, judged on the example batch -----------------------------
def test_guarded_quantization_runs_for_real_without_leaking_warnings():
    model = _wide_mlp().train()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch.ao DeprecationWarning may reach the user
        # Random weights give near-tied logits: argmax agreement is judged at 0.95 here.
        result, qmodel = quantize_guarded(model, torch.randn(256, 512), margin=0.0, repeats=3,
                                          tolerance=QuantTolerance(argmax_agreement=0.95))
        if result.status == "applied":
            qmodel(torch.randn(4, 512))
    assert result.id == "dynamic-quantization"
    assert result.status in ("applied", "rejected"), result.reason
    assert snapshot(model) == before and model.training  # the user's model is untouched
    assert result.details["candidates"] and result.speedup is not None and result.cost_s > 0
    assert result.fidelity["cosine_mean"] >= 0.99 and result.fidelity["argmax_agreement"] >= 0.95
    if result.status == "applied":
        assert qmodel is not model and qmodel.training == model.training
        assert any(isinstance(m, Int8DynamicLinear) for m in qmodel.modules())
    else:
        assert qmodel is model


def test_impossible_tolerance_is_rejected_and_model_unchanged():
    model = tiny_bert()
    before = snapshot(model)
    tol = QuantTolerance(max_abs_error=0.0, max_fp32_fraction=0.0)
    result, qmodel = quantize_guarded(model, tiny_bert_batch(), tolerance=tol, repeats=1)
    assert result.status == "rejected" and "tolerance" in result.reason
    assert qmodel is model and snapshot(model) == before


def test_sensitive_layers_are_kept_fp32_until_within_tolerance():
    model = tiny_bert()
    tol = QuantTolerance(max_abs_error=1e-6, max_fp32_fraction=1.0)
    result, _ = quantize_guarded(model, tiny_bert_batch(), tolerance=tol, margin=0.0, repeats=1)
    tried = result.details["candidates"]
    assert tried[0]["violations"] and not tried[-1]["violations"]  # int8 alone broke the bound, refine fixed it
    counts = [row["layers_fp32"] for row in tried]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    assert result.details["most_sensitive"] and len(result.details["layers_fp32"]) == counts[-1]


def test_slower_fix_is_rejected():
    model = mlp(width=16, classes=4)  # far too small for int8 to pay: needs 10x to pass
    before = snapshot(model)
    result, qmodel = quantize_guarded(model, torch.randn(4, 16), margin=9.0, repeats=2)
    assert result.status == "rejected" and "needs 10.00x" in result.reason
    assert qmodel is model and snapshot(model) == before


def test_task_guard_rejects_a_worse_metric():
    model = _wide_mlp()
    calls = []

    def validate(m):  # a "loss" that is worse for anything but the original model
        calls.append(m)
        return 1.0 if m is model else 2.0

    result, qmodel = quantize_guarded(model, torch.randn(64, 512), margin=0.0, validate_fn=validate, repeats=1)
    if result.details.get("task_metric_int8") is None:
        pytest.skip(f"int8 not faster here, task guard not reached: {result.reason}")
    assert result.status == "rejected" and "task metric" in result.reason and qmodel is model


def test_guarded_skips_compiled_quantized_and_linear_free_models():
    result, m = quantize_guarded(torch.nn.Sequential(torch.nn.ReLU()), torch.zeros(2, 2))
    assert result.status == "skipped" and "no nn.Linear" in result.reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(mlp())
    result, m = quantize_guarded(compiled, torch.zeros(2, 128))
    assert result.status == "skipped" and "compile" in result.reason and m is compiled
    once, qmodel = quantize_guarded(_wide_mlp(), torch.randn(64, 512), margin=0.0, repeats=1)
    if once.status == "applied":
        again, _ = quantize_guarded(qmodel, torch.randn(64, 512))
        assert again.status == "skipped" and "already quantized" in again.reason


def test_torchao_backend_is_graceful_when_missing():
    result, _ = quantize_guarded(mlp(), torch.zeros(2, 128), backend="torchao", repeats=1)
    if "torchao" in available_backends():
        assert result.status in ("applied", "rejected")
    else:
        assert result.status == "skipped" and "pip install torchao" in result.reason


def test_argument_errors():
    with pytest.raises(ValueError, match="backend"):
        quantize_guarded(mlp(), torch.zeros(2, 128), backend="tensorrt")
    with pytest.raises(TypeError, match="tolerance"):
        quantize_guarded(mlp(), torch.zeros(2, 128), tolerance=0.99)
    with pytest.raises(ValueError, match="margin"):
        quantize_guarded(mlp(), torch.zeros(2, 128), margin=-0.1)
    with pytest.raises(ValueError, match="max_fp32_fraction"):
        QuantTolerance(max_fp32_fraction=2)


def test_measurement_failure_is_failed_not_raised():
    result, _ = quantize_guarded(mlp(), torch.zeros(2, 7))
    assert result.status == "failed" and "measurement failed" in result.reason


def test_a_raising_check_is_contained(monkeypatch):
    monkeypatch.setattr(quantize, "_skip_reason", lambda m: (_ for _ in ()).throw(RuntimeError("odd model")))
    result = int8_candidate(mlp(), torch.zeros(2, 128))
    assert result.status == "failed" and "odd model" in result.reason
    model = mlp()
    guarded, returned = quantize_guarded(model, torch.zeros(2, 128))
    assert guarded.status == "failed" and "odd model" in guarded.reason and returned is model
