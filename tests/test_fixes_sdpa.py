"""sdpa candidate builder: an HF model's eager attention switched to SDPA on a copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from perfcallbacks import DeviceProfile  # noqa: E402
from perfcallbacks.fixes.candidate import Candidate  # noqa: E402
from perfcallbacks.fixes.sdpa import sdpa_candidate  # noqa: E402
from perfcallbacks.measure import call_model, compare_times, fidelity, padding_mask  # noqa: E402

from _tiny import snapshot, tiny_bert_batch  # noqa: E402

CPU = DeviceProfile.preset("cpu-avx2")


def _bert(impl: str, cls=None):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=64, num_labels=3)
    cls = cls or transformers.BertForSequenceClassification
    return cls._from_config(cfg, attn_implementation=impl).eval()


def test_eager_bert_gets_an_sdpa_copy_within_tolerance():
    model = _bert("eager")
    before = snapshot(model)
    batch = {k: v for k, v in tiny_bert_batch().items() if k != "labels"}
    cand = sdpa_candidate(model, batch, profile=CPU)
    assert isinstance(cand, Candidate) and cand.fix_id == "sdpa" and cand.model is not model
    assert cand.model.config._attn_implementation == "sdpa" and model.config._attn_implementation == "eager"
    assert cand.details["model_class"] == "BertForSequenceClassification"
    with torch.inference_mode():
        ref, new = call_model(model, batch), call_model(cand.model, batch)
    fid = fidelity(ref, new)
    assert not cand.tolerance.violations(fid) and fid["cosine_min"] >= 0.999
    assert set(compare_times({"eager": lambda: call_model(model, batch),
                              "sdpa": lambda: call_model(cand.model, batch)}, repeats=3)) == {"eager", "sdpa"}
    assert snapshot(model) == before


def test_hidden_states_match_on_real_tokens():
    model = _bert("eager", transformers.BertModel)
    batch = {k: v for k, v in tiny_bert_batch().items() if k != "labels"}
    cand = sdpa_candidate(model, batch)
    with torch.inference_mode():
        ref, new = model(**batch), cand.model(**batch)
    fid = fidelity(ref, new, mask=padding_mask(batch, ref.last_hidden_state))
    assert fid["cosine_min"] >= 0.999


def test_wrapped_hf_model_inside_a_module_is_switched():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _bert("eager", transformers.BertModel)

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    wrapper = Wrapper()
    cand = sdpa_candidate(wrapper, tiny_bert_batch())
    assert cand.model.encoder.config._attn_implementation == "sdpa"
    assert wrapper.encoder.config._attn_implementation == "eager"
    assert cand.details["modules"] == ["encoder"]


def test_skipped_when_already_sdpa_not_hf_or_unsupported():
    assert sdpa_candidate(_bert("sdpa"), None).status == "skipped"
    assert "already" in sdpa_candidate(_bert("sdpa"), None).reason
    assert sdpa_candidate(nn.Linear(2, 2), None).status == "skipped"
    model = _bert("eager")

    class NoSdpa(type(model)):
        _supports_sdpa = False

    model.__class__ = NoSdpa
    result = sdpa_candidate(model, None)
    assert result.status == "skipped" and "does not support SDPA" in result.reason
