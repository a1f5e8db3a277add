"""The perfhints CLI: device, report, explain."""

from __future__ import annotations

import json

import pytest

from perfcallbacks.cli import main
from perfcallbacks.hints import REGISTRY
from perfcallbacks.report import Report


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
    assert "Why it matters" in out and 'suppress=["padding-waste"]' in out


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
