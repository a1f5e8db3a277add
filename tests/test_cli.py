"""The perfhints CLI: device, report, explain."""

from __future__ import annotations

import json

import pytest

from perfcallbacks.cli import main
from perfcallbacks.hints import REGISTRY
from perfcallbacks.report import FixResult, Report


def _json_out(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_device_json_on_this_cpu(capsys):
    data = _json_out(capsys, ["device", "--json"])
    assert data["kind"] == "cpu"
    if "avx512_bf16" not in data["isa"] and "amx" not in data["isa"]:
        assert data["native_bf16"] is False and data["capabilities"]["bf16"] == "emulated"
        assert any("bf16 is emulated" in line for line in data["magic_configs"])


def test_device_target_a100(capsys):
    data = _json_out(capsys, ["device", "--target", "a100", "--json"])
    assert data["capabilities"]["bf16"] == "fast" and data["capabilities"]["tf32"] == "fast"
    assert data["capabilities"]["tensor_cores"] == "fast"
    assert data["alignment"]["fp16"] == 8 and data["alignment"]["bf16"] == 8 and data["alignment"]["int8"] == 16


def test_device_target_t4_has_no_native_bf16(capsys):
    data = _json_out(capsys, ["device", "--target", "t4", "--json"])
    assert data["native_bf16"] is False


def test_device_text(capsys):
    assert main(["device", "--target", "a100"]) == 0
    assert "Magic configs" in capsys.readouterr().out


def test_unknown_target_is_a_clear_error(capsys):
    assert main(["device", "--target", "a1000"]) == 2
    assert "unknown device preset" in capsys.readouterr().err


def test_explain(capsys):
    assert main(["explain", "padding-waste"]) == 0
    out = capsys.readouterr().out
    assert "Why is this bad?" in out and 'suppress=["padding-waste"]' in out


def test_explain_unknown_lists_close_matches(capsys):
    assert main(["explain", "padding-wast"]) == 2
    assert "padding-waste" in capsys.readouterr().err


def test_report_renders_a_saved_file(tmp_path, capsys):
    hint = REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")
    path = Report(framework="torch", hints=[hint]).save(tmp_path / "r.json")
    assert main(["report", str(path), "--no-color"]) == 0
    assert "gpu-unused" in capsys.readouterr().out


def test_report_missing_file(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_console_script_help():
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


# -- issue 15: CLI hygiene ------------------------------------------------------------------------------
def test_version_and_python_dash_m(capsys):
    import subprocess
    import sys

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("perfhints (perfcallbacks) ")
    out = subprocess.run([sys.executable, "-m", "perfcallbacks", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("perfhints (perfcallbacks) ")


def test_device_shows_versions_and_thread_settings(capsys):
    import platform

    import torch

    data = _json_out(capsys, ["device", "--json"])
    assert data["software"]["torch"] == torch.__version__ and platform.python_version() in data["software"]["python"]
    assert data["process"]["intra_op_threads"] == torch.get_num_threads()
    assert data["process"]["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert main(["device"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text and f"{torch.get_num_threads()} intra-op" in text


def test_explain_has_every_ruff_like_section(capsys):
    assert main(["explain", "int8-available"]) == 0
    out = capsys.readouterr().out
    for section in ("## What it does", "## Why is this bad?", "## Fix", "## Fix safety", "## Options",
                    "## How to silence this one", "PERFHINTS_SUPPRESS=int8-available"):
        assert section in out
    assert "guarded: auto_apply=True applies the dynamic-quantization fix" in out
    assert main(["explain", "padding-waste"]) == 0
    assert "manual:" in capsys.readouterr().out


def test_explain_all_and_json(capsys):
    data = _json_out(capsys, ["explain", "--all", "--json"])
    assert [d["id"] for d in data] == list(REGISTRY)
    one = _json_out(capsys, ["explain", "gpu-unused", "--json"])
    assert one["id"] == "gpu-unused" and one["silence"] and one["fix_safety"]
    assert main(["explain"]) == 2 and "--all" in capsys.readouterr().err


def _diff_pair(tmp_path):
    train = REGISTRY["padding-waste"].make("warmup", "61%", "f", {"pad_fraction": 0.61}, impact=2.4)
    old = Report(hints=[train, REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")], overhead_s=0.2)
    new = Report(hints=[REGISTRY["padding-waste"].make("warmup", "30%", "f", {"pad_fraction": 0.3}, impact=1.3),
                        REGISTRY["int8-available"].make("inference", "int8", "auto_apply=True")],
                 fixes=[FixResult("threads", "applied", "faster", speedup=1.2)], overhead_s=0.1)
    return old.save(tmp_path / "a.json"), new.save(tmp_path / "b.json")


def test_report_compares_two_files(tmp_path, capsys):
    a, b = _diff_pair(tmp_path)
    data = _json_out(capsys, ["report", str(a), str(b), "--json"])
    assert [h["id"] for h in data["resolved"]] == ["gpu-unused"]
    assert [h["id"] for h in data["new"]] == ["int8-available"]
    assert data["kept"][0]["changes"] == {"pad_fraction": [0.61, 0.3], "impact": [2.4, 1.3]}
    assert main(["diff", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "resolved: 1" in text and "- [gpu-unused]" in text and "+ [int8-available]" in text
    assert "pad_fraction 0.61 -> 0.3" in text and "threads: absent -> applied" in text
    assert main(["report", str(a), str(b), str(a)]) == 2


def test_tune_checks_plot_dependency_before_measuring(tmp_path, capsys, monkeypatch):
    import importlib.util

    from perfcallbacks import tune

    (tmp_path / "config.json").write_text("{}")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(tune, "tune", lambda *a, **k: pytest.fail("measured before checking --plot"))
    assert main(["tune", str(tmp_path), "--plot", str(tmp_path / "p.png")]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_tune_says_plainly_when_nothing_fits_the_budget():
    from perfcallbacks.tune import _render

    result = {"model_dir": "m", "latency_budget_ms": 5.0, "fixes": [], "workers_table": [],
              "batch_table": [{"order": "arrival", "batch_size": 1, "sentences_per_s": 40.0,
                               "p90_latency_ms": 24.3, "pad_fraction": 0.0}],
              "recommendation": {"precision": "fp32", "workers": 1, "threads_per_worker": 2, "batch_size": 1,
                                 "order": "arrival", "sentences_per_s": None, "p90_latency_ms": None,
                                 "fits_budget": False, "lowest_p90_latency_ms": 24.3,
                                 "lowest_p90_batch": {"batch_size": 1, "order": "arrival"}}}
    text = _render(result)
    assert "None" not in text.split("sentences/s")[-1]
    assert "Nothing fits the 5.0 ms p90 latency budget" in text and "--latency-budget-ms 25 or more" in text
