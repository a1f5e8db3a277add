"""attention-eager: an HF BERT built with attn_implementation="eager" in a real HF Trainer run, and a
LightningModule computing softmax(q @ k^T) @ v by hand."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pl = pytest.importorskip("lightning.pytorch")

from _scenario import lightning_fit, loud_new_hints  # noqa: E402
from test_checks_debug import NEW_IDS  # noqa: E402

from perfcallbacks import Advisor, DeviceProfile, HFPerfHints, PerfHintWarning  # noqa: E402
from perfcallbacks.checks.model_attention import attention_eager  # noqa: E402
from perfcallbacks.context import AttentionFacts, RunContext  # noqa: E402


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n=64, length=32, vocab=100):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, length), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}



@pytest.fixture
def probe_budget(monkeypatch):
    """A generous probe budget: these tests check what the probe measures, not whether this (shared, loaded)
    machine's short fits leave room for it (the budget itself: test_facts.py)."""
    import perfcallbacks.facts

    monkeypatch.setattr(perfcallbacks.facts, "PROBE_MIN_BUDGET_S", 60.0)

def _hf_fit(tmp_path, impl: str, suppress=()):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                  vocab_size=100, max_position_embeddings=64)
    model = transformers.BertForSequenceClassification._from_config(cfg, attn_implementation=impl)
    cb = HFPerfHints(warmup_steps=4, verbose=False, suppress=list(suppress))
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8,
                                          report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                                          dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenData(), callbacks=[cb])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", PerfHintWarning)
        trainer.train()
    return cb.advisor, model


def test_hf_eager_bert_is_found_and_sdpa_measured(tmp_path, probe_budget):
    advisor, model = _hf_fit(tmp_path, "eager")
    attn = advisor.context.attention
    assert attn.implementation == "eager" and attn.supports_sdpa and attn.model_class == "BertForSequenceClassification"
    assert {"eager_s", "sdpa_s", "speedup"} <= set(attn.measured)
    assert model.config._attn_implementation == "eager"  # the probe switched a copy only
    hint = advisor.report.hint("attention-eager")
    if attn.measured["speedup"] >= 1.03:  # the check's own threshold
        assert hint.evidence["measured_speedup"] == pytest.approx(attn.measured["speedup"], abs=1e-3)
        assert 'attn_implementation="sdpa"' in hint.fix and "HFPerfHints(auto_apply=True)" in hint.fix
    else:
        assert hint is None


def test_hf_sdpa_bert_is_quiet(tmp_path):
    advisor, _ = _hf_fit(tmp_path, "sdpa")
    assert advisor.report.hint("attention-eager") is None
    assert not loud_new_hints(advisor.report, NEW_IDS)
    assert "sdpa" not in advisor.context.attention.measured  # no probe without eager attention


class HandAttention(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return torch.softmax(scores, dim=-1) @ v


class TinyTransformer(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = HandAttention()
        self.out = nn.Linear(32, 2)

    def forward(self, x):
        return self.out(self.attn(x).mean(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _seq_loader():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 10, 32, generator=g), torch.randint(0, 2, (64,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


def test_hand_written_softmax_attention_in_lightning_module():
    report, _, _ = lightning_fit(TinyTransformer(), _seq_loader(), steps=6, warmup=4)
    hint = report.hint("attention-eager")
    assert hint is not None and hint.severity == "info" and hint.evidence["modules"] == ["attn"]
    assert "scaled_dot_product_attention" in hint.fix
    report, _, _ = lightning_fit(TinyTransformer(), _seq_loader(), steps=6, warmup=4, suppress=["attention-eager"])
    assert "attention-eager" not in report.hint_ids


def test_thresholds_on_injected_measurements():
    def ctx_with(speedup, target=None):
        ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"), framework="hf",
                         target=DeviceProfile.preset(target) if target else None)
        ctx.phase = "warmup"
        ctx.attention = AttentionFacts(implementation="eager", supports_sdpa=True, model_class="BertModel",
                                       measured={"speedup": speedup, "eager_s": 0.02 * speedup, "sdpa_s": 0.02})
        return ctx

    assert attention_eager(ctx_with(1.0)) is None
    assert attention_eager(ctx_with(1.5)).severity == "warning"
    assert attention_eager(ctx_with(1.05)).severity == "info"
    planned = attention_eager(ctx_with(1.0, target="a100"))  # CPU numbers say nothing about the A100
    assert planned is not None and planned.impact is None
    adv = Advisor(warn=False, suppress=["attention-eager"], local=DeviceProfile.preset("cpu-avx2"))
    adv.context.attention = ctx_with(1.5).attention
    adv.run_checks("warmup")
    assert "attention-eager" not in adv.report.hint_ids
