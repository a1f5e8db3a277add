"""The Lightning examples run end to end and say what they claim (small settings)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning.pytorch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def examples_path(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLES / "lightning"))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(tmp_path)  # runs/ goes under tmp_path
    yield
    for name in ("what_if_a100", "text_classification", "_corpus"):
        sys.modules.pop(name, None)


def test_corpus_is_balanced_and_labelled(examples_path):
    from _corpus import build_corpus, package_docstrings

    corpus = build_corpus(("torch", "numpy"), per_label=20, seed=1)
    assert len(corpus) == 40 and corpus.labels.count(0) == corpus.labels.count(1) == 20
    assert corpus.label_names == ["torch", "numpy"]
    assert all(isinstance(t, str) and len(t) >= 60 for t in corpus.texts)
    train, val = corpus.split(0.75)
    assert (len(train), len(val)) == (30, 10)
    assert build_corpus(("torch", "numpy"), per_label=20, seed=1).texts == corpus.texts  # deterministic
    with pytest.raises(ValueError, match="not installed"):
        package_docstrings("no_such_package_xyz")


@pytest.mark.slow
def test_what_if_a100_fires_then_goes_quiet(examples_path):
    from what_if_a100 import main

    result = main(["--steps", "4"])
    assert {"tensor-cores-idle", "dim-unaligned", "batch-size-unaligned"} <= set(result["planned"])
    assert not {"tensor-cores-idle", "dim-unaligned", "batch-size-unaligned"} & set(result["fixed"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::perfcallbacks.hints.PerfHintWarning")  # the example warns (to the user)
def test_text_classification_naive_run_finds_padding(examples_path, minilm_dir):
    from text_classification import main

    result = main(["--steps", "3", "--warmup-steps", "2", "--per-label", "12", "--out", "runs"])
    assert "padding-waste" in result["naive_hints"] or "static-padding" in result["naive_hints"]
    assert Path("runs/naive/perf_hints.json").is_file()
