from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from perfcallbacks import quantize_for_export
from perfcallbacks.measure import fidelity
from tests._tiny import mlp, snapshot, tiny_bert, tiny_bert_batch

_LOAD = """
import sys, json, warnings, torch
warnings.simplefilter("ignore")
assert "perfcallbacks" not in sys.modules
m = torch.jit.load(sys.argv[1])
x = torch.load(sys.argv[2])
print(json.dumps(m(*x).flatten().tolist()))
"""


def test_mlp_artifact_beside_fp32_reloads_in_fresh_process(tmp_path):
    model = mlp(width=256)
    before = snapshot(model)
    x = torch.randn(16, 256)
    fp32 = tmp_path / "model.pt"
    torch.save(model.state_dict(), fp32)
    path = tmp_path / "model.int8.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quantize_for_export(model, path, example_inputs=x, fp32_path=fp32)
    assert result.status == "applied", result.reason
    assert result.ratio is not None and result.ratio < 0.5 and result.int8_bytes == path.stat().st_size
    assert result.fidelity["cosine_mean"] >= 0.99 and snapshot(model) == before
    assert json.loads((tmp_path / "model.int8.pt.json").read_text())["producer"] == "perfcallbacks"
    torch.save((x,), tmp_path / "x.pt")
    out = subprocess.run([sys.executable, "-c", _LOAD, str(path), str(tmp_path / "x.pt")],
                         capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""})
    got = torch.tensor(json.loads(out.stdout)).reshape(16, 10)
    assert torch.nn.functional.cosine_similarity(got, model(x).detach()).mean() > 0.99
    again = quantize_for_export(model, path, example_inputs=x)  # our own file: may be replaced
    assert again.status == "applied"


def test_refuses_to_overwrite_foreign_or_fp32_file(tmp_path):
    fp32 = tmp_path / "model.pt"
    fp32.write_bytes(b"not ours")
    with pytest.raises(ValueError, match="fp32"):
        quantize_for_export(mlp(), fp32, example_inputs=torch.randn(2, 128), fp32_path=fp32)
    with pytest.raises(ValueError, match="not written by perfcallbacks"):
        quantize_for_export(mlp(), fp32, example_inputs=torch.randn(2, 128))
    assert fp32.read_bytes() == b"not ours"
    with pytest.raises(TypeError, match="example_inputs"):
        quantize_for_export(mlp(), tmp_path / "x.pt", example_inputs="text")


def test_hf_model_with_dict_inputs(tmp_path):
    model = tiny_bert()
    batch = {k: v for k, v in tiny_bert_batch().items() if k != "labels"}
    result = quantize_for_export(model, tmp_path / "bert.int8.pt", example_inputs=batch)
    assert result.status == "applied", result.reason
    assert result.inputs == ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = torch.jit.load(str(tmp_path / "bert.int8.pt"))
    assert reloaded(batch["input_ids"], batch["attention_mask"]).shape == (8, 12, 32)


def test_impossible_tolerance_writes_nothing(tmp_path):
    from perfcallbacks.fixes import QuantTolerance

    path = tmp_path / "m.int8.pt"
    result = quantize_for_export(mlp(), path, example_inputs=torch.randn(8, 128),
                                 tolerance=QuantTolerance(max_abs_error=0.0, max_fp32_fraction=0.0))
    assert result.status == "rejected" and not path.exists()
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_minilm_artifact_small_and_faithful_in_fresh_process(tmp_path, minilm_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    texts = [d for d in (torch.nn.Linear.__doc__, torch.cat.__doc__, torch.stack.__doc__, torch.nn.GELU.__doc__,
                         torch.nn.LayerNorm.__doc__, torch.matmul.__doc__, torch.softmax.__doc__,
                         torch.nn.Embedding.__doc__) if d]
    batch = dict(tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
    result = quantize_for_export(model, tmp_path / "minilm.int8.pt", example_inputs=batch)
    assert result.status == "applied", result.reason
    assert result.ratio < 0.70
    torch.save(tuple(batch[k] for k in result.inputs), tmp_path / "x.pt")
    out = subprocess.run([sys.executable, "-c", _LOAD, str(tmp_path / "minilm.int8.pt"), str(tmp_path / "x.pt")],
                         capture_output=True, text=True, check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    with torch.inference_mode():
        ref = model(**batch).last_hidden_state
    got = torch.tensor(json.loads(out.stdout)).reshape(ref.shape)
    mask = batch["attention_mask"]
    assert fidelity(ref, got, mask=mask)["cosine_mean"] >= 0.99  # token states, padding left out
    pooled = lambda h: (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)  # noqa: E731
    assert torch.nn.functional.cosine_similarity(pooled(got), pooled(ref)).mean() >= 0.99  # embeddings
