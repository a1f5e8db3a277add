"""The closed sets: each ``Literal`` alias (what a type checker sees) equals its runtime tuple (what the
code validates against), in order, and the package ships its ``py.typed`` marker."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import get_args

import pytest

import perfcallbacks
from perfcallbacks import device, hints, options, report

PACKAGE_DIR = Path(perfcallbacks.__file__).parent


@pytest.mark.parametrize(("alias", "values"), [
    (hints.Severity, hints.SEVERITIES),
    (hints.Phase, hints.PHASES),
    (report.FixStatus, report.FIX_STATUSES),
    (report.Framework, report.FRAMEWORKS),
    (device.Level, device.LEVELS),
    (device.DeviceKind, device.KINDS),
], ids=["severity", "phase", "fix-status", "framework", "capability-level", "device-kind"])
def test_literal_equals_its_tuple_in_order(alias, values):
    # Order matters: severity rank and "best to worst" levels are tuple indices.
    assert get_args(alias) == values


def test_one_severity_alias():
    assert options.Severity is hints.Severity


def test_level_constants_are_the_levels():
    assert (device.FAST, device.SUPPORTED, device.EMULATED, device.UNSUPPORTED) == get_args(device.Level)


def test_runtime_validation_uses_the_same_sets():
    for status in report.FIX_STATUSES:
        assert report.FixResult("threads", status, "").status == status
    with pytest.raises(ValueError, match="status must be one of"):
        report.FixResult("threads", "done", "")
    for severity in hints.SEVERITIES:
        assert options.validate_fail_on(severity) == severity
    with pytest.raises(ValueError, match="fail_on"):
        options.validate_fail_on("error")
    with pytest.raises(ValueError, match="capabilities must map"):
        device.DeviceProfile(kind="cpu", name="x", capabilities={"bf16": "slow"})
    with pytest.raises(ValueError, match="kind must be one of"):
        device.DeviceProfile(kind="tpu", name="x")


def test_every_spec_uses_a_known_severity_and_category():
    bad = {s.id: (s.severity, s.category) for s in hints.REGISTRY.values()
           if s.severity not in hints.SEVERITIES or s.category not in hints.CATEGORIES}
    assert not bad


def test_every_framework_the_package_names_is_a_framework():
    # `framework="..."` literals in the package (Advisor, adapters, output): a new one must join FRAMEWORKS.
    # The `perfhints run` hook names its trainers' modules ("pytorch_lightning"), not report frameworks.
    found = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        if "_bootstrap" in path.parts:
            continue
        found |= set(re.findall(r'\bframework(?:\s*:\s*[\w.| ]+)?\s*=\s*"(\w+)"', path.read_text(encoding="utf-8")))
    assert {"torch", "lightning", "hf"} <= found and found <= set(report.FRAMEWORKS), found


def test_py_typed_ships_as_package_data():
    assert (PACKAGE_DIR / "py.typed").is_file()
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    assert "py.typed" in data["tool"]["setuptools"]["package-data"]["perfcallbacks"]
