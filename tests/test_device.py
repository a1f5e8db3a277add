"""DeviceProfile: detection with injected probes, presets, forgiving names."""

from __future__ import annotations

import pytest
import torch

from perfcallbacks import DeviceProfile
from perfcallbacks.device import (
    EMULATED,
    FAST,
    FEATURES,
    LEVELS,
    UNSUPPORTED,
    cpu_core_counts,
    cuda_capabilities,
    detect_cpu,
    resolve_target,
)
from perfcallbacks.presets import PRESETS

CPUINFO_2_SOCKETS_HT = "".join(
    f"processor\t: {cpu}\nmodel name\t: Test Xeon\nphysical id\t: {cpu // 4}\ncore id\t\t: {(cpu % 4) // 2}\n"
    "flags\t\t: fpu sse avx2 avx512f avx512_vnni\n\n"
    for cpu in range(8)
)


def test_core_counts_follow_topology_and_affinity():
    # 2 sockets x 2 cores x 2 hyperthreads = 8 logical, 4 physical.
    assert cpu_core_counts(CPUINFO_2_SOCKETS_HT, set(range(8))) == (4, 8)
    # Pinned to the two hyperthreads of one core: one physical core.
    assert cpu_core_counts(CPUINFO_2_SOCKETS_HT, {0, 1}) == (1, 2)


def test_core_counts_without_topology_count_logical():
    assert cpu_core_counts("", {0, 1, 2}) == (3, 3)


def test_detect_cpu_reads_injected_flags():
    profile = detect_cpu(cpuinfo=CPUINFO_2_SOCKETS_HT, affinity=set(range(8)))
    assert profile.kind == "cpu"
    assert profile.name == "Test Xeon"
    assert {"avx2", "avx512", "avx512_vnni"} <= set(profile.isa)
    assert profile.physical_cores == 4 and profile.logical_cores == 8
    assert profile.alignment_for(torch.float32) == 16  # AVX-512 lanes


def test_detect_on_this_machine_is_a_complete_profile():
    profile = DeviceProfile.detect()
    assert profile.kind in ("cpu", "cuda", "mps", "xpu")
    assert profile.physical_cores and profile.physical_cores >= 1
    assert set(profile.capabilities) == set(FEATURES)


@pytest.mark.parametrize("key", sorted(PRESETS))
def test_every_preset_loads_and_is_complete(key):
    profile = DeviceProfile.preset(key)
    assert profile.source == f"preset:{key}"
    assert set(profile.capabilities) == set(FEATURES)
    assert all(level in LEVELS for level in profile.capabilities.values())
    assert profile.alignment_for("fp32") >= 1
    assert DeviceProfile.from_dict(profile.to_dict()) == profile


@pytest.mark.parametrize("name", ["A100", "a100", "a100-sxm4-80gb", "NVIDIA A100-SXM4-80GB", "nvidia_a100"])
def test_forgiving_names(name):
    assert DeviceProfile.preset(name).source == "preset:a100"


def test_h100_and_h200_are_not_confused():
    assert DeviceProfile.preset("NVIDIA H100 80GB HBM3").source == "preset:h100"
    assert DeviceProfile.preset("h200").source == "preset:h200"
    assert DeviceProfile.preset("GeForce RTX 4090").source == "preset:rtx-4090"


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown device preset 'a1000'.*Known presets: .*a100"):
        DeviceProfile.preset("a1000")


def test_a100_facts():
    a100 = DeviceProfile.preset("a100")
    assert a100.supports("bf16") == FAST and a100.supports("tf32") == FAST
    assert a100.has_matrix_units
    assert a100.alignment_for(torch.float16) == 8 and a100.alignment_for(torch.bfloat16) == 8
    assert a100.alignment_for(torch.int8) == 16
    assert a100.fast_autocast_dtype() == torch.bfloat16


def test_t4_has_no_native_bf16():
    t4 = DeviceProfile.preset("t4")
    assert t4.supports("bf16") == EMULATED
    assert t4.supports("tf32") == UNSUPPORTED
    assert t4.fast_autocast_dtype() == torch.float16


def test_cpu_presets():
    avx2 = DeviceProfile.preset("cpu-avx2")
    amx = DeviceProfile.preset("sapphire-rapids")
    assert avx2.supports("bf16") == EMULATED and avx2.fast_autocast_dtype() is None
    assert amx.supports("bf16") == FAST and amx.fast_autocast_dtype() == torch.bfloat16
    assert DeviceProfile.preset("cascade lake").supports("int8_dynamic") == FAST


def test_unknown_gpu_falls_back_to_compute_capability():
    caps, align = cuda_capabilities((7, 5))
    assert caps["tensor_cores"] == FAST and caps["bf16"] == EMULATED and align["fp16"] == 8
    caps, _ = cuda_capabilities((9, 0))
    assert caps["fp8"] == FAST


def test_bad_profile_values_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        DeviceProfile(kind="tpu", name="x")
    with pytest.raises(ValueError, match="capabilities"):
        DeviceProfile(kind="cpu", name="x", capabilities={"bf16": "quick"})


def test_resolve_target_validates():
    assert resolve_target(None) is None
    assert resolve_target("a100").name == "NVIDIA A100"
    with pytest.raises(TypeError, match="target must be None, a preset name"):
        resolve_target(42)
    with pytest.raises(ValueError, match="target: unknown device preset"):
        resolve_target("nope-gpu")
