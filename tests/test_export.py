from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from perfcallbacks import quantize_for_export
from perfcallbacks.fixes.int8 import available_backends
from perfcallbacks.measure import fidelity
from tests._tiny import mlp, snapshot, tiny_bert, tiny_bert_batch

# What a user's serving process does: torch alone, and no deprecation warning may come out of the load.
_LOAD = """
import sys, json, warnings
warnings.simplefilter("error", FutureWarning)
warnings.simplefilter("error", DeprecationWarning)
import torch
assert "perfcallbacks" not in sys.modules
m = torch.export.load(sys.argv[1]).module()
x = torch.load(sys.argv[2])
print(json.dumps(m(*x).flatten().tolist()))
assert "perfcallbacks" not in sys.modules and "transformers" not in sys.modules
"""
_LOAD_ONNX = """
import sys, json, warnings
warnings.simplefilter("error", FutureWarning)
warnings.simplefilter("error", DeprecationWarning)
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1])
x = np.load(sys.argv[2])
print(json.dumps(s.run(None, {i.name: x[i.name] for i in s.get_inputs()})[0].flatten().tolist()))
"""


def _fresh(script: str, *argv, cwd) -> str:
    out = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", script, *map(str, argv)],
                         capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_mlp_artifact_beside_fp32_reloads_in_fresh_process(tmp_path):
    model = mlp(width=256)
    before = snapshot(model)
    x = torch.randn(16, 256)
    fp32 = tmp_path / "model.pt"
    torch.save(model.state_dict(), fp32)
    path = tmp_path / "model.int8.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = quantize_for_export(model, path, example_inputs=x, fp32_path=fp32)
    assert result.status == "applied", result.reason
    assert result.details["format"] == "pt2" and result.details["load"].startswith("torch.export.load(")
    assert result.ratio is not None and result.ratio < 0.5 and result.int8_bytes == path.stat().st_size
    assert result.fidelity["cosine_mean"] >= 0.99 and snapshot(model) == before
    meta = json.loads((tmp_path / "model.int8.pt2.json").read_text())
    assert meta["producer"] == "perfcallbacks" and meta["format"] == "pt2"
    torch.save((x[:3],), tmp_path / "x.pt")  # another batch size than the example: shapes are not baked in
    got = torch.tensor(json.loads(_fresh(_LOAD, path, tmp_path / "x.pt", cwd=tmp_path))).reshape(3, 10)
    assert torch.nn.functional.cosine_similarity(got, model(x[:3]).detach()).mean() > 0.99
    again = quantize_for_export(model, path, example_inputs=x)  # our own file: may be replaced
    assert again.status == "applied"


def test_suffix_must_match_the_format(tmp_path):
    with pytest.raises(ValueError, match=r"\.pt2"):
        quantize_for_export(mlp(), tmp_path / "model.int8.pt", example_inputs=torch.randn(2, 128))
    with pytest.raises(ValueError, match=r"\.onnx"):
        quantize_for_export(mlp(), tmp_path / "model.int8.pt2", example_inputs=torch.randn(2, 128), format="onnx")
    with pytest.raises(ValueError, match="format"):
        quantize_for_export(mlp(), tmp_path / "model.int8.pt2", example_inputs=torch.randn(2, 128), format="tflite")
    with pytest.raises(ValueError, match="backend"):
        quantize_for_export(mlp(), tmp_path / "model.int8.pt2", example_inputs=torch.randn(2, 128), backend="x")
    assert not list(tmp_path.iterdir())


def test_torchscript_only_when_asked(tmp_path):
    model = mlp(width=256)
    result = quantize_for_export(model, tmp_path / "model.int8.pt", example_inputs=torch.randn(8, 256),
                                 format="torchscript")
    if not {"fbgemm", "onednn"} & set(available_backends()):
        assert result.status == "skipped" and "pt2" in result.reason
        return
    assert result.status == "applied" and result.details["format"] == "torchscript", result.reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.jit.load(str(tmp_path / "model.int8.pt"))(torch.randn(2, 256)).shape == (2, 10)


def test_onnx_without_the_extra_is_skipped_with_the_install_line(tmp_path, monkeypatch):
    from perfcallbacks.fixes import export

    monkeypatch.setattr(export, "ONNX_MODULES", ("perfcallbacks_no_such_module",))
    result = quantize_for_export(mlp(), tmp_path / "m.int8.onnx", example_inputs=torch.randn(4, 128))
    assert result.status == "skipped" and "perfcallbacks[onnx]" in result.reason
    assert not (tmp_path / "m.int8.onnx").exists()


def test_onnx_artifact_reloads_in_fresh_process(tmp_path):
    from perfcallbacks.fixes.export import onnx_problem

    if onnx_problem():
        pytest.skip(onnx_problem())
    import numpy as np

    model = tiny_bert().eval()
    before = snapshot(model)
    batch = {k: v for k, v in tiny_bert_batch().items() if k != "labels"}
    result = quantize_for_export(model, tmp_path / "bert.int8.onnx", example_inputs=batch)
    assert result.status == "applied" and result.details["format"] == "onnx", result.reason
    assert snapshot(model) == before and result.fidelity["cosine_mean"] >= 0.99
    small = {k: v[:3, :7].numpy() for k, v in batch.items()}  # other batch and sequence sizes
    np.savez(tmp_path / "x.npz", **small)
    got = torch.tensor(json.loads(_fresh(_LOAD_ONNX, tmp_path / "bert.int8.onnx", tmp_path / "x.npz",
                                         cwd=tmp_path))).reshape(3, 7, 32)
    with torch.inference_mode():
        ref = model(**{k: torch.from_numpy(v) for k, v in small.items()})[0]
    assert fidelity(ref, got, mask=torch.from_numpy(small["attention_mask"]))["cosine_mean"] >= 0.99


def test_refuses_to_overwrite_foreign_or_fp32_file(tmp_path):
    fp32 = tmp_path / "model.pt"
    fp32.write_bytes(b"not ours")
    with pytest.raises(ValueError, match="fp32"):
        quantize_for_export(mlp(), fp32, example_inputs=torch.randn(2, 128), fp32_path=fp32)
    with pytest.raises(ValueError, match="not written by perfcallbacks"):
        quantize_for_export(mlp(), fp32, example_inputs=torch.randn(2, 128))
    assert fp32.read_bytes() == b"not ours"
    with pytest.raises(TypeError, match="example_inputs"):
        quantize_for_export(mlp(), tmp_path / "x.pt2", example_inputs="text")


def test_hf_model_with_dict_inputs(tmp_path):
    model = tiny_bert()
    batch = {k: v for k, v in tiny_bert_batch().items() if k != "labels"}
    result = quantize_for_export(model, tmp_path / "bert.int8.pt2", example_inputs=batch)
    assert result.status == "applied", result.reason
    assert result.inputs == ["input_ids", "attention_mask"]
    reloaded = torch.export.load(str(tmp_path / "bert.int8.pt2")).module()
    assert reloaded(batch["input_ids"], batch["attention_mask"]).shape == (8, 12, 32)
    assert reloaded(batch["input_ids"][:1, :5], batch["attention_mask"][:1, :5]).shape == (1, 5, 32)


def test_impossible_tolerance_writes_nothing(tmp_path):
    from perfcallbacks.fixes import QuantTolerance

    path = tmp_path / "m.int8.pt2"
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
    result = quantize_for_export(model, tmp_path / "minilm.int8.pt2", example_inputs=batch)
    assert result.status == "applied", result.reason
    assert result.ratio < 0.40  # int8 Linear weights and word embeddings: ~0.27 of the fp32 bytes
    torch.save(tuple(batch[k] for k in result.inputs), tmp_path / "x.pt")
    out = _fresh(_LOAD, tmp_path / "minilm.int8.pt2", tmp_path / "x.pt", cwd=tmp_path)
    with torch.inference_mode():
        ref = model(**batch).last_hidden_state
    got = torch.tensor(json.loads(out)).reshape(ref.shape)
    mask = batch["attention_mask"]
    assert fidelity(ref, got, mask=mask)["cosine_mean"] >= 0.99  # token states, padding left out
    pooled = lambda h: (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)  # noqa: E731
    assert torch.nn.functional.cosine_similarity(pooled(got), pooled(ref)).mean() >= 0.99  # embeddings
