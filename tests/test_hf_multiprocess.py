"""HFPerfHints in a real 2-process CPU DDP run (torch.distributed.run, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).parent / "mp_scripts" / "hf_ddp_train.py"


def _free_port() -> int:
    with socket.socket() as sock:  # --master_port 0 hangs the static rendezvous: pick one
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp_path: Path, script: Path, threads: int) -> Path:
    """``torchrun --nproc_per_node 2 script <out>``; returns ``<out>`` (the ranks' records)."""
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_two_process_trainer_run_writes_one_report_and_warns_once(tmp_path):
    out = _launch(tmp_path, SCRIPT, threads=2)

    records = {r["rank"]: r for r in (json.loads(p.read_text()) for p in out.glob("warnings-rank*.json"))}
    assert sorted(records) == [0, 1]
    for record in records.values():
        assert record["steps"] == 4 and record["world_size"] == 2 and record["distributed"]
        assert record["local_world_size"] == 2
        assert "tensor-cores-idle" in record["hints"]  # both ranks analyse ...
    assert records[0]["is_rank_zero"] and not records[1]["is_rank_zero"]
    # ... only rank zero warns, and once per hint id
    assert records[1]["warned"] == []
    counts = Counter(records[0]["warned"])
    assert counts["tensor-cores-idle"] == 1 and max(counts.values()) == 1
    # 2 processes x 2 threads on this machine's cores is the textbook oversubscription
    if (os.cpu_count() or 1) <= 2:
        assert "cpu-oversubscribed" in records[0]["hints"]

    reports = list(out.rglob("perf_hints*.json"))
    assert [p.name for p in reports] == ["perf_hints.json"]  # one report: rank zero only
    data = json.loads(reports[0].read_text())
    assert data["framework"] == "hf" and "tensor-cores-idle" in [h["id"] for h in data["hints"]]


@pytest.mark.slow
def test_two_process_predict_rank_zero_decides_and_rank_one_follows(tmp_path):
    out = _launch(tmp_path, Path(__file__).parent / "mp_scripts" / "hf_ddp_predict.py", threads=1)
    r0, r1 = (json.loads((out / f"predict-rank{r}.json").read_text()) for r in (0, 1))
    [f0], [f1] = r0["fixes"], r1["fixes"]
    assert f0["status"] == "applied", f0["reason"]
    assert f1["status"] == "applied" and f1["reason"].startswith("decided on rank 0")
    # both ranks ran the slow model only while rank zero measured (same calls), then the fast copy
    assert r0["slow_calls"] == r1["slow_calls"] == f0["shadowed"] < 50
    assert r0["rows"] >= 401 and r0["max_error"] < 1e-4 and r1["max_error"] < 1e-4
