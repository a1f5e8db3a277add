"""Report JSON: schema, round trip, atomic writes, rendering."""

from __future__ import annotations

import json
import os

import pytest

from perfcallbacks import FixResult, Report
from perfcallbacks.hints import REGISTRY
from perfcallbacks.report import SCHEMA, save_report_safely


def _report() -> Report:
    hint = REGISTRY["padding-waste"].make("warmup", "61% of tokens are padding.", "DataCollatorWithPadding(tok)",
                                          evidence={"pad_fraction": 0.61, "batches_seen": 20}, impact=2.4)
    fix = FixResult("dynamic-quantization", "applied", "faster and faithful", speedup=1.7,
                    fidelity={"cosine_min": 0.998, "argmax_agreement": 1.0})
    return Report(framework="lightning", device={"kind": "cpu", "name": "x"}, hints=[hint], fixes=[fix],
                  overhead_s=0.12)


def test_json_has_the_contract_keys():
    data = json.loads(_report().to_json())
    assert data["schema"] == SCHEMA
    for key in ("created", "framework", "device", "target", "hints", "fixes", "overhead_s"):
        assert key in data
    hint = data["hints"][0]
    assert set(hint) == {"id", "category", "severity", "phase", "message", "fix", "evidence", "impact"}
    assert data["fixes"][0]["status"] == "applied" and data["fixes"][0]["speedup"] == 1.7
    assert data["created"].endswith("Z")


def test_round_trip(tmp_path):
    report = _report()
    path = report.save(tmp_path / "sub" / "perf_hints.json")
    loaded = Report.load(path)
    assert loaded.to_dict() == report.to_dict()


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "r.json"
    _report().save(path)
    _report().save(path)
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_numpy_and_nan_values_serialise():
    np = pytest.importorskip("numpy")
    report = _report()
    report.hints[0].evidence.update(n=np.int64(3), x=np.float32(0.5), bad=float("nan"), t=(1, 2))
    data = json.loads(report.to_json())
    assert data["hints"][0]["evidence"]["n"] == 3 and data["hints"][0]["evidence"]["bad"] is None


def test_unwritable_path_warns_instead_of_raising(tmp_path):
    from perfcallbacks.hints import PerfCallbacksIOWarning

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(PerfCallbacksIOWarning, match="could not write the report"):
        assert save_report_safely(_report(), blocker / "r.json") is None


def test_io_warning_is_not_hidden_by_hint_filters_and_never_raises(tmp_path):
    import warnings

    from perfcallbacks.hints import PerfCallbacksIOWarning, PerfHintWarning

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=PerfHintWarning)  # the user silenced hints
        assert save_report_safely(_report(), blocker / "r.json") is None
    assert [w.category for w in seen] == [PerfCallbacksIOWarning]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # -W error: still no exception into the run
        assert save_report_safely(_report(), blocker / "r.json") is None


def test_not_a_report_is_rejected():
    with pytest.raises(ValueError, match="not a perfcallbacks report"):
        Report.from_dict({"schema": "other"})


def test_render_plain_and_rich_show_the_same_content():
    report = _report()
    plain = report.render(color=False)
    assert "padding-waste" in plain and "dynamic-quantization" in plain and "1.70x" in plain
    pytest.importorskip("rich")
    rich_text = report.render(color=True)
    assert "padding-waste" in rich_text and "dynamic-quantization" in rich_text


def test_fix_status_is_validated():
    with pytest.raises(ValueError, match="status"):
        FixResult("threads", "maybe", "")


def test_cost_s_round_trips_and_is_optional():
    fix = FixResult("threads", "applied", "faster", speedup=1.2, cost_s=0.4321)
    data = fix.to_dict()
    assert data["cost_s"] == 0.4321 and FixResult.from_dict(data).cost_s == pytest.approx(0.4321)
    assert "cost_s" not in FixResult("threads", "skipped", "x").to_dict()


def test_suppressed_and_resolved_by_are_written_only_when_set():
    hint = REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")
    assert "suppressed" not in hint.to_dict() and "resolved_by" not in hint.to_dict()
    hint.suppressed, hint.resolved_by = True, "threads"
    data = hint.to_dict()
    assert data["suppressed"] is True and data["resolved_by"] == "threads"
    back = type(hint).from_dict(data)
    assert back.suppressed and back.resolved_by == "threads"


def test_old_reports_still_load():
    old = {"schema": SCHEMA, "created": "2026-01-01T00:00:00Z", "framework": "hf", "device": {"kind": "cpu"},
           "target": None, "overhead_s": 0.5,
           "hints": [{"id": "padding-waste", "category": "padding", "severity": "warning", "phase": "warmup",
                      "message": "m", "fix": "f", "evidence": {}, "impact": None}],
           "fixes": [{"id": "threads", "status": "applied", "reason": "r", "speedup": 1.1, "fidelity": {}}]}
    report = Report.from_dict(old)
    assert report.hints[0].suppressed is False and report.fixes[0].cost_s is None
    assert [h.id for h in report.open_hints] == ["padding-waste"]


def test_one_hint_per_id_and_phase_is_addressable():
    train = REGISTRY["padding-waste"].make("warmup", "train", "group_by_length")
    infer = REGISTRY["padding-waste"].make("inference", "predict", "length_grouped_batches")
    report = Report(hints=[train, infer])
    assert report.hint("padding-waste").message == "train"
    assert report.hint("padding-waste", phase="inference").message == "predict"


def test_applied_fix_resolves_its_hint_and_suppressed_hints_are_not_open():
    from perfcallbacks.report import mark_resolved

    int8 = REGISTRY["int8-available"].make("inference", "int8 would be faster.", "auto_apply=True")
    threads = REGISTRY["threads-untuned"].make("inference", "1 thread is faster.", "torch.set_num_threads(1)")
    quiet = REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")
    quiet.suppressed = True
    report = Report(hints=[int8, threads, quiet], fixes=[
        FixResult("dynamic-quantization", "applied", "faster", speedup=1.3),
        FixResult("threads", "applied", "training cap", details={"cap": 1}),  # the training cap: not the sweep
    ])
    assert [h.id for h in report.open_hints] == ["threads-untuned"]
    assert [(h.id, f.id) for h, f in report.resolved_hints] == [("int8-available", "dynamic-quantization")]
    assert report.suppressed_count == 1
    mark_resolved(report)
    assert int8.resolved_by == "dynamic-quantization" and threads.resolved_by is None
    rejected = Report(hints=[int8], fixes=[FixResult("dynamic-quantization", "rejected", "slower")])
    int8.resolved_by = None
    assert [h.id for h in rejected.open_hints] == ["int8-available"]


def test_notebook_reprs():
    report = _report()
    assert "<table>" in report._repr_html_() and "padding-waste" in report._repr_html_()
    assert "| severity | id |" in report._repr_markdown_()
    report.hints[0].message = "<script>x</script>"
    assert "<script>" not in report._repr_html_()
