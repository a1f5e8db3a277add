from __future__ import annotations

import dataclasses

import pytest
import torch

from perfcallbacks.measure import (
    call_model,
    compare_times,
    concat_batch,
    eval_mode,
    fidelity,
    measure_threads,
    median_time,
    output_kind,
    output_tensor,
    padding_mask,
)
from tests._tiny import tiny_bert, tiny_bert_batch


class TwoArgs(torch.nn.Module):
    def forward(self, x):
        return x * 2


def test_call_model_tensor_tuple_dict_and_dataclass():
    lin = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    assert call_model(lin, x).shape == (3, 2)
    assert call_model(lin, (x, torch.zeros(3))).shape == (3, 2)  # (x, y) batch, forward(x)
    assert torch.equal(call_model(TwoArgs(), [x]), x * 2)

    @dataclasses.dataclass
    class Batch:
        input_ids: torch.Tensor
        attention_mask: torch.Tensor
        labels: torch.Tensor

    model, batch = tiny_bert(), tiny_bert_batch()
    out = call_model(model, batch)  # "labels" is not a BertModel.forward argument: filtered
    assert out.last_hidden_state.shape == (8, 12, 32)
    out2 = call_model(model, Batch(**batch))
    assert torch.allclose(out.last_hidden_state, out2.last_hidden_state)


def test_call_model_batch_encoding():
    from transformers import BatchEncoding

    model, batch = tiny_bert(), tiny_bert_batch()
    assert call_model(model, BatchEncoding(batch)).last_hidden_state.shape[0] == 8


def test_output_tensor_and_kind():
    t = torch.ones(2, 3)
    assert output_tensor(t) is t
    assert output_tensor((None, [t])) is t
    assert output_tensor({"loss": torch.tensor(1.0), "logits": t}) is t
    out = tiny_bert()(**{k: v for k, v in tiny_bert_batch().items() if k != "labels"})
    assert output_tensor(out) is out.last_hidden_state
    assert output_kind(out) == "states" and output_kind(t) == "scores"
    with pytest.raises(TypeError, match="output_tensor"):
        output_tensor("nothing here")


def test_fidelity_identical_and_perturbed():
    ref = torch.randn(16, 10)
    same = fidelity(ref, ref.clone())
    assert same["cosine_mean"] == pytest.approx(1.0) and same["argmax_agreement"] == 1.0
    assert same["max_abs_error"] == 0.0
    flipped = fidelity(ref, -ref)
    assert flipped["cosine_min"] == pytest.approx(-1.0) and flipped["max_abs_error"] > 0
    assert "argmax_agreement" not in fidelity({"last_hidden_state": ref}, {"last_hidden_state": ref})
    with pytest.raises(ValueError, match="shapes differ"):
        fidelity(ref, ref[:2])


def test_timing_helpers_and_argument_errors():
    assert median_time(lambda: None, repeats=3, warmup=0) >= 0
    assert set(compare_times({"a": lambda: None, "b": lambda: None}, repeats=2)) == {"a", "b"}
    with pytest.raises(ValueError, match="repeats"):
        median_time(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="candidates"):
        measure_threads(torch.nn.Linear(2, 2), torch.zeros(1, 2), [0])


def test_measure_threads_restores_threads_and_mode():
    before = torch.get_num_threads()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout()).train()
    timings = measure_threads(model, torch.randn(4, 8), [1, 2], repeats=2)
    assert set(timings) == {1, 2} and all(t >= 0 for t in timings.values())
    assert torch.get_num_threads() == before
    assert model.training and model[1].training


def test_eval_mode_restores_mixed_flags():
    model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Dropout()).train()
    model[1].eval()
    with eval_mode(model):
        assert not model.training and not model[0].training
    assert model.training and model[0].training and not model[1].training


def test_concat_batch():
    batch = tiny_bert_batch(batch=4)
    big = concat_batch(batch, 3)
    assert big["input_ids"].shape == (12, 12) and torch.equal(big["input_ids"][4:8], batch["input_ids"])
    assert concat_batch((torch.zeros(2, 3), "meta"), 2)[1] == "meta"
    with pytest.raises(ValueError, match="times"):
        concat_batch(batch, 0)


def test_padding_mask_leaves_pad_positions_out():
    ref = torch.randn(2, 4, 8)
    new = ref.clone()
    new[1, 2:] = -ref[1, 2:]  # only padded positions differ
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert padding_mask({"attention_mask": mask}, ref) is mask
    assert padding_mask({"attention_mask": mask}, torch.zeros(3, 4)) is None
    assert fidelity(ref, new, mask=mask)["cosine_min"] == pytest.approx(1.0)
    assert fidelity(ref, new)["cosine_min"] < 0.9


def test_bare_hidden_states_are_states_not_scores():
    from transformers import BertConfig, BertModel

    from perfcallbacks.measure import output_kind

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 vocab_size=100))
    wrapper = torch.nn.ModuleDict({"model": model})
    states = torch.randn(2, 5, 32)
    assert output_kind(states, wrapper) == "states"
    assert output_kind(torch.randn(2, 5, 7), wrapper) == "scores"  # token logits over 7 labels
    assert output_kind(states) == "scores"  # without the model nothing says what it is


def test_forward_times_synchronise_around_every_batch():
    # perfhints tune times its corpus with this: on an accelerator an unsynchronised timer measures launches.
    from perfcallbacks.measure import forward_times

    events: list[str] = []
    model = torch.nn.Linear(4, 2)
    model.register_forward_pre_hook(lambda m, a: events.append("forward"))
    times = forward_times(model, [torch.randn(3, 4)] * 3, sync=lambda: events.append("sync"))
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert events == ["sync", "forward", "sync"] * 3
