"""Data checks: dataloader-bottleneck (measured wait, never num_workers alone) and pin-memory-off."""

from __future__ import annotations

import pytest

from perfcallbacks import Advisor
from perfcallbacks.context import LoaderInfo


def _adv(*, waits, steps, workers=0, pin=False, suppress=(), framework="torch", measurements=None, **kw):
    adv = Advisor(warn=False, suppress=suppress, framework=framework, **kw)
    adv.context.loader = LoaderInfo(batch_size=32, num_workers=workers, pin_memory=pin)
    adv.timer.data_wait_times = list(waits)
    adv.timer.step_times = list(steps)
    adv.context.measurements.update(measurements or {})
    adv.run_checks("warmup")
    return adv.hints


def test_dataloader_bottleneck_fires_with_measured_wait(cpu_profile):
    hint = _adv(waits=[0.005] * 10, steps=[0.010] * 10, local=cpu_profile)["dataloader-bottleneck"]
    assert hint.evidence["data_wait_ms"] == pytest.approx(5.0)
    assert hint.evidence["step_ms"] == pytest.approx(10.0)
    assert hint.evidence["wait_share_of_step"] == pytest.approx(1 / 3, abs=1e-3)  # 5 ms of a 15 ms step
    assert hint.impact == pytest.approx(1.5)
    # 2 physical cores: one left for workers, and the message says cores are the limit only if needed.
    assert "num_workers=1" in hint.fix and "persistent_workers=True" in hint.fix
    assert "pin_memory" not in hint.fix  # CPU run


def test_dataloader_bottleneck_names_workers_for_many_cores_and_pin_on_cuda(cpu_profile):
    big = cpu_profile.replace(physical_cores=16, logical_cores=32)
    hint = _adv(waits=[0.030] * 8, steps=[0.010] * 8, local=big, target="a100",
                framework="hf")["dataloader-bottleneck"]
    assert hint.evidence["suggested_workers"] == 4  # ceil(30/10) + 1
    assert "dataloader_num_workers=4" in hint.fix and "dataloader_pin_memory=True" in hint.fix


def test_dataloader_bottleneck_quiet_when_data_costs_nothing_even_with_zero_workers(cpu_profile):
    # Lightning warns here (num_workers=0); we measured: waiting 0.05 ms per 10 ms step is nothing.
    assert "dataloader-bottleneck" not in _adv(waits=[0.00005] * 10, steps=[0.010] * 10, local=cpu_profile)
    # a large share of a tiny step, but below what a worker process can hide
    assert "dataloader-bottleneck" not in _adv(waits=[0.0005] * 10, steps=[0.001] * 10, local=cpu_profile)


def test_dataloader_bottleneck_needs_enough_steps_and_honours_suppress(cpu_profile):
    assert "dataloader-bottleneck" not in _adv(waits=[0.05] * 2, steps=[0.01] * 2, local=cpu_profile)
    assert "dataloader-bottleneck" not in _adv(waits=[0.05] * 8, steps=[0.01] * 8, local=cpu_profile,
                                               suppress=["dataloader-bottleneck"])


def test_pin_memory_off_fires_on_cuda_with_measured_copies(cpu_profile):
    hint = _adv(waits=[0.0] * 5, steps=[0.010] * 5, local=cpu_profile, target="a100",
                measurements={"h2d_copy_s": 0.002})["pin-memory-off"]
    assert hint.evidence["h2d_copy_share"] == pytest.approx(0.2)
    assert "pin_memory=True" in hint.fix


def test_pin_memory_off_quiet_when_pinned_on_cpu_cheap_or_suppressed(cpu_profile):
    common = {"waits": [0.0] * 5, "steps": [0.010] * 5, "local": cpu_profile}
    assert "pin-memory-off" not in _adv(**common, target="a100", pin=True, measurements={"h2d_copy_s": 0.002})
    assert "pin-memory-off" not in _adv(**common, measurements={"h2d_copy_s": 0.002})
    assert "pin-memory-off" not in _adv(**common, target="a100", measurements={"h2d_copy_s": 0.0001})
    assert "pin-memory-off" not in _adv(**common, target="a100")  # nothing measured: no guess
    assert "pin-memory-off" not in _adv(**common, target="a100", measurements={"h2d_copy_s": 0.002},
                                        suppress=["pin-memory-off"])
