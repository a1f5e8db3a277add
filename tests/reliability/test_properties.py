"""Property-based tests (hypothesis) for the pure parts: padding statistics, alignment
suggestions, the oversubscription check's thread arithmetic and JSON round trips of arbitrary reports."""

from __future__ import annotations

import json

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perfcallbacks.checks.registry import nearest_multiples
from perfcallbacks.context import ThreadPicture
from perfcallbacks.hints import PHASES, REGISTRY, SEVERITIES
from perfcallbacks.observe import batch_stats
from perfcallbacks.report import FIX_STATUSES, FixResult, Report

lengths_st = st.lists(st.integers(min_value=0, max_value=64), min_size=1, max_size=16)


@given(lengths=lengths_st, extra=st.integers(min_value=0, max_value=32))
def test_pad_fraction_matches_the_mask(lengths, extra):
    seq_len = max(lengths) + extra
    if seq_len == 0:
        seq_len = 1
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    stats = batch_stats({"input_ids": torch.ones_like(mask), "attention_mask": mask})
    assert stats.batch_size == len(lengths) and stats.seq_len == seq_len
    assert stats.lengths == tuple(lengths)
    expected = 1 - sum(lengths) / (seq_len * len(lengths))
    assert abs(stats.pad_fraction - expected) < 1e-9
    assert 0.0 <= stats.pad_fraction <= 1.0


@given(lengths=lengths_st, pad=st.integers(min_value=0, max_value=3))
def test_pad_id_without_mask_gives_the_same_lengths(lengths, pad):
    seq_len = max(max(lengths), 1)
    ids = torch.full((len(lengths), seq_len), pad, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = pad + 5
    stats = batch_stats({"input_ids": ids}, pad_token_id=pad)
    assert stats.lengths == tuple(lengths)


@given(value=st.integers(min_value=1, max_value=100_000), multiple=st.sampled_from([4, 8, 16, 32, 64]))
def test_nearest_multiples_bracket_the_value(value, multiple):
    below, above = nearest_multiples(value, multiple)
    assert below % multiple == 0 and above % multiple == 0
    assert above >= value and above - value < multiple
    assert below >= multiple and (below <= value or value < multiple)
    if value % multiple == 0:
        assert below == above == value


@given(processes=st.integers(1, 16), threads=st.integers(1, 64), workers=st.integers(0, 16),
       cores=st.integers(1, 128), loader_waits=st.booleans(), step_ms=st.integers(1, 50))
def test_cpu_oversubscribed_counts_workers_only_while_they_are_busy(processes, threads, workers, cores,
                                                                    loader_waits, step_ms):
    # What the check decides on: loader workers compete for cores only while the run waits for data (here
    # a wait as long as the step, or 2% of it); it fires exactly when the busy threads exceed the cores.
    from perfcallbacks.checks.device import cpu_oversubscribed
    from perfcallbacks.context import RunContext
    from perfcallbacks.device import DeviceProfile

    pic = ThreadPicture(intra_op=threads, inter_op=1, local_processes=processes, loader_workers=workers,
                        physical_cores=cores, logical_cores=cores)
    local = DeviceProfile.preset("cpu-avx2").replace(physical_cores=cores, logical_cores=cores)
    wait_s = step_ms / 1000 * (1.0 if loader_waits else 0.02)
    ctx = RunContext(local=local, phase="warmup", threads=pic, step_times=[step_ms / 1000], data_wait_times=[wait_s])
    busy = processes * (threads + (workers if loader_waits else 0))
    hint = cpu_oversubscribed(ctx)
    assert (hint is not None) == (busy > cores)
    if hint is not None:
        assert hint.id == "cpu-oversubscribed"
        assert hint.evidence["busy_threads"] == busy and hint.evidence["workers_busy"] == loader_waits
        assert hint.evidence["physical_cores"] == cores
        assert f"torch.set_num_threads({max(1, cores // processes)})" in hint.fix


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)

hint_st = st.builds(
    lambda spec, phase, severity, msg, evidence, impact: spec.make(phase, msg, "fix", evidence, impact, severity),
    st.sampled_from(list(REGISTRY.values())), st.sampled_from(PHASES), st.sampled_from(SEVERITIES),
    st.text(max_size=60), st.dictionaries(st.text(min_size=1, max_size=10), json_value, max_size=5),
    st.none() | st.floats(min_value=0.01, max_value=100),
)
fix_st = st.builds(
    FixResult, st.sampled_from(["threads", "autocast", "dynamic-quantization"]), st.sampled_from(FIX_STATUSES),
    st.text(max_size=40), st.none() | st.floats(min_value=0.01, max_value=50),
    st.dictionaries(st.sampled_from(["cosine_mean", "cosine_min", "argmax_agreement"]),
                    st.floats(min_value=-1, max_value=1), max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(hints=st.lists(hint_st, max_size=5), fixes=st.lists(fix_st, max_size=3),
       overhead=st.floats(min_value=0, max_value=1e4))
def test_arbitrary_reports_round_trip_through_json(hints, fixes, overhead):
    report = Report(framework="lightning", device={"kind": "cpu"}, hints=hints, fixes=fixes, overhead_s=overhead)
    text = report.to_json()
    json.loads(text)  # strict JSON: no NaN/Infinity
    again = Report.from_json(text)
    assert again.to_json() == text
