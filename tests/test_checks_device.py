"""Device checks: each fires with evidence, stays quiet when healthy, honours suppress."""

from __future__ import annotations

import pytest
import torch

from perfcallbacks import Advisor, DeviceProfile
from perfcallbacks.context import ThreadPicture


def _advisor(local, model=None, suppress=(), **fields):
    adv = Advisor(model, local=local, suppress=suppress, warn=False)
    for key, value in fields.items():
        setattr(adv.context, key, value)
    return adv


def _threads(intra: int, cores: int = 2, processes: int = 1, workers: int = 0) -> ThreadPicture:
    return ThreadPicture(intra_op=intra, inter_op=1, local_processes=processes, loader_workers=workers,
                         physical_cores=cores, logical_cores=cores)


@pytest.fixture
def a100_local():
    return DeviceProfile.preset("a100").replace(count=4, physical_cores=16, logical_cores=32)


def test_gpu_unused_fires_when_model_on_cpu(a100_local):
    adv = _advisor(a100_local, torch.nn.Linear(8, 8))
    adv.run_checks("setup")
    hint = adv.hints["gpu-unused"]
    assert hint.severity == "critical"
    assert hint.evidence == {"accelerators": 4, "accelerator_name": "NVIDIA A100", "model_device": "cpu"}
    assert 'model.to("cuda")' in hint.fix


def test_gpu_unused_quiet_on_cpu_machine(cpu_profile):
    adv = _advisor(cpu_profile, torch.nn.Linear(8, 8))
    adv.run_checks("setup")
    assert "gpu-unused" not in adv.hints


def test_gpu_unused_suppressed(a100_local):
    adv = _advisor(a100_local, torch.nn.Linear(8, 8), suppress=["gpu-unused"])
    adv.run_checks("setup")
    assert "gpu-unused" not in adv.hints


def test_gpus_idle_fires_and_names_device_count(a100_local):
    adv = _advisor(a100_local, torch.nn.Linear(8, 8), model_device="cuda", devices_used=1)
    adv.run_checks("setup")
    hint = adv.hints["gpus-idle"]
    assert hint.evidence == {"devices_used": 1, "devices_visible": 4}
    assert "--nproc_per_node 4" in hint.fix and hint.impact == pytest.approx(3.6)


def test_gpus_idle_quiet_when_all_used_and_suppressible(a100_local):
    adv = _advisor(a100_local, torch.nn.Linear(8, 8), model_device="cuda", devices_used=4)
    adv.run_checks("setup")
    assert "gpus-idle" not in adv.hints
    adv = _advisor(a100_local, torch.nn.Linear(8, 8), model_device="cuda", devices_used=1, suppress=["gpus-idle"])
    adv.run_checks("setup")
    assert "gpus-idle" not in adv.hints


def test_distributed_single_process(cpu_profile):
    adv = _advisor(cpu_profile, distributed=True, world_size=1, strategy="ddp")
    adv.context.framework = "lightning"
    adv.run_checks("setup")
    hint = adv.hints["distributed-single-process"]
    assert hint.evidence == {"strategy": "ddp", "world_size": 1}
    assert 'strategy="auto"' in hint.fix
    quiet = _advisor(cpu_profile, distributed=True, world_size=2)
    quiet.run_checks("setup")
    assert "distributed-single-process" not in quiet.hints
    suppressed = _advisor(cpu_profile, distributed=True, world_size=1, suppress=["distributed-single-process"])
    suppressed.run_checks("setup")
    assert not suppressed.hints


def test_cpu_oversubscribed_fires_with_thread_counts(cpu_profile):
    adv = _advisor(cpu_profile, threads=_threads(intra=2, processes=2))
    adv.run_checks("setup")
    hint = adv.hints["cpu-oversubscribed"]
    assert hint.evidence["busy_threads"] == 4 and hint.evidence["physical_cores"] == 2
    assert "torch.set_num_threads(1)" in hint.fix


def test_cpu_oversubscribed_counts_workers_only_when_data_waits(cpu_profile):
    # 2 threads + 2 idle workers on 2 cores: workers only wait, no oversubscription.
    adv = _advisor(cpu_profile, threads=_threads(intra=2, workers=2))
    adv.run_checks("warmup")
    assert "cpu-oversubscribed" not in adv.hints
    busy = _advisor(cpu_profile, threads=_threads(intra=2, workers=2))
    busy.timer.step_times, busy.timer.data_wait_times = [0.01] * 5, [0.005] * 5
    busy.run_checks("warmup")
    assert busy.hints["cpu-oversubscribed"].evidence["workers_busy"] is True


def test_cpu_oversubscribed_quiet_and_suppressed(cpu_profile):
    adv = _advisor(cpu_profile, threads=_threads(intra=2))
    adv.run_checks("setup")
    assert "cpu-oversubscribed" not in adv.hints
    adv = _advisor(cpu_profile, threads=_threads(intra=8), suppress=["cpu-oversubscribed"])
    adv.run_checks("setup")
    assert "cpu-oversubscribed" not in adv.hints
