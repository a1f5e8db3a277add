"""No network, no stray files: the package connects to nothing and writes only its report (and exports).

Sockets are blocked and every attempt recorded during real fits with
``auto_apply=True`` (fixes, probes, report); the file test compares the tree a
fit leaves with and without the callback.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest
import torch

from _odd import loader, mlp


@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing connection attempt is recorded and refused."""
    attempts: list[str] = []

    def refuse(kind):
        def blocked(*args, **kwargs):
            attempts.append(f"{kind}{args[1:] if kind != 'create_connection' else args}")
            raise OSError("network access blocked by the reliability suite")
        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    return attempts


def test_the_blocker_catches_attempts(no_network):
    """The fixture itself is real: a connection attempt is recorded."""
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen("http://example.com", timeout=1)
    assert no_network


def test_lightning_fit_and_predict_make_no_network_calls(no_network, tmp_path, local):
    pytest.importorskip("lightning.pytorch")
    from test_odd_runs_lightning import Flex, make_cb, make_trainer

    model = Flex(mlp())
    cb = make_cb(local, auto_apply=True, target="a100", verbose=True)
    trainer = make_trainer(tmp_path, cb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(), loader())
        trainer.predict(model, loader(n=32))
    assert (tmp_path / "perf_hints.json").exists() and cb.advisor.fixes
    assert no_network == []


def test_hf_train_predict_make_no_network_calls(no_network, tmp_path):
    pytest.importorskip("transformers")
    from _odd import Rows
    from test_odd_runs_hf import hf_trainer

    trainer, cb = hf_trainer(tmp_path, auto_apply=True, target="a100", save_strategy="steps", save_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
        trainer.predict(Rows(32))
    assert (tmp_path / "perf_hints.json").exists() and no_network == []


def test_advisor_and_cli_device_make_no_network_calls(no_network, local, capsys):
    from perfcallbacks import Advisor, DeviceProfile
    from perfcallbacks.cli import main

    DeviceProfile.detect()
    Advisor(mlp(), loader(), target="a100", warn=False, local=local).analyze()
    main(["device", "--json"])
    assert no_network == []


# -- files ------------------------------------------------------------------------------------------
def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _fit_in(folder: Path, monkeypatch, callbacks) -> set[str]:
    import lightning.pytorch as pl

    from test_odd_runs_lightning import Flex

    folder.mkdir()
    monkeypatch.chdir(folder)
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, default_root_dir=str(folder), enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=2,
                         callbacks=callbacks)
    model = Flex(mlp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(), loader())
        trainer.validate(model, loader())
        trainer.predict(model, loader(n=32))
    return _tree(folder)


def test_a_fit_with_the_callback_writes_only_the_report(tmp_path, local, monkeypatch):
    """Default logger and checkpointing on, cwd = the run folder: the only new file is the report."""
    pytest.importorskip("lightning.pytorch")
    from perfcallbacks import PerfHintCallback

    without = _fit_in(tmp_path / "without", monkeypatch, [])
    cb = PerfHintCallback(auto_apply=True, target="a100", warmup_steps=3, verbose=False, local=local)
    with_cb = _fit_in(tmp_path / "with", monkeypatch, [cb])
    assert without, "the plain fit wrote its logs/checkpoint"
    report = str(Path(cb.report_written).relative_to(tmp_path / "with"))
    exported = {p for p in with_cb - without if ".int8.pt2" in p}  # auto_apply's export beside the checkpoint
    assert all(p.startswith("lightning_logs/version_0/checkpoints/") for p in exported)
    assert with_cb - without - exported == {report}
    assert Path(cb.report_written).name == "perf_hints.json"
    assert without - with_cb == set()
