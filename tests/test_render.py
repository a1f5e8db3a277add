"""Rendering: order, suppressed / resolved hints, labelled numbers, overhead split, widths, paste-able code."""

from __future__ import annotations

import re

import pytest

from perfcallbacks.hints import REGISTRY
from perfcallbacks.render import fmt_fidelity, overhead_line, render_markdown, render_plain, sort_hints
from perfcallbacks.report import FixResult, Report

CODE = ("DataLoader(dataset, batch_sampler=perfcallbacks.padding.LengthGroupedBatchSampler(lengths, batch_size=32), "
        "collate_fn=DataCollatorWithPadding(tokenizer))")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _report() -> Report:
    quiet = REGISTRY["dim-unaligned"].make("setup", "model.classifier: 384 -> 2", "widen it")
    quiet.suppressed = True
    return Report(
        framework="lightning", device={"kind": "cpu", "name": "AMD EPYC"}, overhead_s=5.2,
        hints=[REGISTRY["batch-size-small"].make("warmup", "small batch", "bigger", impact=1.2),
               REGISTRY["padding-waste"].make("warmup", "61% of tokens are padding.", CODE,
                                              {"pad_fraction": 0.61}, impact=2.4),
               REGISTRY["padding-waste"].make("inference", "40% padding in predict.", "length_grouped_batches",
                                              impact=1.5),
               REGISTRY["gpu-unused"].make("setup", "1 CUDA device visible, model on CPU.", "accelerator='auto'"),
               REGISTRY["int8-available"].make("inference", "int8 would be 1.3x.", "auto_apply=True", impact=1.3),
               quiet],
        fixes=[FixResult("dynamic-quantization", "applied", "faster and faithful", speedup=1.29, cost_s=4.1,
                         fidelity={"cosine_min": 0.9941, "argmax_agreement": 1.0, "rows": 32}),
               FixResult("threads", "rejected", "already best", speedup=1.01, cost_s=0.8)])


def test_critical_first_then_largest_gain_then_unknown():
    hints = sort_hints(_report().hints)
    assert [(h.id, h.phase) for h in hints][:4] == [("gpu-unused", "setup"), ("padding-waste", "warmup"),
                                                     ("padding-waste", "inference"), ("int8-available", "inference")]


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("width", [80, 120])
def test_table_content_fits_the_width_and_code_is_never_folded(color, width):
    if color:
        pytest.importorskip("rich")
    text = _report().render(color=color, width=width)
    lines = [ANSI.sub("", line) for line in text.splitlines()]
    assert f"    {CODE}" in lines  # one unbroken, paste-able line below the table
    too_wide = [line for line in lines if len(line) > width and CODE not in line
                and not line.startswith("perfcallbacks' own cost")]
    assert too_wide == []


def test_suppressed_count_resolved_and_phases_are_shown():
    text = render_plain(_report(), width=100)
    assert "(1 suppressed)" in text and "dim-unaligned" not in text
    assert "resolved: [int8-available] by the applied dynamic-quantization fix, 1.29x" in text
    assert "! " + "[int8-available]" not in text  # not listed as open
    assert "[padding-waste (training)]" in text and "[padding-waste (inference)]" in text
    assert "4 open hints" in text


def test_fidelity_is_labelled_with_rows():
    assert fmt_fidelity({"cosine_min": 0.9941, "cosine_mean": 0.998, "rows": 32}) == \
        "min cosine 0.9941, mean cosine 0.9980 on 32 rows"
    assert "min cosine 0.9941, argmax agreement 1.000 on 32 rows" in render_plain(_report(), width=200)


def test_overhead_is_split_into_observation_and_fix_measuring():
    line = overhead_line(_report())
    assert line == ("perfcallbacks' own cost: 5.20 s = observation and checks 300 ms + measuring fixes 4.90 s "
                    "(dynamic-quantization 4.10 s, threads 800 ms)")
    assert "no fix was measured" in overhead_line(Report(overhead_s=0.05))


def test_nothing_found_and_everything_resolved():
    assert "No performance hints" in render_plain(Report(), width=80)
    report = Report(hints=[REGISTRY["int8-available"].make("inference", "m", "f")],
                    fixes=[FixResult("dynamic-quantization", "applied", "ok")])
    assert "No open performance hints." in render_plain(report, width=80)


def test_markdown_has_code_blocks_and_escapes_pipes():
    report = _report()
    report.hints[0].message = "a | b"
    text = render_markdown(report)
    assert "a \\| b" in text and f"```python\n{CODE}\n```" in text


def test_a_gain_the_message_already_states_is_not_repeated():
    said = REGISTRY["int8-available"].make("inference", "int8 dynamic quantization is 1.42x faster (estimated).",
                                           "auto_apply=True", impact=1.42)
    unsaid = REGISTRY["batch-size-small"].make("warmup", "small batch", "bigger", impact=1.2)
    text = render_plain(Report(framework="torch", hints=[said, unsaid]), width=200)
    assert "1.42x faster (estimated). (estimated" not in text and text.count("1.42x") == 1
    assert "small batch (estimated ~1.20x)" in text


def test_the_warning_states_a_gain_once_too():
    from perfcallbacks.hints import format_hint_warning

    said = REGISTRY["padding-waste"].make("warmup", "32% padding; grouping is predicted 1.35x faster.", "fix",
                                          impact=1.35)
    assert format_hint_warning(said).count("1.35x") == 1
    unsaid = REGISTRY["padding-waste"].make("warmup", "32% padding.", "fix", impact=1.35)
    assert "32% padding. (estimated 1.35x)" in format_hint_warning(unsaid)
