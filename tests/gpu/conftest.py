"""The accelerator suite's test plumbing: the ``gpu`` marker, clean skips without CUDA, hint gates.

* ``@pytest.mark.gpu``: needs a CUDA device; skipped with the reason when
  ``torch.cuda.is_available()`` is false (so ``make test`` and CI stay green on CPU).
* ``@pytest.mark.needs_hint("id")``: the test exercises a hint that DESIGN.md lists
  but that may not have landed yet; skipped, naming what is missing, until the id
  is in ``perfcallbacks.hints.REGISTRY`` and a check emits it.

The model builders live in ``benchmarks/gpu/scenarios.py`` (shared with the GPU
benchmarks, so a test and the measurement of a hint look at the same model).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

NO_CUDA = "no CUDA device: torch.cuda.is_available() is False (run `make gpu-check` on a GPU machine)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped cleanly without one")
    config.addinivalue_line("markers", "needs_hint(id): skipped until hint `id` is registered and emitted by a check")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from scenarios import hint_missing

    cuda = torch.cuda.is_available()
    for item in items:
        if item.get_closest_marker("gpu") is not None and not cuda:
            item.add_marker(pytest.mark.skip(reason=NO_CUDA))
            continue
        for mark in item.iter_markers("needs_hint"):
            reason = hint_missing(mark.args[0])
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _restore_backend_flags():
    """Lightning's ``benchmark=`` is process-wide: put it back (the root conftest restores matmul precision)."""
    bench = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = bench
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture
def strict_fp32():
    """Matmul precision 'highest' (plain fp32, Tensor Cores idle) for the test; the root conftest restores it."""
    torch.set_float32_matmul_precision("highest")
