"""DDP (2 CPU ranks, ddp_spawn): ranks that see different batch shapes keep the report consistent.

tests/test_lightning_ddp.py covers the launch, one report and rank-zero-only
warnings. Here the collate pads to a rank-dependent length (as a per-rank
bucketing sampler would), so what each rank observes differs; the step-time gather must not
deadlock on it and rank 0's report must be one valid JSON with one entry per
hint id.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

pl = pytest.importorskip("lightning.pytorch")

from _odd import load_report, tmp_leftovers  # noqa: E402
from _ranks import RankRecorder  # noqa: E402
from perfcallbacks import DeviceProfile  # noqa: E402

# Rank 0 pads to 8 tokens, rank 1 to 13: aligned vs unaligned on an A100.
LENGTHS = {0: 8, 1: 13}
WARMUP = 3


class RankRows(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        length = 3 + i % 6  # real lengths 3..8: some padding on both ranks
        return torch.arange(1, length + 1), i % 4


def pad_collate(rows):
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    width = LENGTHS[rank]  # each rank pads to its own length
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (seq, _) in enumerate(rows):
        ids[i, : len(seq)], mask[i, : len(seq)] = seq, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r[1] for r in rows])}


class TokenModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RankShapes(RankRecorder):
    """Records, per rank, the shapes the advisor saw."""

    def record(self, trainer) -> dict:
        adv = self.advisor
        return {"seq_lens": sorted({b.seq_len for b in adv.context.batches}), "hints": sorted(adv.hints),
                "written": str(self.report_written or ""), "step_times": len(adv.context.step_times),
                "failures": adv.check_failures}


@pytest.mark.slow
def test_ranks_with_different_batch_shapes_give_one_consistent_report(tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    report = tmp_path / "perf_hints.json"
    local = DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)
    cb = RankShapes(str(out), target="a100", warmup_steps=WARMUP, verbose=False, report_path=str(report), local=local)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=6, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), callbacks=[cb])
    trainer.fit(TokenModule(), DataLoader(RankRows(), batch_size=8, collate_fn=pad_collate))
    ranks = {r["rank"]: r for r in (json.loads(p.read_text()) for p in out.glob("rank*.json"))}
    assert set(ranks) == {0, 1}
    assert ranks[0]["seq_lens"] == [LENGTHS[0]] and ranks[1]["seq_lens"] == [LENGTHS[1]]  # shapes differ
    assert ranks[0]["step_times"] == ranks[1]["step_times"] == 2 * (WARMUP - 1)  # the gather completed
    assert ranks[0]["written"] == str(report) and ranks[1]["written"] == ""
    assert ranks[0]["failures"] == [] and ranks[1]["failures"] == []
    data = load_report(report)  # valid JSON, one entry per hint id
    assert sorted(h["id"] for h in data["hints"]) == ranks[0]["hints"]  # the file is rank 0's view, whole
    assert tmp_leftovers(tmp_path) == []
