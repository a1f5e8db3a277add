"""Internal failure is contained: a check, probe or fix that raises never stops training.

The failure is logged at DEBUG on the ``perfcallbacks`` logger, the other checks
still run, and the report counts it in ``check_failures``.
"""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch

from _odd import load_report, loader, mlp
from perfcallbacks import Advisor
from perfcallbacks.checks import registry

INJECTED = "injected failure from the reliability suite"


def injected_check(ctx):
    raise RuntimeError(INJECTED)


@pytest.fixture
def raising_check(monkeypatch):
    """Prepend a check that raises in every phase (the first one run, so it could block all others)."""
    bad = registry.Check("gpu-unused", ("setup", "warmup", "inference", "export"), injected_check)
    monkeypatch.setattr(registry, "CHECKS", [bad, *registry.CHECKS])
    return f"{injected_check.__module__}.injected_check"


def _debug_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("perfcallbacks") and r.levelno == logging.DEBUG
            and r.exc_info and INJECTED in str(r.exc_info[1])]


def test_advisor_contains_a_raising_check(raising_check, caplog, local):
    caplog.set_level(logging.DEBUG, logger="perfcallbacks")
    report = Advisor(mlp(), loader(), target="a100", warn=False, local=local, warmup_steps=2).analyze()
    assert "tensor-cores-idle" in report.hint_ids  # the checks after the broken one still ran
    failures = [f for f in report.check_failures if f["check"] == raising_check]
    assert {f["phase"] for f in failures} == {"setup", "warmup"}
    assert all(INJECTED in f["error"] and f["error"].startswith("RuntimeError") for f in failures)
    assert len(_debug_records(caplog)) == 2
    assert json.loads(report.to_json())["check_failures"] == report.check_failures


def test_plain_loop_keeps_training(raising_check, local):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    advisor = Advisor(model, target="a100", warn=False, local=local, warmup_steps=2)
    steps = 0
    for x, y, *_ in _rows(loader()):
        with advisor.step(x):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        steps += 1
    assert steps == 4 and advisor.warmup_done
    assert any(f["check"] == raising_check for f in advisor.check_failures)


def _rows(dl):
    for batch in dl:
        yield batch


def test_lightning_fit_and_predict_survive_a_raising_check(raising_check, caplog, tmp_path, local):
    pl = pytest.importorskip("lightning.pytorch")
    from test_odd_runs_lightning import Flex, make_cb, make_trainer

    caplog.set_level(logging.DEBUG, logger="perfcallbacks")
    cb = make_cb(local, target="a100")
    trainer = make_trainer(tmp_path, cb, max_steps=5)
    model = Flex(mlp())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(), loader())
        preds = trainer.predict(model, loader(n=32))
    assert isinstance(trainer, pl.Trainer) and trainer.global_step == 5 and len(preds) == 2
    data = load_report(tmp_path / "perf_hints.json")
    assert "tensor-cores-idle" in {h["id"] for h in data["hints"]}
    phases = [f["phase"] for f in data["check_failures"] if f["check"] == raising_check]
    assert set(phases) == {"setup", "warmup", "inference"}, phases
    assert _debug_records(caplog), "the failure is visible at DEBUG"


def test_hf_train_survives_a_raising_check(raising_check, caplog, tmp_path):
    pytest.importorskip("transformers")
    from test_odd_runs_hf import hf_trainer

    caplog.set_level(logging.DEBUG, logger="perfcallbacks")
    trainer, cb = hf_trainer(tmp_path, target="a100", max_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert trainer.state.global_step == 4
    data = load_report(tmp_path / "perf_hints.json")
    assert "tensor-cores-idle" in {h["id"] for h in data["hints"]}
    assert {f["phase"] for f in data["check_failures"] if f["check"] == raising_check} >= {"setup", "warmup"}
    assert _debug_records(caplog)


def test_failing_probes_are_counted_not_raised(monkeypatch, caplog, local):
    caplog.set_level(logging.DEBUG, logger="perfcallbacks")

    def broken_probes(ctx, model, batch):
        raise RuntimeError(INJECTED)

    monkeypatch.setattr("perfcallbacks.probes.run_inference_probes", broken_probes)
    model = mlp().train()  # sloppy inference: train mode, autograd on
    advisor = Advisor(model, warn=False, local=local, target="a100")
    advisor.observe_inference_call(model)
    advisor.probe_inference(model, torch.randn(8, 32))
    assert [f["check"] for f in advisor.check_failures] == ["perfcallbacks.probes"]
    assert "grad-in-inference" in advisor.report.hint_ids  # the inference checks still ran
    assert _debug_records(caplog)


def test_lightning_auto_apply_survives_raising_fixes(monkeypatch, tmp_path, local):
    """A fix that raises leaves predict running on the untouched model, with identical outputs."""
    pytest.importorskip("lightning.pytorch")
    import perfcallbacks.fixes as fixes
    from test_odd_runs_lightning import Flex, make_cb, make_trainer

    def boom(*args, **kwargs):
        raise RuntimeError(INJECTED)

    for name in ("tune_threads", "quantize_guarded", "guarded_autocast", "training_thread_cap"):
        monkeypatch.setattr(fixes, name, boom)
    model = Flex(mlp())
    expected = [model(x) for x, _ in loader(n=32)]
    threads = torch.get_num_threads()
    cb = make_cb(local, auto_apply=True)
    trainer = make_trainer(tmp_path, cb, max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Flex(mlp()), loader())
        preds = trainer.predict(model, loader(n=32))
    assert all(torch.equal(p, e) for p, e in zip(preds, expected))
    assert torch.get_num_threads() == threads
    load_report(tmp_path / "perf_hints.json")
