"""The CNN example runs end to end and reports what it measured (small settings)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from perfcallbacks import PerfHintWarning

pytest.importorskip("lightning.pytorch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLES / "lightning"))
    monkeypatch.chdir(tmp_path)
    import image_classification

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", PerfHintWarning)  # the example's hints are what it shows
        yield image_classification
    sys.modules.pop("image_classification", None)


def test_images_are_learnable_and_deterministic(example):
    a, b = example.StripeImages(16, 8, seed=3), example.StripeImages(16, 8, seed=3)
    assert a.images.shape == (16, 3, 8, 8) and (a.images == b.images).all() and set(a.labels.tolist()) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_naive_run_measures_channels_last_and_plans_cudnn_for_a100(example):
    result = example.main(["--steps", "6", "--warmup-steps", "4", "--batch-size", "16", "--image-size", "16",
                           "--width", "16", "--target", "a100", "--out", "runs"])
    assert "cudnn-benchmark-off" in result["naive_hints"]
    # Judged for the A100 target: the CPU measurement is not used as the A100's number.
    hint = next(h for h in result["naive_report"]["hints"] if h["id"] == "channels-last-off")
    assert hint["impact"] is None
    assert Path("runs/naive/perf_hints.json").is_file()


@pytest.mark.slow
def test_auto_apply_predict_records_the_channels_last_decision(example):
    result = example.main(["--steps", "4", "--warmup-steps", "2", "--batch-size", "16", "--image-size", "16",
                           "--width", "16", "--auto-apply", "--predict-batches", "12", "--out", "runs"])
    fixes = {f["id"]: f for f in result["fixes"]}
    assert "channels-last" in fixes
    cl = fixes["channels-last"]
    assert cl["status"] in ("applied", "rejected", "skipped")
    if cl["status"] == "applied":
        assert cl["speedup"] > 1.0 and cl["fidelity"]["cosine_min"] >= 0.9999
