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
    from perfcallbacks import PerfHintWarning

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(PerfHintWarning, match="could not write the report"):
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
