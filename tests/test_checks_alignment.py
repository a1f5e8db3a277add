"""Alignment checks: dim-unaligned, vocab-unaligned, batch-size-unaligned, seq-len-unaligned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perfcallbacks import Advisor
from perfcallbacks.checks.alignment import compute_dtype
from perfcallbacks.model_facts import vocab_projection
from perfcallbacks.context import BatchStats


def _adv(model=None, *, target=None, local=None, suppress=(), **fields):
    adv = Advisor(model, target=target, local=local, suppress=suppress, warn=False)
    for key, value in fields.items():
        setattr(adv.context, key, value)
    return adv


def _stack(width: int, head: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, head))


def test_dim_unaligned_fires_on_avx2_with_nearest_sizes(cpu_profile):
    adv = _adv(_stack(767), local=cpu_profile)
    adv.run_checks("setup")
    hint = adv.hints["dim-unaligned"]
    assert hint.evidence["alignment"] == 8 and hint.evidence["dtype"] == "fp32"
    assert hint.evidence["widths"] == {"767": [760, 768]}
    assert hint.evidence["unaligned_flop_share"] > 0.99
    assert hint.evidence["suggested"] == {"767": 768}
    assert "767 -> 768 (model.0 out, model.2 in, model.2 out)" in hint.message  # model.0 in: data features
    assert "767 -> 768" in hint.fix and " or " not in hint.fix  # one value, layers named
    assert hint.impact == pytest.approx(1.35, abs=0.01)


def test_boring_model_gets_no_dim_unaligned(cpu_profile):
    # Lightning's BoringModel: Linear(32, 2). 32 input features come from the data, 2 outputs from the task.
    for kwargs in ({"local": cpu_profile}, {"local": cpu_profile, "target": "a100"},
                   {"local": cpu_profile, "target": "cpu-avx512"}):
        adv = _adv(nn.Linear(32, 2), **kwargs)
        adv.run_checks("setup")
        assert "dim-unaligned" not in adv.hints, kwargs


def test_task_and_data_fixed_widths_are_never_asked_to_change(cpu_profile):
    # 30 input features and 3 classes are fixed; only the hidden 767 is the model's choice.
    model = nn.Sequential(nn.Linear(30, 767), nn.ReLU(), nn.Linear(767, 767), nn.ReLU(), nn.Linear(767, 3))
    adv = _adv(model, local=cpu_profile)
    adv.run_checks("setup")
    hint = adv.hints["dim-unaligned"]
    assert set(hint.evidence["widths"]) == {"767"}
    assert hint.evidence["task_fixed"] == {"model.0": ["in"], "model.4": ["out"]}
    assert "30" not in hint.evidence["widths"] and "3 ->" not in hint.fix
    # Nothing but fixed widths unaligned: no hint at all.
    quiet = _adv(nn.Sequential(nn.Linear(30, 768), nn.ReLU(), nn.Linear(768, 3)), local=cpu_profile)
    quiet.run_checks("setup")
    assert "dim-unaligned" not in quiet.hints


def test_hf_classifier_head_of_num_labels_is_fixed(cpu_profile):
    import transformers

    from perfcallbacks.model_facts import task_fixed_sides

    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=128, vocab_size=300, num_labels=5)
    model = transformers.BertForSequenceClassification(config)
    fixed = task_fixed_sides(model)
    assert fixed["classifier"] == {"out"}
    assert not any("in" in sides for sides in fixed.values())  # an embedding comes first: widths are free


def test_dim_unaligned_quiet_on_avx512_where_measured_gain_is_small(cpu_profile):
    # benchmarks/impacts.md: on AVX-512 767 vs 768 measured 1.01-1.08x, below the 1.10 threshold.
    adv = _adv(_stack(767), local=cpu_profile, target="cpu-avx512")
    adv.run_checks("setup")
    assert "dim-unaligned" not in adv.hints


def test_dim_unaligned_ignores_a_small_classifier_head(cpu_profile):
    # 768-wide stack with a 3-class head: the head holds < 1% of the FLOPs.
    adv = _adv(_stack(768, head=3), local=cpu_profile)
    adv.run_checks("setup")
    assert "dim-unaligned" not in adv.hints


def test_dim_unaligned_quiet_where_device_does_not_care_and_suppressed(cpu_profile):
    gtx = _adv(_stack(767), target="gtx-950m", local=cpu_profile)  # no Tensor Cores: alignment 1
    gtx.run_checks("setup")
    assert "dim-unaligned" not in gtx.hints
    sup = _adv(_stack(767), local=cpu_profile, suppress=["dim-unaligned"])
    sup.run_checks("setup")
    assert "dim-unaligned" not in sup.hints


def test_dim_unaligned_on_a100_judged_at_bf16(cpu_profile):
    torch.set_float32_matmul_precision("highest")
    adv = _adv(_stack(1020), target="a100", local=cpu_profile)
    assert compute_dtype(adv.context) == "bf16"
    adv.run_checks("setup")
    hint = adv.hints["dim-unaligned"]
    assert hint.evidence["widths"] == {"1020": [1016, 1024]} and hint.impact == pytest.approx(1.5, abs=0.01)
    assert hint.evidence["suggested"] == {"1020": 1024} and "1020 -> 1024" in hint.fix


@pytest.mark.slow
def test_minilm_does_not_fire_dim_or_vocab_on_avx2(minilm_dir, cpu_profile):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_dir)
    adv = _adv(model, local=cpu_profile)
    adv.run_checks("setup")
    assert "dim-unaligned" not in adv.hints and "vocab-unaligned" not in adv.hints
    assert vocab_projection(model) is None  # input embedding (30522) is not an output projection


def _bert(cls_name: str, vocab: int):
    import transformers

    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=vocab)
    return getattr(transformers, cls_name)(config)


def test_vocab_unaligned_fires_for_tied_lm_head(cpu_profile):
    adv = _adv(_bert("BertForMaskedLM", 1000), local=cpu_profile, framework="hf")
    adv.run_checks("setup")
    hint = adv.hints["vocab-unaligned"]
    assert hint.evidence["vocab_size"] == 1000 and hint.evidence["suggested"] == 1024
    assert "pad_to_multiple_of=64" in hint.fix
    assert hint.evidence["layer"].endswith("decoder")


def test_vocab_unaligned_plain_torch_tied_head(cpu_profile):
    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, 64)
            self.body = nn.Linear(64, 64)
            self.lm_head = nn.Linear(64, 1000, bias=False)
            self.lm_head.weight = self.embed.weight

    adv = _adv(TinyLM(), local=cpu_profile)
    adv.run_checks("setup")
    assert adv.hints["vocab-unaligned"].evidence["vocab_size"] == 1000
    assert "dim-unaligned" not in adv.hints  # the vocabulary is not reported twice


def test_vocab_unaligned_quiet_for_encoder_aligned_vocab_and_suppressed(cpu_profile):
    for model in (_bert("BertModel", 1000), _bert("BertForMaskedLM", 1024)):
        adv = _adv(model, local=cpu_profile)
        adv.run_checks("setup")
        assert "vocab-unaligned" not in adv.hints
    adv = _adv(_bert("BertForMaskedLM", 1000), local=cpu_profile, suppress=["vocab-unaligned"])
    adv.run_checks("setup")
    assert "vocab-unaligned" not in adv.hints


def _batches(sizes, seq_lens):
    return [BatchStats(batch_size=b, seq_len=s) for b, s in zip(sizes, seq_lens)]


def test_batch_size_unaligned_on_a100(cpu_profile):
    adv = _adv(target="a100", local=cpu_profile, batches=_batches([30, 30, 30, 12], [None] * 4))
    adv.run_checks("warmup")
    hint = adv.hints["batch-size-unaligned"]
    assert hint.evidence["batch_size"] == 30 and hint.evidence["suggested"] == [24, 32]


def test_batch_size_unaligned_quiet_on_cpu_aligned_and_suppressed(cpu_profile):
    for kwargs in ({"local": cpu_profile, "batches": _batches([30] * 3, [None] * 3)},
                   {"target": "a100", "local": cpu_profile, "batches": _batches([32, 32, 7], [None] * 3)},
                   {"target": "a100", "local": cpu_profile, "batches": _batches([30] * 3, [None] * 3),
                    "suppress": ["batch-size-unaligned"]}):
        adv = _adv(**kwargs)
        adv.run_checks("warmup")
        assert "batch-size-unaligned" not in adv.hints


def test_seq_len_unaligned_on_h100(cpu_profile):
    adv = _adv(target="h100", local=cpu_profile, batches=_batches([32] * 4, [37, 45, 61, 40]), framework="hf")
    adv.run_checks("warmup")
    hint = adv.hints["seq-len-unaligned"]
    assert hint.evidence["unaligned_share"] == 0.75 and "pad_to_multiple_of=8" in hint.fix


def test_seq_len_unaligned_quiet_when_aligned_or_configured(cpu_profile):
    aligned = _adv(target="h100", local=cpu_profile, batches=_batches([32] * 3, [40, 48, 64]))
    aligned.run_checks("warmup")
    assert "seq-len-unaligned" not in aligned.hints
    configured = _adv(target="h100", local=cpu_profile, batches=_batches([32] * 3, [37, 45, 61]),
                      settings={"pad_to_multiple_of": 8})
    configured.run_checks("warmup")
    assert "seq-len-unaligned" not in configured.hints
    cpu = _adv(local=cpu_profile, batches=_batches([32] * 3, [37, 45, 61]))
    cpu.run_checks("warmup")
    assert "seq-len-unaligned" not in cpu.hints
    sup = _adv(target="h100", local=cpu_profile, batches=_batches([32] * 3, [37, 45, 61]),
               suppress=["seq-len-unaligned"])
    sup.run_checks("warmup")
    assert "seq-len-unaligned" not in sup.hints
