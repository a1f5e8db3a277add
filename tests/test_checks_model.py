"""smaller-model-available and the model-shape helpers."""

from __future__ import annotations

import pytest
import transformers
from torch import nn

from perfcallbacks import Advisor
from perfcallbacks.model_facts import gemm_layers, is_quantized, linear_share


def _bert(cls_name: str, layers: int, hidden: int, **extra):
    config = transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=12,
                                     intermediate_size=64, vocab_size=64, max_position_embeddings=32, **extra)
    return getattr(transformers, cls_name)(config)


def _run(model, *, suppress=(), settings=None, framework="hf", local=None):
    adv = Advisor(model, warn=False, suppress=suppress, framework=framework, local=local)
    adv.context.settings.update(settings or {})
    adv.run_checks("setup")
    return adv.hints


def test_smaller_model_fires_for_bert_base_classifier(cpu_profile):
    hint = _run(_bert("BertForSequenceClassification", 12, 768), local=cpu_profile)["smaller-model-available"]
    assert hint.evidence["num_layers"] == 12 and hint.evidence["hidden_size"] == 768
    assert hint.evidence["model_class"] == "BertForSequenceClassification"
    assert hint.impact == 2.0 and "distilbert-base-uncased" in hint.fix


def test_smaller_model_uses_task_setting_for_bare_encoders(cpu_profile):
    encoder = _bert("BertModel", 12, 768)
    assert "smaller-model-available" not in _run(encoder, local=cpu_profile)  # not known to classify
    assert "smaller-model-available" in _run(encoder, settings={"task": "sequence-classification"},
                                             local=cpu_profile)


def test_smaller_model_quiet_for_small_distilled_or_suppressed(cpu_profile):
    assert "smaller-model-available" not in _run(_bert("BertForSequenceClassification", 6, 768), local=cpu_profile)
    distilled = _bert("BertForSequenceClassification", 12, 768)
    distilled.config._name_or_path = "someone/distilbert-like-12"
    assert "smaller-model-available" not in _run(distilled, local=cpu_profile)
    assert "smaller-model-available" not in _run(_bert("BertForSequenceClassification", 12, 768),
                                                 suppress=["smaller-model-available"], local=cpu_profile)
    assert "smaller-model-available" not in _run(nn.Linear(768, 2), local=cpu_profile)  # no config


def test_gemm_layers_shares_and_quantized_detection():
    import torch

    model = nn.Sequential(nn.Linear(100, 100), nn.Conv1d(10, 10, 10), nn.Linear(100, 2))
    layers = gemm_layers(model)
    assert [layer.kind for layer in layers] == ["linear", "conv", "linear"]
    assert sum(layer.share for layer in layers) == pytest.approx(1.0)
    assert linear_share(model) == pytest.approx((10000 + 200) / (10000 + 1000 + 200))
    assert not is_quantized(model)
    quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(8, 8)), {nn.Linear})
    assert is_quantized(quantized) and gemm_layers(quantized)[0].in_dim == 8
