"""ddp-find-unused: DDP searching for unused parameters while every parameter gets a gradient.

The scenario runs real DDP on CPU (2 ranks, gloo) through Lightning's spawn strategy; rank files carry
what each child saw (spawned children do not send the callback back).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from perfcallbacks import DeviceProfile
from perfcallbacks.adapters.facts import hf_find_unused, observe_gradients
from perfcallbacks.checks.distributed import ddp_find_unused
from perfcallbacks.context import DDPFacts, RunContext

pl = pytest.importorskip("lightning.pytorch")

from _ranks import RankRecorder  # noqa: E402

WARMUP = 4


class TwoHeads(pl.LightningModule):
    """``use_both=False`` leaves ``head_b`` unused: there find_unused_parameters is needed."""

    def __init__(self, use_both: bool = True) -> None:
        super().__init__()
        self.use_both = use_both
        self.body = nn.Linear(16, 16)
        self.head_a = nn.Linear(16, 4)
        self.head_b = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.head_a(h) + (self.head_b(h) if self.use_both else 0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RankFacts(RankRecorder):
    def record(self, trainer) -> dict:
        adv = self.advisor
        hint = adv.report.hint("ddp-find-unused")
        return {"hint": hint.to_dict() if hint else None, "ddp": vars(adv.context.ddp) if adv.context.ddp else None,
                "grad_steps": adv.context.gradients.steps, "missing": adv.context.gradients.missing,
                "warned": sorted(adv.warned)}


def _loader():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(128, 16, generator=g), torch.randint(0, 4, (128,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


def _spawn_fit(tmp_path: Path, strategy: str, use_both: bool = True) -> dict[int, dict]:
    out = tmp_path / "ranks"
    out.mkdir()
    local = DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)
    cb = RankFacts(str(out), warmup_steps=WARMUP, verbose=False, local=local,
                   report_path=str(tmp_path / "perf_hints.json"))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), callbacks=[cb])
    trainer.fit(TwoHeads(use_both), _loader())
    return {r["rank"]: r for r in (json.loads(p.read_text()) for p in out.glob("rank*.json"))}


@pytest.mark.slow
def test_ddp_find_unused_true_with_every_parameter_used_fires(tmp_path):
    ranks = _spawn_fit(tmp_path, "ddp_spawn_find_unused_parameters_true")
    assert set(ranks) == {0, 1}
    hint = ranks[0]["hint"]
    assert hint is not None and hint["severity"] == "warning"
    assert hint["evidence"]["world_size"] == 2
    assert hint["evidence"]["parameters_with_grad_every_step"] == 6  # 3 Linear x (weight, bias)
    assert hint["evidence"]["steps_observed"] == WARMUP
    assert "ddp_spawn_find_unused_parameters_true" in hint["evidence"]["source"]
    assert 'strategy="ddp"' in hint["fix"]
    assert ranks[0]["ddp"]["find_unused_parameters"] is True and ranks[0]["missing"] == {}
    assert ranks[1]["warned"] == []  # rank 1 never warns


@pytest.mark.slow
def test_plain_ddp_is_quiet(tmp_path):
    ranks = _spawn_fit(tmp_path, "ddp_spawn")
    assert ranks[0]["ddp"]["find_unused_parameters"] is False
    assert ranks[0]["hint"] is None


def _ctx(find_unused=True, static=False) -> RunContext:
    ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"), framework="hf", world_size=2, distributed=True)
    ctx.phase = "warmup"
    ctx.ddp = DDPFacts(find_unused_parameters=find_unused, static_graph=static, source="HF default")
    return ctx


def _backward(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    nn.functional.cross_entropy(model(x), y).backward()


def test_an_unused_parameter_keeps_it_quiet():
    model, ctx = TwoHeads(use_both=False), _ctx()
    for _ in range(3):
        _backward(model)
        observe_gradients(model, ctx)
    assert ctx.gradients.missing == {"head_b.weight": 3, "head_b.bias": 3}
    assert ddp_find_unused(ctx) is None  # the search is needed here


def test_every_parameter_used_fires_with_hf_fix_and_static_graph_is_quiet():
    model, ctx = TwoHeads(use_both=True), _ctx()
    for _ in range(3):
        _backward(model)
        observe_gradients(model, ctx)
    hint = ddp_find_unused(ctx)
    assert hint.evidence["parameters_with_grad_every_step"] == 6 and hint.evidence["steps_observed"] == 3
    assert "ddp_find_unused_parameters=False" in hint.fix
    ctx.ddp.static_graph = True
    assert ddp_find_unused(ctx) is None


def test_suppress_silences_ddp_find_unused():
    from perfcallbacks import Advisor

    adv = Advisor(warn=False, suppress=["ddp-find-unused"], local=DeviceProfile.preset("cpu-avx2"))
    model = TwoHeads()
    adv.context.ddp = DDPFacts(find_unused_parameters=True)
    for _ in range(3):
        _backward(model)
        observe_gradients(model, adv.context)
    adv.run_checks("warmup")
    assert "ddp-find-unused" not in adv.report.hint_ids


def test_hf_default_turns_find_unused_on_without_gradient_checkpointing():
    transformers = pytest.importorskip("transformers")
    from types import SimpleNamespace

    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=50)
    model = transformers.BertForSequenceClassification(cfg)
    args = SimpleNamespace(ddp_find_unused_parameters=None, activation_checkpointing=False,
                           gradient_checkpointing=False)
    assert hf_find_unused(args, model)[0] is True
    model.gradient_checkpointing_enable()
    assert hf_find_unused(args, model)[0] is False
    assert hf_find_unused(SimpleNamespace(ddp_find_unused_parameters=False), model) == (
        False, "TrainingArguments(ddp_find_unused_parameters=False)")
    assert hf_find_unused(args, nn.Linear(2, 2))[0] is True  # not a PreTrainedModel: HF passes True
