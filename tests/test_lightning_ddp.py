"""PerfHintCallback under real multi-process DDP on CPU (2 ranks, gloo): one report, no duplicate warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from _ranks import RankRecorder  # noqa: E402
from perfcallbacks import DeviceProfile, Report  # noqa: E402

WARMUP = 4


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 16)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class StageRecorder(RankRecorder):
    def record(self, trainer) -> dict:
        adv = self.advisor
        return {"report_written": str(self.report_written or ""), "step_times": len(adv.context.step_times),
                "world_size": adv.context.world_size, "local_world_size": adv.context.local_world_size,
                "strategy": adv.context.strategy, "warned": sorted(adv.warned), "is_rank_zero": adv.is_rank_zero}


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(256, 32, generator=gen), torch.randint(0, 16, (256,), generator=gen)),
                      batch_size=16)


def _check_ranks(out_dir: Path, report: Path, stderr: str) -> None:
    records = {r["rank"]: r for r in (json.loads(p.read_text()) for p in out_dir.glob("rank*.json"))}
    assert set(records) == {0, 1}
    assert records[0]["report_written"] == str(report) and records[1]["report_written"] == ""
    assert records[0]["is_rank_zero"] and not records[1]["is_rank_zero"]
    assert records[1]["warned"] == []  # rank 1 never warns
    assert "tensor-cores-idle" in records[0]["warned"]
    # Step times of both ranks were gathered (each rank contributes WARMUP - 1 timed steps).
    assert records[0]["step_times"] == 2 * (WARMUP - 1)
    assert records[0]["world_size"] == 2 and records[0]["local_world_size"] == 2
    assert stderr.count("[tensor-cores-idle]") == 1  # one warning, from rank zero only
    loaded = Report.load(report)
    assert loaded.framework == "lightning" and loaded.hint("tensor-cores-idle") is not None


@pytest.mark.slow
def test_ddp_spawn_two_cpu_ranks(tmp_path, capfd):
    out_dir = tmp_path / "ranks"
    out_dir.mkdir()
    report = tmp_path / "perf_hints.json"
    local = DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)
    cb = StageRecorder(str(out_dir), target="a100", warmup_steps=WARMUP, verbose=False, report_path=str(report),
                      local=local)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=8, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), callbacks=[cb])
    trainer.fit(TinyModule(), _loader())
    # ddp_spawn does not send the children's trainer state back: the rank files are the evidence.
    _check_ranks(out_dir, report, capfd.readouterr().err)
    records = json.loads((out_dir / "rank0.json").read_text())
    assert records["strategy"] == "ddp_spawn"


DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests_dir!r})
import lightning.pytorch as pl
from perfcallbacks import DeviceProfile
from test_lightning_ddp import StageRecorder, TinyModule, _loader, WARMUP

local = DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)
cb = StageRecorder({out_dir!r}, target="a100", warmup_steps=WARMUP, verbose=False, report_path={report!r},
                  local=local)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=8, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir={root!r}, callbacks=[cb])
trainer.fit(TinyModule(), _loader())
"""


def _run_ddp_script(tmp_path: Path, template: str) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """Write ``template`` as a script and run it: strategy="ddp" re-launches it once per rank."""
    out_dir = tmp_path / "ranks"
    out_dir.mkdir()
    report = tmp_path / "perf_hints.json"
    script = tmp_path / "ddp_script.py"
    script.write_text(textwrap.dedent(template.format(
        tests_dir=str(Path(__file__).parent), out_dir=str(out_dir), report=str(report), root=str(tmp_path))))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"))}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out_dir, report, proc


@pytest.mark.slow
def test_ddp_subprocess_two_cpu_ranks(tmp_path):
    """strategy="ddp" re-launches the script per rank, so it runs from a script, as users run it."""
    out_dir, report, proc = _run_ddp_script(tmp_path, DDP_SCRIPT)
    _check_ranks(out_dir, report, proc.stderr)
    assert json.loads((out_dir / "rank0.json").read_text())["strategy"] == "ddp"


DDP_PREDICT_SCRIPT = """
import dataclasses, json, sys
from pathlib import Path
sys.path.insert(0, {tests_dir!r})
import torch
import lightning.pytorch as pl
import perfcallbacks.fixes.pipeline as pipeline
from perfcallbacks import Advisor, DeviceProfile, PerfHintCallback
from test_lightning import _SlowModule, _fast_copy_spec, loader

# every rank runs this script: the same fake fix everywhere
pipeline.FIXES = (dataclasses.replace(_fast_copy_spec(), stages=("predict", "validate")),)
Advisor.probe_inference = lambda self, model, batch, **kw: []


class PairModule(_SlowModule):
    def predict_step(self, batch, batch_idx):
        x, _ = batch
        return x, self(x)


class Recorder(PerfHintCallback):
    def on_validation_end(self, trainer, pl_module):
        super().on_validation_end(trainer, pl_module)
        Path({out_dir!r}, f"validate{{trainer.global_rank}}.json").write_text(json.dumps(
            {{"fixes": [[f.id, f.status, f.reason] for f in self.advisor.fixes], "model_calls": pl_module.calls}}))

    def on_predict_end(self, trainer, pl_module):
        super().on_predict_end(trainer, pl_module)
        fixes = [{{"id": f.id, "status": f.status, "reason": f.reason,
                  "shadowed": f.details.get("calls_shadowed")}} for f in self.advisor.fixes if f.id == "fake-fast"]
        Path({out_dir!r}, f"rank{{trainer.global_rank}}.json").write_text(json.dumps(
            {{"fixes": fixes, "model_calls": pl_module.calls, "batches": trainer.num_predict_batches}}))


local = DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)
model = PairModule()
model.delay_s = 0.02
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir={root!r},
                     callbacks=[Recorder(auto_apply=True, verbose=False, local=local, report_path={report!r})])
trainer.validate(model, loader(n=2 * 20 * 16))  # 20 batches per rank: a step with collectives is not shadowed
model.calls = 0
pairs = trainer.predict(model, loader(n=2 * 39 * 16 + 1))  # 625 and 624 rows: ranks of 40 and 39 batches
err = max(float((out - model.layer(x)).abs().max()) for x, out in pairs)
rank = trainer.global_rank
path = Path({out_dir!r}, f"rank{{rank}}.json")
record = json.loads(path.read_text())
record["max_error"] = err
path.write_text(json.dumps(record))
"""


@pytest.mark.slow
def test_ddp_predict_rank_zero_decides_and_every_rank_applies(tmp_path):
    """Real DDP predict (2 CPU ranks, gloo, uneven shards): rank zero measures within the shorter rank's
    job, rank 1 follows its decision from the same call on, and both get the original's outputs."""
    out_dir, report, _ = _run_ddp_script(tmp_path, DDP_PREDICT_SCRIPT)
    for r in (0, 1):
        validate = json.loads((out_dir / f"validate{r}.json").read_text())
        assert validate["model_calls"] == 20  # every validation batch ran once, on the user's module
        assert ["fake-fast", "skipped"] == validate["fixes"][-1][:2] and "only predict" in validate["fixes"][-1][2]
    r0, r1 = (json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    assert sorted([r0["batches"], r1["batches"]]) == [[39], [40]]
    f0, f1 = r0["fixes"][-1], r1["fixes"][-1]  # the predict stage's decision (validate's skip came first)
    assert f0["status"] == "applied", f0["reason"]
    assert f1["status"] == "applied" and f1["reason"].startswith("decided on rank 0")
    # Rank 1 ran the user's model exactly while rank zero shadowed (same call index), then the copy.
    assert r0["model_calls"] == r1["model_calls"] == f0["shadowed"] < 39
    assert r0["max_error"] < 1e-5 and r1["max_error"] < 1e-5
    saved = json.loads(report.read_text())
    assert next(f for f in saved["fixes"] if f["id"] == "fake-fast")["status"] == "applied"
