"""I/O faults: an unwritable report is a warning, never an exception; a report is replaced atomically.

Atomic means: the new JSON goes to a temp file in the same folder, then one
``os.replace``. Whatever fails in between (disk full half-way through the write,
the rename itself, a Ctrl-C), the previous report stays intact and no temp file
is left behind.
"""

from __future__ import annotations

import errno
import io
import warnings

import pytest

from _odd import load_report, loader, mlp, tmp_leftovers
from perfcallbacks import Advisor, Report
from perfcallbacks.hints import PerfCallbacksIOWarning
from perfcallbacks import report as report_mod
from perfcallbacks.hints import Hint


def _write_warnings(fn, *args, **kwargs) -> list[str]:
    """Run ``fn`` recording every warning; return the report-write ones (hints are not under test here)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*args, **kwargs)
    return [str(w.message) for w in caught
            if issubclass(w.category, PerfCallbacksIOWarning) and "could not write the report" in str(w.message)]


def _unwritable(tmp_path):
    """A path under a regular file: mkdir/open fail for every user, root included."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    return blocker / "sub" / "perf_hints.json"


def test_lightning_fit_with_unwritable_report_path_warns(tmp_path, local):
    pytest.importorskip("lightning.pytorch")
    from test_odd_runs_lightning import Flex, make_cb, make_trainer

    cb = make_cb(local, report_path=_unwritable(tmp_path))
    trainer = make_trainer(tmp_path, cb)
    assert _write_warnings(trainer.fit, Flex(mlp()), loader(), loader())
    assert _write_warnings(trainer.predict, Flex(mlp()), loader(n=32))
    assert trainer.global_step == 4 and cb.report_written is None


def test_hf_train_with_unwritable_report_path_warns(tmp_path):
    pytest.importorskip("transformers")
    from test_odd_runs_hf import hf_trainer

    trainer, cb = hf_trainer(tmp_path, cb_kwargs={"report_path": _unwritable(tmp_path)})
    assert _write_warnings(trainer.train)
    assert trainer.state.global_step == 4


def test_advisor_write_report_to_unwritable_path_warns(tmp_path, local):
    advisor = Advisor(mlp(), warn=False, local=local)
    with pytest.warns(PerfCallbacksIOWarning, match="could not write the report"):
        assert advisor.write_report(_unwritable(tmp_path)) is None


# -- atomic replacement ----------------------------------------------------------------------
def _report(marker: str) -> Report:
    hint = Hint(id="padding-waste", category="padding", severity="warning", phase="warmup", message=marker,
                fix="group by length", evidence={"pad_fraction": 0.5}, impact=1.5)
    return Report(framework="torch", device={"kind": "cpu"}, hints=[hint])


class _DiskFullHalfway(io.StringIO):
    """A file that accepts half of what is written, then fails like a full disk."""

    def __init__(self, real) -> None:
        super().__init__()
        self.real = real

    def write(self, text: str) -> int:
        self.real.write(text[: len(text) // 2])
        self.real.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


def test_disk_full_mid_write_keeps_the_previous_report(tmp_path, monkeypatch):
    path = tmp_path / "perf_hints.json"
    _report("first").save(path)
    before = path.read_bytes()
    real_fdopen = report_mod.os.fdopen
    monkeypatch.setattr(report_mod.os, "fdopen", lambda fd, *a, **k: _DiskFullHalfway(real_fdopen(fd, *a, **k)))
    with pytest.warns(PerfCallbacksIOWarning, match="No space left"):
        assert report_mod.save_report_safely(_report("second"), path) is None
    assert path.read_bytes() == before and tmp_leftovers(tmp_path) == []
    assert load_report(path)["hints"][0]["message"] == "first"


def test_failed_rename_keeps_the_previous_report(tmp_path, monkeypatch):
    path = tmp_path / "perf_hints.json"
    _report("first").save(path)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "I/O error during rename")

    monkeypatch.setattr(report_mod.os, "replace", failing_replace)
    with pytest.warns(PerfCallbacksIOWarning, match="I/O error"):
        assert report_mod.save_report_safely(_report("second"), path) is None
    assert path.read_bytes() == before and tmp_leftovers(tmp_path) == []


def test_failed_serialisation_keeps_the_previous_report(tmp_path, monkeypatch):
    path = tmp_path / "perf_hints.json"
    _report("first").save(path)
    before = path.read_bytes()

    def broken_to_json(self, indent=2):
        raise ValueError("Out of range float values are not JSON compliant")

    monkeypatch.setattr(Report, "to_json", broken_to_json)
    with pytest.warns(PerfCallbacksIOWarning, match="JSON compliant"):
        assert report_mod.save_report_safely(_report("second"), path) is None
    assert path.read_bytes() == before and tmp_leftovers(tmp_path) == []


def test_interrupt_mid_write_propagates_and_keeps_the_previous_report(tmp_path, monkeypatch):
    """Ctrl-C is the user's, not ours: it propagates, and the old report is still whole."""
    path = tmp_path / "perf_hints.json"
    _report("first").save(path)
    before = path.read_bytes()
    real_fdopen = report_mod.os.fdopen

    class Interrupted(_DiskFullHalfway):
        def write(self, text: str) -> int:
            self.real.write(text[:10])
            raise KeyboardInterrupt

    monkeypatch.setattr(report_mod.os, "fdopen", lambda fd, *a, **k: Interrupted(real_fdopen(fd, *a, **k)))
    with pytest.raises(KeyboardInterrupt):
        report_mod.save_report_safely(_report("second"), path)
    assert path.read_bytes() == before and tmp_leftovers(tmp_path) == []


def test_rename_failure_during_a_real_fit_keeps_the_first_fits_report(tmp_path, local, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    from test_odd_runs_lightning import Flex, make_cb, make_trainer

    path = tmp_path / "perf_hints.json"
    cb = make_cb(local, target="a100", report_path=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, cb).fit(Flex(mlp()), loader())
    before = path.read_bytes()
    load_report(path)

    def failing_replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(report_mod.os, "replace", failing_replace)
    trainer = make_trainer(tmp_path, cb, max_steps=6)
    assert any("Read-only file system" in m for m in _write_warnings(trainer.fit, Flex(mlp()), loader()))
    assert trainer.global_step == 6
    assert path.read_bytes() == before and tmp_leftovers(tmp_path) == []


def test_report_with_odd_evidence_still_serialises(tmp_path):
    """Evidence from numpy/torch scalars, NaN, inf, tuples and objects never makes the write fail."""
    import numpy as np
    import torch

    hint = Hint(id="padding-waste", category="padding", severity="warning", phase="warmup", message="m", fix="f",
                evidence={"t": torch.tensor(0.5), "n": np.float32(0.25), "nan": float("nan"), "inf": float("inf"),
                          "tuple": (1, 2), "set": {3}, "obj": object(), 7: "int key"}, impact=None)
    path = Report(hints=[hint]).save(tmp_path / "r.json")
    evidence = load_report(path)["hints"][0]["evidence"]
    assert evidence["t"] == 0.5 and evidence["n"] == 0.25 and evidence["nan"] is None and evidence["inf"] is None
