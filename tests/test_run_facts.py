"""run_facts: the raw dicts the adapters and probes write become typed facts, once, before the checks."""

from __future__ import annotations

from torch import nn

from perfcallbacks import Advisor
from perfcallbacks.model_facts import ModelFacts
from perfcallbacks.run_facts import HFSettings, LightningSettings, Measurements, collect_run_facts


def test_measurements_parse_what_the_probes_write():
    m = Measurements.from_raw({
        "threads": {"current": 2, "latency_s": {"1": 0.01, "2": "0.02", "x": 1, "4": -1}, "dropped": ["8"]},
        "int8": {"speedup": 1.4, "status": "applied", "source": "fix", "fidelity": {"cosine_mean": 0.999}},
        "autocast": {"speedup": 1.9}, "grad_overhead": 1.2,
        "batch_scaling": {"latency_s": {"8": 0.01, "16": 0.012}}, "h2d_copy_s": 0.003})
    assert m.threads.current == 2 and m.threads.latency_s == {1: 0.01, 2: 0.02} and m.threads.dropped == ["8"]
    assert (m.int8.speedup, m.int8.status, m.int8.source) == (1.4, "applied", "fix")
    assert m.int8.fidelity == {"cosine_mean": 0.999}
    assert m.autocast_speedup == 1.9 and m.grad_overhead == 1.2 and m.h2d_copy_s == 0.003
    assert m.batch_scaling.batch_size == 8  # the probe did not say: the smallest timed size


def test_malformed_measurements_are_unknown_not_errors():
    m = Measurements.from_raw({"threads": "fast", "int8": 1.3, "autocast": {"speedup": -2}, "grad_overhead": True,
                               "batch_scaling": [1, 2], "h2d_copy_s": "3 ms"})
    assert m.threads is None and m.batch_scaling is None
    assert m.int8.speedup == 1.3 and m.int8.status is None  # a bare number is a speedup
    assert m.autocast_speedup is None and m.grad_overhead is None and m.h2d_copy_s is None


def test_settings_keep_only_typed_values():
    hf = HFSettings.from_raw({"pad_to_multiple_of": True, "grad_accumulation": 0, "collator": "x.C", "task": None})
    assert hf.pad_to_multiple_of is None and hf.grad_accumulation is None and hf.collator == "x.C" and hf.task is None
    assert LightningSettings.from_raw({"accumulate_grad_batches": 4}).accumulate_grad_batches == 4
    assert LightningSettings.from_raw(None).accumulate_grad_batches is None


def test_an_unreadable_model_leaves_the_other_facts_and_is_recorded(cpu_profile, monkeypatch):
    def boom(cls, model):
        raise RuntimeError("odd model")

    monkeypatch.setattr(ModelFacts, "of", classmethod(boom))
    adv = Advisor(nn.Linear(4, 4), local=cpu_profile, warn=False)
    adv.context.measurements["threads"] = {"current": 2, "latency_s": {"1": 0.010, "2": 0.016}}
    adv.run_checks("inference")
    assert "threads-untuned" in adv.hints  # measured facts still reach their check
    assert adv.context.facts.model == ModelFacts()
    assert [f["check"] for f in adv.check_failures] == ["perfcallbacks.run_facts.model"]


def test_collect_reads_the_model_and_the_installed_transformers(cpu_profile):
    model = nn.Sequential(nn.Linear(8, 8))
    ctx = Advisor(model, local=cpu_profile, warn=False).context
    facts = collect_run_facts(ctx)
    assert facts.model.present and facts.model.class_name == "Sequential" and len(facts.model.layers) == 1
    assert facts.transformers_version  # the installed package's, without an adapter setting
