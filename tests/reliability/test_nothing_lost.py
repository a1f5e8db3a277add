"""Nothing lost: fixes never touch the user's fp32 model or its saved fp32 checkpoints.

Speed is faked where a test needs a fix to be *applied* (or *rejected*) on this
noisy 2-core machine: ``compare_times`` is replaced, the quantization itself
is real.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from _odd import FEATURES, load_report, loader

from perfcallbacks import fixes


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model_or_state, snap: dict[str, torch.Tensor]) -> bool:
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return state.keys() == snap.keys() and all(
        state[k].dtype == snap[k].dtype and torch.equal(state[k], snap[k]) for k in snap)


def fake_speed(monkeypatch, int8_factor: float) -> None:
    """int8 (every backend) measured ``int8_factor`` x the fp32 time."""
    import perfcallbacks.fixes.quantize as quantize

    def compare_times(fns, **kwargs):
        return {name: (1.0 if name == "fp32" else int8_factor) for name in fns}

    monkeypatch.setattr(quantize, "compare_times", compare_times)


def wide_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, 16))


# -- Lightning: auto_apply around fit, predict and checkpoints ------------------------------------------------
def fake_job_speed(monkeypatch, int8_factor: float) -> None:
    """The pipeline's clock on this noisy machine: every user call "takes" 1 s, a candidate's int8_factor s.

    The quantization, the shadow calls and the fidelity comparison stay real.
    """
    from perfcallbacks.fixes import pipeline

    def timed(self, fn, user=False):
        out = fn()
        return (1.0 if user else int8_factor), out

    monkeypatch.setattr(pipeline.GuardedCalls, "_timed", timed)


def clear_winner_mlp() -> nn.Module:
    """Scores with a clear winner per row: int8 rounding cannot flip an argmax (agreement is exact)."""
    model = wide_mlp()
    with torch.no_grad():
        model[2].bias[0] = 50.0
    return model


def test_lightning_auto_apply_keeps_model_and_checkpoints_fp32(tmp_path, local, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    import dataclasses

    from lightning.pytorch.callbacks import ModelCheckpoint

    from test_odd_runs_lightning import Flex, make_cb

    fake_job_speed(monkeypatch, 0.5)  # int8 "2x faster": the fix is kept for the rest of the job

    class Saving(Flex):
        callers: list[int] = []

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            self.callers.append(id(self))  # a kept fix answers from a copy: the user's module stops being called
            if batch_idx == 0:  # a checkpoint saved while predict runs
                self.trainer.save_checkpoint(tmp_path / "during_predict.ckpt")
            return super().predict_step(batch, batch_idx)

    model = Saving(clear_winner_mlp())
    cb = make_cb(local, auto_apply=True)
    cb.options = dataclasses.replace(cb.options, guard_budget=1.0)  # a short test job may spend it all
    ckpt_dir = tmp_path / "ckpt"
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
                         callbacks=[cb, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader())
        after_fit = snapshot(model)
        fit_ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["state_dict"]
        assert same(fit_ckpt, after_fit)  # the fit checkpoint is the fp32 model
        Saving.callers.clear()
        preds = trainer.predict(model, loader(n=40 * 16))
    fix = {f["id"]: f for f in load_report(tmp_path / "perf_hints.json")["fixes"]}["dynamic-quantization"]
    assert fix["status"] == "applied", fix["reason"]
    assert len(preds) == 40 and Saving.callers.count(id(model)) == fix["details"]["calls_shadowed"] < 40
    assert type(model.net[0]) is nn.Linear and same(model, after_fit)  # the fp32 model, bit for bit
    during = torch.load(tmp_path / "during_predict.ckpt", weights_only=False)["state_dict"]
    assert same(during, after_fit) and all(v.dtype == torch.float32 for v in during.values())
    assert same(torch.load(ckpt_dir / "last.ckpt", weights_only=False)["state_dict"], after_fit)


def test_lightning_rejected_int8_leaves_the_model_untouched(tmp_path, local, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    import dataclasses

    from test_odd_runs_lightning import Flex, make_cb, make_trainer

    fake_job_speed(monkeypatch, 2.0)  # int8 "2x slower": rejected
    model = Flex(clear_winner_mlp())
    before = snapshot(model)
    data = loader(n=40 * 16)
    expected = [model(x).detach() for x, _ in data]
    cb = make_cb(local, auto_apply=True)
    cb.options = dataclasses.replace(cb.options, guard_budget=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = make_trainer(tmp_path, cb).predict(model, data)
    statuses = {f.id: f.status for f in cb.advisor.fixes}
    assert statuses["dynamic-quantization"] == "rejected"
    assert same(model, before) and [type(m) for m in model.net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(torch.equal(p, e) for p, e in zip(preds, expected))  # predict ran the fp32 model


# -- the fix functions themselves ---------------------------------------------------------------------------
def test_applied_quantize_guarded_returns_a_new_model(monkeypatch):
    fake_speed(monkeypatch, 0.5)
    model = wide_mlp()
    before = snapshot(model)
    result, new = fixes.quantize_guarded(model, torch.randn(16, FEATURES))
    assert result.status == "applied" and new is not model
    assert same(model, before) and all(type(m) is not fixes.quantize.Int8DynamicLinear for m in model.modules())
    assert model.training  # not even the train/eval flag changed


@pytest.mark.parametrize("why", ["slower", "unfaithful"])
def test_rejected_quantize_guarded_leaves_the_model_exactly(why, monkeypatch):
    fake_speed(monkeypatch, 2.0 if why == "slower" else 0.5)
    tol = fixes.QuantTolerance(cosine_mean=1.0, argmax_agreement=1.0, max_abs_error=0.0, max_fp32_fraction=0.0) \
        if why == "unfaithful" else None
    model = wide_mlp()
    before = snapshot(model)
    modules_before = [type(m) for m in model.modules()]
    result, same_model = fixes.quantize_guarded(model, torch.randn(16, FEATURES), tolerance=tol)
    assert result.status == "rejected" and same_model is model
    assert same(model, before) and [type(m) for m in model.modules()] == modules_before and model.training


def test_rejected_autocast_and_threads_leave_no_trace(local, monkeypatch):
    import perfcallbacks.fixes.autocast as autocast

    monkeypatch.setattr(autocast, "compare_times", lambda fns, **k: {"fp32": 1.0, "autocast": 3.0})
    model = wide_mlp().train()
    before = snapshot(model)
    result, factory = fixes.guarded_autocast(model, torch.randn(16, FEATURES), profile=local)
    assert result.status == "rejected" and factory is None
    assert same(model, before) and model.training  # train/eval flag restored too
    import perfcallbacks.fixes.threads as threads_mod

    threads = torch.get_num_threads()
    monkeypatch.setattr(threads_mod, "measure_threads",  # the current count measured fastest
                        lambda m, b, cands, **k: {n: (0.5 if n == threads else 1.0) for n in cands})
    result = fixes.tune_threads(model, torch.randn(16, FEATURES), physical_cores=64)
    assert result.status == "rejected" and torch.get_num_threads() == threads and same(model, before)


def test_quantize_for_export_never_touches_the_fp32_model_or_file(tmp_path):
    model = wide_mlp()
    fp32_path = tmp_path / "model.pt"
    torch.save(model.state_dict(), fp32_path)
    fp32_bytes = fp32_path.read_bytes()
    before = snapshot(model)
    result = fixes.quantize_for_export(model, tmp_path / "model.int8.pt2", example_inputs=torch.randn(8, FEATURES),
                                       fp32_path=fp32_path)
    assert result.status == "applied" and result.path != str(fp32_path)
    assert fp32_path.read_bytes() == fp32_bytes and same(model, before)
    assert same(torch.load(fp32_path), before)
    with pytest.raises(ValueError):  # never over the fp32 artifact
        fixes.quantize_for_export(model, fp32_path, example_inputs=torch.randn(8, FEATURES), fp32_path=fp32_path)
    assert fp32_path.read_bytes() == fp32_bytes


# -- HF: checkpoints hold fp32 while the int8 artifact sits beside them ---------------------------------
def test_hf_auto_apply_checkpoint_is_fp32_and_model_untouched(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from test_odd_runs_hf import HFNet, hf_trainer

    model = HFNet(wide_mlp())
    trainer, cb = hf_trainer(tmp_path, model=model, auto_apply=True, save_strategy="steps", save_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    final = snapshot(model)
    folder = tmp_path / "checkpoint-4"
    saved = load_file(str(folder / "model.safetensors"))
    assert same(saved, final) and all(v.dtype == torch.float32 for v in saved.values())
    assert all(type(m) in (HFNet, nn.Sequential, nn.Linear, nn.ReLU) for m in model.modules())
    int8 = cb.quantized_for_inference()
    assert int8 is None or int8 is not model
    exports = cb.int8_exports
    if exports and exports[0]["status"] == "applied":
        assert (folder / "model.int8.pt2").exists()
    assert same(load_file(str(folder / "model.safetensors")), final)
