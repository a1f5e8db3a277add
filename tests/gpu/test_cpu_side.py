"""The parts of the GPU suite that need no GPU: run in the normal ``make test``.

Synchronised timing (with an injected fake device queue), verdicts, the
profile comparison against presets, the results writer, the shared model
builders, and the alignment expectations of ``tests/gpu`` mirrored through a
GPU preset ``target``.
"""

from __future__ import annotations

import json

import pytest
import torch

import run_gpu
from claims import (
    Claim,
    agreement_claim,
    capability_claims,
    compare_profiles,
    counts,
    fires_claim,
    impact_claim,
    within,
)
from perfcallbacks import Advisor, DeviceProfile
from results_io import build_results, device_slug, markdown_table, parse_pytest_summary, write_results
from scenarios import (
    bert_encoder,
    conv_net,
    hint_missing,
    images,
    mlp,
    tiny_lm,
    token_loader,
    vector_loader,
)
from synctime import Timing, ratio, sync_for, time_once, time_side_by_side


class FakeQueue:
    """A device whose work runs only when synchronised: ``launch`` costs 1 µs of host time, the work waits."""

    LAUNCH_S = 1e-6

    def __init__(self) -> None:
        self.now = 0.0
        self.pending = 0.0
        self.syncs = 0
        self.calls: list[str] = []

    def clock(self) -> float:
        return self.now

    def sync(self) -> None:
        self.now += self.pending
        self.pending = 0.0
        self.syncs += 1

    def kernel(self, name: str, work_s: float):
        def launch() -> None:
            self.calls.append(name)
            self.now += self.LAUNCH_S
            self.pending += work_s

        return launch


def test_side_by_side_counts_the_device_work_when_synchronised():
    q = FakeQueue()
    t = time_side_by_side({"slow": q.kernel("slow", 0.010), "fast": q.kernel("fast", 0.001)},
                          repeats=5, warmup=2, sync=q.sync, clock=q.clock)
    assert t["slow"].median == pytest.approx(0.010 + q.LAUNCH_S)
    assert t["fast"].median == pytest.approx(0.001 + q.LAUNCH_S)
    assert ratio(t["slow"], t["fast"]) == pytest.approx(10, rel=0.01)


def test_without_synchronising_only_launches_are_timed():
    """The failure the suite exists to catch: unsynchronised timing sees a 10x slower kernel as equal."""
    q = FakeQueue()
    t = time_side_by_side({"slow": q.kernel("slow", 0.010), "fast": q.kernel("fast", 0.001)},
                          repeats=5, warmup=1, clock=q.clock)  # default sync: host-only no-op
    assert t["slow"].median == pytest.approx(q.LAUNCH_S) == t["fast"].median


def test_pending_work_is_never_charged_to_the_next_candidate():
    q = FakeQueue()
    q.pending = 5.0  # left over by earlier, untimed work
    t = time_side_by_side({"a": q.kernel("a", 0.002)}, repeats=3, warmup=0, sync=q.sync, clock=q.clock)
    assert max(t["a"].samples) == pytest.approx(0.002 + q.LAUNCH_S)


def test_rounds_rotate_the_order_and_number_divides():
    q = FakeQueue()
    t = time_side_by_side({"a": q.kernel("a", 0.003), "b": q.kernel("b", 0.003), "c": q.kernel("c", 0.003)},
                          repeats=3, warmup=0, number=4, sync=q.sync, clock=q.clock)
    firsts = [q.calls[i * 12] for i in range(3)]
    assert firsts == ["a", "b", "c"]
    assert all(len(x.samples) == 3 for x in t.values())
    assert t["a"].median == pytest.approx(0.003 + q.LAUNCH_S)


def test_time_once_synchronises_both_ends():
    q = FakeQueue()
    q.pending = 1.0
    assert time_once(q.kernel("x", 0.25), sync=q.sync, clock=q.clock) == pytest.approx(0.25 + q.LAUNCH_S)


@pytest.mark.parametrize("kwargs, match", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"),
                                           ({"number": 0}, "number"), ({"repeats": True}, "repeats")])
def test_side_by_side_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        time_side_by_side({"a": lambda: None}, **kwargs)
    with pytest.raises(ValueError, match="fns"):
        time_side_by_side({})


def test_timing_spread_and_sync_for_cpu():
    assert Timing("x", [1.0, 1.0, 1.0, 1.0, 2.0]).median == 1.0
    assert Timing("x", [1.0, 1.0, 1.0, 1.0]).spread == 0.0
    assert Timing("x", [1.0]).spread != Timing("x", [1.0]).spread  # NaN: too few samples
    sync_for("cpu")()  # host-only: a no-op that does not touch CUDA
    sync_for(torch.device("cpu"))()


# -- verdicts ---------------------------------------------------------------------------------------------
def test_within_compares_factors():
    assert within(1.5, 1.2) and within(1.5, 1.875) and not within(1.5, 1.1) and not within(1.5, 1.9)
    assert not within(0, 1.0) and not within(1.5, float("nan")) and not within(None, 1.0)


def test_impact_claim_cases():
    assert impact_claim("x", "dim-unaligned", claimed=1.5, measured=1.45).verdict == "pass"
    assert impact_claim("x", "dim-unaligned", claimed=1.5, measured=3.0).verdict == "fail"
    assert impact_claim("x", "batch-size-unaligned", claimed=None, measured=1.3).verdict == "info"
    quiet_ok = impact_claim("x", "dim-unaligned", claimed=None, measured=1.05, fired=False)
    missed = impact_claim("x", "dim-unaligned", claimed=None, measured=1.6, fired=False)
    assert quiet_ok.verdict == "pass" and missed.verdict == "fail" and "pays" in missed.note


def test_agreement_claim():
    assert agreement_claim("p", "probe latency", claimed=0.020, measured=0.021).verdict == "pass"
    unsynced = agreement_claim("p", "probe latency", claimed=0.00005, measured=0.020)  # timed launches only
    assert unsynced.verdict == "fail" and "±25%" in unsynced.what
    assert agreement_claim("p", "x", claimed=None, measured=1.0).verdict == "fail"


def test_fires_claim_and_counts():
    claims = [fires_claim("a", "gpu-unused", expected=True, fired=True),
              fires_claim("b", "gpu-unused", expected=False, fired=True),
              Claim("c", "x", "skip")]
    assert [c.verdict for c in claims] == ["pass", "fail", "skip"]
    assert counts(claims) == {"pass": 1, "fail": 1, "info": 0, "skip": 1, "error": 0}
    with pytest.raises(ValueError, match="verdict"):
        Claim("d", "x", "maybe")


def test_claim_to_dict_is_json_safe():
    data = Claim("a", "x", "info", measured={"t": float("nan"), "r": 1.23456789, "cc": (9, 0)}).to_dict()
    assert json.loads(json.dumps(data))["measured"] == {"t": None, "r": 1.235, "cc": [9, 0]}


# -- preset logic -----------------------------------------------------------------------------------------
def _as_detected(preset: DeviceProfile, **changes) -> DeviceProfile:
    return preset.replace(source="detected", **changes)


@pytest.mark.parametrize("key, name, memory", [("h200", "NVIDIA H200", 139.8), ("h100", "NVIDIA H100 80GB HBM3", 79.1),
                                               ("a100", "NVIDIA A100-SXM4-80GB", 79.2), ("t4", "Tesla T4", 14.6)])
def test_compare_profiles_passes_for_what_detect_would_build(key, name, memory):
    from perfcallbacks.presets import match_preset

    preset = DeviceProfile.preset(key)
    assert match_preset(name) is preset
    detected = _as_detected(preset, name=name, memory_gb=memory)
    bad = [c.to_dict() for c in compare_profiles(detected, preset) if c.verdict != "pass"]
    assert not bad or key == "t4", bad  # T4: 15 GiB usable of a 16 GB preset is more than 5% off
    if key == "t4":
        assert [c.id for c in compare_profiles(detected, preset) if c.verdict == "fail"] == ["device/memory"]


def test_compare_profiles_flags_each_mismatch():
    preset = DeviceProfile.preset("h100")
    wrong = _as_detected(preset, compute_capability=(8, 0), memory_gb=40.0,
                         capabilities={**preset.capabilities, "fp8": "unsupported"})
    failed = {c.id for c in compare_profiles(wrong, preset) if c.verdict == "fail"}
    assert failed == {"device/capability", "device/memory", "device/fp8"}
    assert compare_profiles(wrong, None)[0].verdict == "fail"


def test_capability_claims_against_probes():
    h100 = DeviceProfile.preset("h100")
    good = capability_claims(h100, {"bf16_supported": True, "bf16_over_fp32": 9.0, "tf32_over_fp32": 6.0,
                                    "fp8_runs": True, "fp8_over_bf16": 1.6})
    assert [c.verdict for c in good] == ["pass", "pass", "pass"]
    slow = capability_claims(h100, {"bf16_supported": True, "bf16_over_fp32": 1.1, "fp8_runs": False})
    assert [c.verdict for c in slow] == ["fail", "skip", "fail"]
    t4 = DeviceProfile.preset("t4")  # no fp8: a running fp8 GEMM would contradict the preset
    assert capability_claims(t4, {"fp8_runs": True, "fp8_over_bf16": 1.5})[2].verdict == "fail"


# -- results ----------------------------------------------------------------------------------------------
def test_device_slug():
    assert device_slug("NVIDIA H200") == "nvidia-h200"
    assert device_slug("NVIDIA GeForce RTX 4090 (x2)") == "nvidia-geforce-rtx-4090-x2"
    assert device_slug("") == "unknown-device"


def test_write_results_json_and_markdown(tmp_path):
    claims = [impact_claim("dim-unaligned/767", "dim-unaligned", claimed=1.5, measured=1.41, note="a | b"),
              Claim("layout/section", "x", "skip", note="hint not registered")]
    results = build_results(device={"name": "NVIDIA H200"}, environment={"torch": "2.11.0", "cuda": "13.0"},
                            claims=claims, timings={"k": {"a": {"median_s": 0.001}}}, tests={"passed": 3},
                            elapsed_s=12.5, created="2026-12-01T00:00:00Z")
    json_path, md_path = write_results(results, tmp_path / "results")
    assert json_path.name == "nvidia-h200.json" and md_path.name == "nvidia-h200.md"
    data = json.loads(json_path.read_text())
    assert data["schema"] == "perfcallbacks/gpu-check-v1"
    assert data["summary"]["pass"] == 1 and data["summary"]["skip"] == 1
    assert data["claims"][0]["claimed"] == 1.5 and data["claims"][0]["measured"] == 1.41
    md = md_path.read_text()
    assert md.startswith("# GPU check: NVIDIA H200")
    assert "| dim-unaligned/767 |" in md and "a \\| b" in md and "Tests (`tests/gpu`): passed 3" in md
    assert md == markdown_table(data)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["nvidia-h200.json", "nvidia-h200.md"]


def test_parse_pytest_summary():
    text = "....\n=========== 3 passed, 21 skipped, 1 error in 4.20s ===========\n"
    assert parse_pytest_summary(text) == {"passed": 3, "skipped": 21, "errors": 1}
    assert parse_pytest_summary("3 passed, 2 failed in 1.0s") == {"passed": 3, "failed": 2}
    assert parse_pytest_summary("no summary here") == {}


# -- the shared builders, and the GPU tests' expectations through a GPU preset ------------------------------
def test_builders_run_on_cpu():
    assert mlp(16, depth=3, out=4)(torch.randn(2, 16)).shape == (2, 4)
    assert tiny_lm(300, dim=8)(torch.randint(0, 300, (2, 5))).shape == (2, 5, 300)
    assert conv_net(classes=3)(images(2, 16)).shape == (2, 3)
    cl = conv_net(channels_last=True)
    assert cl.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = next(iter(token_loader(8, 12, batch_size=4)))
    assert batch["input_ids"].shape == (4, 12) and batch["attention_mask"].sum() == 48
    x, y = next(iter(vector_loader(8, 6, batch_size=4)))
    assert x.shape == (4, 6) and y.shape == (4,)


def test_bert_encoder_from_config_has_the_attention_asked_for():
    pytest.importorskip("transformers")
    for attn in ("eager", "sdpa"):
        model = bert_encoder(attn, hidden=16, layers=1, heads=2, intermediate=32, vocab=64)
        assert model.config._attn_implementation == attn
        out = model(**next(iter(token_loader(2, 8, batch_size=2, vocab=64))))
        assert out.last_hidden_state.shape == (2, 8, 16)


def _h200_hints(model, loader=None) -> dict:
    report = Advisor(model, loader, target="h200", warn=False).analyze()
    return {h.id: h for h in report.hints}


@pytest.mark.parametrize("width, fires", [(767, True), (768, False), (770, True), (776, False)])
def test_dim_unaligned_expectations_on_an_h200_target(width, fires):
    hint = _h200_hints(mlp(width, 4, dtype=torch.float16)).get("dim-unaligned")
    assert (hint is not None) == fires
    if fires:
        assert hint.evidence["alignment"] == 8 and hint.impact is not None and hint.impact > 1


@pytest.mark.parametrize("vocab, fires", [(30522, True), (30528, False)])
def test_vocab_unaligned_expectations_on_an_h200_target(vocab, fires):
    hint = _h200_hints(tiny_lm(vocab, dim=32, dtype=torch.float16)).get("vocab-unaligned")
    assert (hint is not None) == fires
    if fires:
        assert hint.evidence["suggested"] == 30528 and hint.evidence["layer"] == "lm_head"


def test_token_dim_expectations_on_an_h200_target():
    batch_hint = _h200_hints(mlp(32, 2), vector_loader(254, 32, batch_size=127)).get("batch-size-unaligned")
    assert batch_hint is not None and batch_hint.evidence["suggested"] == [120, 128]
    assert "batch-size-unaligned" not in _h200_hints(mlp(32, 2), vector_loader(256, 32, batch_size=128))
    pytest.importorskip("transformers")
    enc = bert_encoder("sdpa", hidden=16, layers=1, heads=2, intermediate=32)
    seq_hint = _h200_hints(enc, token_loader(16, 127, batch_size=8)).get("seq-len-unaligned")
    assert seq_hint is not None and set(seq_hint.evidence["seq_lens"]) == {127}


def test_tensor_cores_idle_expectation_on_an_h200_target():
    torch.set_float32_matmul_precision("highest")
    assert "tensor-cores-idle" in _h200_hints(mlp(64, 2))


def test_hint_missing_names_what_is_missing():
    assert "not registered" in hint_missing("no-such-hint")
    assert hint_missing("dim-unaligned") is None


def test_benchmarks_without_cuda_skip_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_gpu.main(["--out", str(tmp_path)]) == 0
    assert "every GPU benchmark skipped" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_of_one_section_writes_results(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run_gpu.main(["--dry-run", "--only", "device", "--budget-s", "60", "--out", str(tmp_path)]) == 0
    (json_path,) = tmp_path.glob("*.json")
    data = json.loads(json_path.read_text())
    assert data["summary"]["error"] == 0 and data["summary"]["fail"] == 0  # a dry run judges nothing
    assert any(c["id"] == "device/preset" for c in data["claims"])
    assert "device/gemm" in data["timings"]
