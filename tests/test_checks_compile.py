"""compile-recompiles / compile-graph-breaks: read from dynamo's own records in real compiled Lightning fits.

``backend="eager"`` keeps compiling cheap on this CPU: dynamo's guards, recompiles and graph breaks are
the same as with inductor (they happen before the backend).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch")

from _scenario import lightning_fit, loud_new_hints  # noqa: E402
from test_checks_debug import NEW_IDS  # noqa: E402

VOCAB, WIDTH = 64, 32


class TokenNet(nn.Module):
    def __init__(self, graph_break: bool = False) -> None:
        super().__init__()
        self.graph_break = graph_break
        self.emb = nn.Embedding(VOCAB, WIDTH)
        self.proj = nn.Linear(WIDTH, 4)

    def forward(self, ids):
        h = self.emb(ids).mean(1)
        if self.graph_break:
            print("", end="")  # a print inside forward: dynamo breaks the graph here
        return self.proj(h)


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, ids):
        return self.net(ids)

    def training_step(self, batch, batch_idx):
        ids, y = batch
        return nn.functional.cross_entropy(self(ids), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Dynamo's cache limit is per code object: earlier tests' recompiles of TokenNet.forward would make
    # later ones fall back to eager (real behaviour, but not what each test plants).
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _loader(lengths: list[int]) -> DataLoader:
    """Dynamic padding: each batch is padded to its own length (one length per batch here)."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(1, VOCAB, (8, n), generator=g), torch.randint(0, 4, (8,), generator=g))
               for n in lengths]
    return DataLoader(batches, batch_size=None)


def _compiled(graph_break=False, dynamic=False):
    torch.manual_seed(0)
    return Classifier(torch.compile(TokenNet(graph_break), backend="eager", dynamic=dynamic))


def _earlier_compiles(lengths: list[int]) -> None:
    """What an earlier test (or the user's earlier work) leaves behind: dynamo's records of recompiles,
    which ``torch._dynamo.reset()`` keeps while it restarts the compile ids at "0/0"."""
    net = torch.compile(TokenNet(), backend="eager", dynamic=False)
    for n in lengths:
        net(torch.randint(1, VOCAB, (8, n)))
    torch._dynamo.reset()


def test_recompiles_per_padded_length_fire_with_reasons():
    lengths = [11, 13, 17, 19, 23, 29, 31, 37]
    # The suite once lost this hint after earlier compiles: their records carried the same ids as this run's.
    _earlier_compiles(lengths)
    report, _, warned = lightning_fit(_compiled(dynamic=False), _loader(lengths), steps=8, warmup=6)
    hint = report.hint("compile-recompiles")
    assert hint is not None and hint.severity == "warning"
    ev = hint.evidence
    assert ev["recompiles"] >= 2  # dynamic=False: a graph per new length (the hint fires from 2 on)
    assert all("size mismatch" in r or "expected" in r for r in ev["reasons"])
    assert set(ev["sizes_in_guards"]) & set(lengths)
    assert "dynamic=True" in hint.fix and "pad_to_multiple_of" in hint.fix
    assert any("[compile-recompiles]" in str(w.message) for w in warned)


def test_fixed_length_compiled_run_is_quiet_and_suppress_works():
    report, _, _ = lightning_fit(_compiled(dynamic=False), _loader([16] * 8), steps=8, warmup=6)
    assert report.hint("compile-recompiles") is None and report.hint("compile-graph-breaks") is None
    assert not loud_new_hints(report, NEW_IDS)
    report, _, warned = lightning_fit(_compiled(dynamic=False), _loader([11, 13, 17, 19, 23, 29, 31, 37]),
                                      steps=8, warmup=6, suppress=["compile-recompiles"])
    assert "compile-recompiles" not in report.hint_ids
    assert not any("[compile-recompiles]" in str(w.message) for w in warned)


def test_graph_break_fires_with_dynamo_reason():
    report, _, _ = lightning_fit(_compiled(graph_break=True, dynamic=None), _loader([16] * 6), steps=6, warmup=4)
    hint = report.hint("compile-graph-breaks")
    assert hint is not None
    assert hint.evidence["graph_breaks"] >= 1
    assert any("print" in r["reason"] for r in hint.evidence["reasons"])
    assert hint.evidence["compiled_modules"] == ["net"]
    assert "torch._dynamo.explain" in hint.fix


def test_uncompiled_model_has_no_compile_facts():
    from perfcallbacks import DeviceProfile
    from perfcallbacks.context import RunContext
    from perfcallbacks.facts import capture_process_facts

    ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"))
    capture_process_facts(ctx, TokenNet())
    assert ctx.compile is None
