"""Padding checks: padding-waste and static-padding, their cost model and version-specific fixes."""

from __future__ import annotations

import random

import pytest
import torch

from perfcallbacks import Advisor
from perfcallbacks.checks.padding import (
    batch_cost,
    grouped_cost,
    pad_fraction,
    predicted_grouping_speedup,
)
from perfcallbacks.context import BatchStats
from perfcallbacks.observe import batch_stats


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(128, max(3, int(rng.lognormvariate(3.0, 0.6)))) for _ in range(n)]


def _batches(lengths: list[int], size: int, padded: int | None = None) -> list[BatchStats]:
    """Real batch_stats of token batches with attention masks (static when ``padded`` is set)."""
    out = []
    for start in range(0, len(lengths), size):
        rows = lengths[start:start + size]
        width = padded or max(rows)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, n in enumerate(rows):
            mask[i, :n] = 1
        out.append(batch_stats({"input_ids": mask * 7, "attention_mask": mask}))
    return out


def _adv(batches, *, phase_batches="batches", suppress=(), framework="torch", settings=None, **kw):
    adv = Advisor(warn=False, suppress=suppress, framework=framework, **kw)
    setattr(adv.context, phase_batches, batches)
    adv.context.settings.update(settings or {})
    return adv


def test_cost_model_linear_and_attention_terms():
    assert batch_cost(4, 100) == 400
    assert batch_cost(4, 96, hidden=16) == pytest.approx(4 * 96 * (1 + 96 / 96))
    assert grouped_cost([1, 9, 2, 8, 5], batch_size=2) == 2 * 9 + 2 * 5 + 1 * 1


def test_predicted_speedup_is_token_ratio_without_hidden():
    lengths = _lengths(256)
    static = _batches(lengths, 32, padded=128)
    predicted = predicted_grouping_speedup(static)
    expected = (len(lengths) * 128) / grouped_cost(lengths, 32)
    assert predicted == pytest.approx(expected, abs=0.01)
    assert predicted_grouping_speedup(static, hidden=384) > predicted  # attention makes long padding dearer


def test_padding_waste_fires_on_max_length_padding(cpu_profile):
    batches = _batches(_lengths(320), 32, padded=128)
    adv = _adv(batches, local=cpu_profile)
    adv.run_checks("warmup")
    hint = adv.hints["padding-waste"]
    assert hint.evidence["pad_fraction"] == pytest.approx(pad_fraction(batches), abs=1e-4)
    assert hint.evidence["pad_fraction"] > 0.6 and hint.evidence["batches_seen"] == 10
    assert hint.evidence["grouped_pad_fraction"] < 0.25
    assert hint.impact == pytest.approx(predicted_grouping_speedup(batches, batch_size=32), abs=0.01)
    assert hint.impact > 2.5
    assert "LengthGroupedBatchSampler" in hint.fix and "DataCollatorWithPadding" in hint.fix


def test_padding_waste_fires_on_dynamic_arrival_order_but_static_does_not(cpu_profile):
    adv = _adv(_batches(_lengths(320), 32), local=cpu_profile,
               settings={"collator": "transformers.data.data_collator.DataCollatorWithPadding"})
    adv.run_checks("warmup")
    assert "static-padding" not in adv.hints
    hint = adv.hints["padding-waste"]
    assert hint.evidence["pad_fraction"] > 0.25
    assert "DataCollatorWithPadding" not in hint.fix  # already dynamic: only grouping is advised
    assert "LengthGroupedBatchSampler" in hint.fix


def test_padding_waste_quiet_for_length_grouped_batches_and_suppressed(cpu_profile):
    grouped = _batches(sorted(_lengths(320), reverse=True), 32)
    adv = _adv(grouped, local=cpu_profile)
    adv.run_checks("warmup")
    assert "padding-waste" not in adv.hints and "static-padding" not in adv.hints
    sup = _adv(_batches(_lengths(320), 32, padded=128), local=cpu_profile,
               suppress=["padding-waste", "static-padding"])
    sup.run_checks("warmup")
    assert not {"padding-waste", "static-padding"} & set(sup.hints)


@pytest.mark.parametrize(("version", "flag"), [("4.46.3", "group_by_length=True"),
                                               ("5.24.0", 'train_sampling_strategy="group_by_length"')])
def test_hf_fix_matches_installed_transformers_version(cpu_profile, version, flag):
    adv = _adv(_batches(_lengths(320), 32, padded=128), local=cpu_profile, framework="hf",
               settings={"transformers_version": version})
    adv.run_checks("warmup")
    fix = adv.hints["padding-waste"].fix
    assert flag in fix and "data_collator=DataCollatorWithPadding(tokenizer)" in fix
    other = "train_sampling_strategy" if flag.startswith("group") else "group_by_length=True"
    assert other not in fix


def test_hf_fix_skips_sampling_flag_when_already_grouped(cpu_profile):
    adv = _adv(_batches(_lengths(320), 32, padded=128), local=cpu_profile, framework="hf",
               settings={"sampling_strategy": "group_by_length", "transformers_version": "5.0.0"})
    adv.run_checks("warmup")
    assert "group_by_length" not in adv.hints["padding-waste"].fix


def test_padding_fix_on_accelerator_pads_to_multiple_of_8(cpu_profile):
    adv = _adv(_batches(_lengths(320), 32, padded=128), local=cpu_profile, target="a100")
    adv.run_checks("warmup")
    assert "pad_to_multiple_of=8" in adv.hints["padding-waste"].fix


def test_padding_waste_in_predict_names_the_inference_helper(cpu_profile):
    adv = _adv(_batches(_lengths(128), 16, padded=128), phase_batches="inference_batches", local=cpu_profile)
    adv.run_checks("inference")
    assert "predict_length_grouped" in adv.hints["padding-waste"].fix
    assert "predict_length_grouped" in adv.hints["static-padding"].fix


def test_static_padding_fires_with_longest_rows_far_below_fixed_length(cpu_profile):
    lengths = _lengths(320)
    adv = _adv(_batches(lengths, 32, padded=128), local=cpu_profile, settings={"tokenizer_padding": "max_length"})
    adv.run_checks("warmup")
    hint = adv.hints["static-padding"]
    assert hint.evidence["padded_len"] == 128 and hint.evidence["batches_seen"] == 10
    longest = [max(lengths[i:i + 32]) for i in range(0, 320, 32)]
    assert hint.evidence["batch_longest_mean"] == pytest.approx(sum(longest) / len(longest), abs=0.1)
    assert hint.impact == pytest.approx(128 * 320 / sum(len(lengths[i:i + 32]) * m
                                                          for i, m in zip(range(0, 320, 32), longest)), abs=0.01)


def test_static_padding_quiet_when_fixed_length_fits_the_data(cpu_profile):
    # Every batch padded to 64 and rows nearly fill it: fixed length, but not far above the real lengths.
    lengths = [60 + (i % 5) for i in range(96)]
    adv = _adv(_batches(lengths, 32, padded=64), local=cpu_profile)
    adv.run_checks("warmup")
    assert "static-padding" not in adv.hints and "padding-waste" not in adv.hints


def test_static_padding_needs_two_batches(cpu_profile):
    adv = _adv(_batches(_lengths(32), 32, padded=128), local=cpu_profile)
    adv.run_checks("warmup")
    assert "static-padding" not in adv.hints


def test_static_batches_behind_a_dynamic_collator_still_get_the_tokenize_fix(cpu_profile):
    # Data tokenized with padding="max_length" and then collated by DataCollatorWithPadding:
    # the collator name says dynamic, the observed shapes say static. The shapes win.
    adv = _adv(_batches(_lengths(320), 32, padded=128), local=cpu_profile, framework="hf",
               settings={"collator": "transformers.data.data_collator.DataCollatorWithPadding"})
    adv.run_checks("warmup")
    assert "DataCollatorWithPadding" in adv.hints["padding-waste"].fix
    assert "without padding" in adv.hints["padding-waste"].fix or "padding=False" in adv.hints["padding-waste"].fix


def test_observed_lengths_decide_dynamic_padding_before_the_collator_name():
    from perfcallbacks.checks.padding import observed_padding

    lengths = _lengths(320)
    assert observed_padding(_batches(lengths, 32)) == "dynamic"
    assert observed_padding(_batches(lengths, 32, padded=128)) == "static"
    assert observed_padding(_batches(lengths[:32], 32)) is None  # one batch cannot tell
    rounded = [BatchStats(batch_size=2, seq_len=16, lengths=(9, 3)), BatchStats(batch_size=2, seq_len=8, lengths=(5, 2))]
    assert observed_padding(rounded) == "dynamic"  # pad_to_multiple_of=8 still pads per batch
    assert observed_padding(rounded, pad_to_multiple_of=16) is None  # 8 is not a multiple of 16 above 5


def test_custom_collate_that_pads_per_batch_is_not_told_to_pad_dynamically(cpu_profile):
    # A plain loop's own collate fn (name unknown to us) whose batches are each padded to their longest row.
    adv = _adv(_batches(_lengths(320), 32), local=cpu_profile, settings={"collator": "__main__.collate"})
    adv.run_checks("warmup")
    fix = adv.hints["padding-waste"].fix
    assert "DataCollatorWithPadding" not in fix and "without padding" not in fix
    assert "LengthGroupedBatchSampler" in fix


def test_plain_loop_with_tokenizer_pad_longest_is_recognised_as_dynamic(minilm_dir, cpu_profile):
    """The issue's plain loop (accelerate nlp_example shape): collate_fn calls tokenizer.pad(padding="longest")."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from perfcallbacks.checks.padding import observed_padding

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    rng = random.Random(1)
    words = "the quick brown fox jumps over a lazy dog while it rains".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 60))) for _ in range(48)]
    features = [tokenizer(t, truncation=True, max_length=128) for t in texts]

    def collate_fn(examples):
        return tokenizer.pad(examples, padding="longest", return_tensors="pt")

    loader = DataLoader(features, batch_size=4, shuffle=False, collate_fn=collate_fn)
    adv = Advisor(None, loader, warn=False, local=cpu_profile, warmup_steps=12)
    for batch in loader:
        adv.observe_batch(batch)
    adv.analyze()
    padded = {b.seq_len for b in adv.context.batches}
    assert len(padded) >= 5 and observed_padding(adv.context.batches) == "dynamic"
    hint = adv.hints["padding-waste"]
    assert "DataCollatorWithPadding" not in hint.fix and "without padding" not in hint.fix
    assert "static-padding" not in adv.hints
