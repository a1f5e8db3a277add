"""PerfHintCallback on real tiny Lightning fits (CPU, seconds each)."""

from __future__ import annotations

import contextlib
import copy
import json
import time
import pickle
import typing
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from perfcallbacks import DeviceProfile, PerfHintCallback, PerfHintWarning, Report  # noqa: E402
from perfcallbacks.adapters import lightning as lightning_adapter  # noqa: E402


class TinyModule(pl.LightningModule):
    """Linear(32, 16): aligned widths, so a clean CPU run has nothing to say."""

    def __init__(self, out: int = 16, sloppy_inference: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(32, out)
        self.sloppy_inference = sloppy_inference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        if self.sloppy_inference:  # autograd on + dropout-style train mode during validation
            self.train()
            with torch.enable_grad():
                out = self(x)
        else:
            out = self(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 128, batch_size: int = 16) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 32, generator=gen), torch.randint(0, 16, (n,), generator=gen))
    return DataLoader(data, batch_size=batch_size)


def trainer(tmp_path: Path, cb: PerfHintCallback | None, **kwargs) -> pl.Trainer:
    opts = dict(accelerator="cpu", devices=1, max_steps=12, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                limit_val_batches=2, num_sanity_val_steps=0)
    opts.update(kwargs)
    opts.setdefault("callbacks", [cb] if cb else [])
    return pl.Trainer(**opts)


@pytest.fixture
def local(cpu_profile) -> DeviceProfile:
    return cpu_profile


@contextlib.contextmanager
def recorded_hints():
    """Record every PerfHintWarning (our hooks swallow errors, so 'error' filters would hide them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids: list[str] = []
        yield ids
    ids.extend(str(w.message).split("]")[0].lstrip("[") for w in caught if issubclass(w.category, PerfHintWarning))


def make_cb(local: DeviceProfile, **kwargs) -> PerfHintCallback:
    kwargs.setdefault("verbose", False)
    kwargs.setdefault("warmup_steps", 4)
    return PerfHintCallback(local=local, **kwargs)


# -- arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"warmup_steps": -1}, ValueError, "warmup_steps"),
    ({"warmup_steps": 2.5}, TypeError, "warmup_steps"),
    ({"warmup_steps": True}, TypeError, "warmup_steps"),
    ({"auto_apply": "yes"}, TypeError, "auto_apply"),
    ({"verbose": 1}, TypeError, "verbose"),
    ({"target": "a1000x"}, ValueError, "a100"),
    ({"target": 3}, TypeError, "target"),
    ({"suppress": ["tensor-core-idle"]}, ValueError, "tensor-cores-idle"),
    ({"suppress": "tensor-cores-idle"}, TypeError, "suppress"),
    ({"latency_budget_ms": 0}, ValueError, "latency_budget_ms"),
    ({"latency_budget_ms": "10"}, TypeError, "latency_budget_ms"),
    ({"report_path": 5}, TypeError, "report_path"),
    ({"local": "cpu"}, TypeError, "local"),
])
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        PerfHintCallback(**kwargs)


def test_report_path_directory_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="report_path"):
        PerfHintCallback(report_path=tmp_path)


def test_constructor_type_hints_are_precise():
    """LightningCLI builds the callback from its type hints alone."""
    hints = typing.get_type_hints(PerfHintCallback.__init__)
    assert hints["auto_apply"] is bool and hints["warmup_steps"] is int and hints["verbose"] is bool
    assert DeviceProfile in typing.get_args(hints["target"]) and str in typing.get_args(hints["target"])
    assert typing.get_args(hints["suppress"]) == (str,)
    assert type(None) in typing.get_args(hints["latency_budget_ms"])


def test_lightning_cli_builds_the_callback(tmp_path):
    pytest.importorskip("jsonargparse")
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(TinyModule, run=False, args=[
        "--trainer.callbacks+=perfcallbacks.PerfHintCallback", "--trainer.callbacks.warmup_steps=3",
        "--trainer.callbacks.suppress=[dim-unaligned]", f"--trainer.default_root_dir={tmp_path}"])
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, PerfHintCallback))
    assert cb.warmup_steps == 3 and cb.suppress == ("dim-unaligned",)


# -- hints fire / stay quiet / suppress ------------------------------------------------------------
def test_target_a100_fires_tensor_cores_idle_and_writes_report(tmp_path, local):
    cb = make_cb(local, target="a100")
    with recorded_hints() as ids:
        trainer(tmp_path, cb).fit(TinyModule(), loader(), loader())
    assert "tensor-cores-idle" in ids
    path = tmp_path / "perf_hints.json"  # logger=False: log_dir is default_root_dir
    assert cb.report_written == path and path.is_file()
    report = Report.load(path)
    assert report.framework == "lightning" and report.target["name"].startswith("NVIDIA A100")
    hint = report.hint("tensor-cores-idle")
    assert hint is not None and hint.evidence["precision"] == "32-true"
    assert 'precision="bf16-mixed"' in hint.fix  # the Lightning fix, not the HF one
    assert report.overhead_s > 0


def test_clean_cpu_run_stays_quiet(tmp_path, local):
    cb = make_cb(local)
    with recorded_hints() as ids:
        trainer(tmp_path, cb).fit(TinyModule(), loader(), loader())
    assert ids == []
    assert Report.load(tmp_path / "perf_hints.json").hints == []
    assert cb.advisor.check_failures == [] or all(f["phase"] == "inference" for f in cb.advisor.check_failures)


def test_suppress_silences_the_hint(tmp_path, local):
    cb = make_cb(local, target="a100", suppress=["tensor-cores-idle", "batch-size-unaligned", "dim-unaligned",
                                                 "pin-memory-off", "dataloader-bottleneck"])
    with recorded_hints() as ids:
        trainer(tmp_path, cb).fit(TinyModule(), loader())
    assert "tensor-cores-idle" not in ids and "tensor-cores-idle" not in cb.advisor.hints


def test_each_hint_warns_once_across_stages(tmp_path, local):
    cb = make_cb(local, target="a100")
    with recorded_hints() as ids:
        t = trainer(tmp_path, cb)
        t.fit(TinyModule(), loader(), loader())
        t.validate(TinyModule(), loader())
        t.test(TinyModule(), loader())
    assert ids.count("tensor-cores-idle") == 1
    assert len(ids) == len(set(ids))


def test_bf16_mixed_on_avx2_cpu_fires_bf16_emulated(tmp_path, local):
    cb = make_cb(local)
    with recorded_hints() as ids:
        trainer(tmp_path, cb, precision="bf16-mixed", max_steps=3).fit(TinyModule(), loader())
    assert "bf16-emulated" in ids
    ctx = cb.advisor.context
    assert ctx.precision == "bf16-mixed" and ctx.autocast_dtype == "bf16"


def test_run_context_reflects_the_trainer(tmp_path, local):
    cb = make_cb(local)
    with recorded_hints():
        trainer(tmp_path, cb, max_steps=6).fit(TinyModule(), loader(batch_size=8))
    ctx = cb.advisor.context
    assert ctx.framework == "lightning" and ctx.precision == "32-true"
    assert (ctx.devices_used, ctx.world_size, ctx.local_world_size) == (1, 1, 1)
    assert ctx.strategy == "single_device" and ctx.distributed is False and ctx.model_device == "cpu"
    assert ctx.loader is not None and ctx.loader.batch_size == 8
    assert ctx.batches and ctx.batches[0].batch_size == 8


def test_ddp_with_one_process_fires_distributed_single_process(tmp_path, local):
    cb = make_cb(local)
    with recorded_hints() as ids:
        trainer(tmp_path, cb, strategy="ddp", max_steps=3).fit(TinyModule(), loader())
    assert "distributed-single-process" in ids
    assert cb.advisor.context.strategy == "ddp" and cb.advisor.context.distributed


# -- warm-up: observe, then go quiet --------------------------------------------------------------
def test_warmup_observes_then_hooks_return_at_once(tmp_path, local):
    cb = make_cb(local, warmup_steps=5)
    with recorded_hints():
        trainer(tmp_path, cb, max_steps=20).fit(TinyModule(), loader())
    adv = cb.advisor
    assert adv.warmup_done and not cb._observing
    assert adv.timer.steps_seen == 5  # steps 6..20 never reached the advisor
    assert len(adv.context.step_times) == 4  # first step excluded (lazy init)
    assert len(adv.context.batches) == 5
    assert all(t > 0 for t in adv.context.step_times)


def test_fewer_steps_than_warmup_still_judged(tmp_path, local):
    cb = make_cb(local, warmup_steps=50, target="a100")
    with recorded_hints() as ids:
        trainer(tmp_path, cb, max_steps=3).fit(TinyModule(), loader())
    assert "tensor-cores-idle" in ids
    assert cb.advisor.warmup_done and cb.advisor.timer.steps_seen == 3


def test_slow_loader_is_seen_as_data_wait(tmp_path, local):
    from torch.utils.data import default_collate

    def slow_collate(rows):
        import time

        time.sleep(DATA_SLEEP_S)  # the loader, not the model, is the slow part
        return default_collate(rows)

    torch.set_num_threads(1)  # a one-thread step is not slowed by other processes' load on 2 cores
    data = loader().dataset
    cb = make_cb(local, warmup_steps=5)
    with recorded_hints() as ids:
        trainer(tmp_path, cb, max_steps=6).fit(TinyModule(), DataLoader(data, batch_size=16, collate_fn=slow_collate))
    ctx = cb.advisor.context
    assert len(ctx.data_wait_times) == 4
    assert min(ctx.data_wait_times) >= DATA_SLEEP_S  # the wait measured includes the loader's sleep
    assert "dataloader-bottleneck" in ids


# A 100 ms collate against a ~1 ms step: data wait dominates by two orders of magnitude.
DATA_SLEEP_S = 0.1


# -- validate / test / predict --------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_inference_stages_observe_and_rewrite_report(tmp_path, local, stage):
    report_path = tmp_path / "out" / "hints.json"
    cb = make_cb(local, report_path=str(report_path))
    t = trainer(tmp_path, cb, limit_val_batches=None)
    with recorded_hints():
        getattr(t, stage)(TinyModule(), loader(n=64))
    assert report_path.is_file()
    info = cb.advisor.context.inference
    assert info.stage == stage and info.calls == 4 and info.grad_enabled_calls == 0 and info.train_mode_calls == 0
    assert len(cb.advisor.context.inference_batches) == 4
    assert cb._stage is None and cb._call_hook is None  # nothing left attached after the stage


def test_grad_in_inference_fires_for_sloppy_validation(tmp_path, local):
    cb = make_cb(local)
    with recorded_hints() as ids:
        trainer(tmp_path, cb).validate(TinyModule(sloppy_inference=True), loader(n=32))
    assert "grad-in-inference" in ids
    assert cb.advisor.context.inference.grad_enabled_calls == 2


def test_validation_inside_fit_is_checked_without_probes(tmp_path, local, monkeypatch):
    probed = []
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.probe_inference",
                        lambda self, model, batch: probed.append(batch))
    cb = make_cb(local)
    with recorded_hints() as ids:
        trainer(tmp_path, cb, val_check_interval=4).fit(TinyModule(sloppy_inference=True), loader(), loader())
    assert "grad-in-inference" in ids and probed == []


def test_predict_probes_once_with_a_real_batch(tmp_path, local, monkeypatch):
    probed = []
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.probe_inference",
                        lambda self, model, batch, **kw: probed.append((model, batch)))
    cb = make_cb(local)
    model = TinyModule()
    trainer(tmp_path, cb).predict(model, loader(n=64))
    assert len(probed) == 1 and probed[0][0] is model and probed[0][1][0].shape == (16, 32)
    trainer(tmp_path, cb).predict(model, loader(n=64))  # the same model again: measured already
    assert len(probed) == 1
    other = TinyModule()
    trainer(tmp_path, cb).predict(other, loader(n=64))  # another model is probed
    assert len(probed) == 2 and probed[1][0] is other


# -- auto_apply ------------------------------------------------------------------------------------------
class _SlowModule(TinyModule):
    """The user's model: every forward pays a fixed 50 ms (a stand-in for a slow fp32 model)."""

    def __init__(self) -> None:
        super().__init__()
        self.delay_s = 0.05
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.delay_s)
        return self.layer(x)


def _fast_copy_spec():
    """A fix whose candidate is the same model without the delay: faithful, and clearly faster."""
    from perfcallbacks.fixes._guard import Tolerance
    from perfcallbacks.fixes.candidate import Candidate
    from perfcallbacks.fixes.pipeline import FixSpec

    tol = Tolerance(cosine_mean=0.999, argmax_agreement=None)

    def build(model, batch, profile, params):
        fast = copy.deepcopy(model)
        fast.delay_s, fast.calls = 0.0, 0
        return Candidate("fake-fast", fast, tolerance=tol, details={"built": True})

    return FixSpec("fake-fast", ("predict",), build, plausible_max=1e6, tolerance=tol)


def test_auto_apply_fix_answers_predict_from_a_copy_decided_on_the_job(tmp_path, local, monkeypatch):
    import perfcallbacks.fixes.pipeline as pipeline

    pipeline.clear_memo()
    monkeypatch.setattr(pipeline, "FIXES", (_fast_copy_spec(),))
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.probe_inference", lambda self, m, b, **kw: [])
    model = _SlowModule()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = make_cb(local, auto_apply=True)
    plain = trainer(tmp_path, None).predict(copy.deepcopy(model), loader(n=40 * 16))
    preds = trainer(tmp_path, cb).predict(model, loader(n=40 * 16))
    assert all(torch.allclose(a, b) for a, b in zip(plain, preds))  # the user got the same outputs
    fix = next(f for f in cb.advisor.fixes if f.id == "fake-fast")
    assert fix.status == "applied", fix.reason
    assert fix.cost_s > 0 and fix.details["calls_measured"] >= 2 and fix.fidelity["rows"] >= 32
    # the user's module answered only the measured calls; the copy the rest. Nothing stays on the module.
    assert model.calls == fix.details["calls_shadowed"]
    assert "predict_step" not in vars(model) and "forward" not in vars(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    saved = json.loads((tmp_path / "perf_hints.json").read_text())
    entry = next(f for f in saved["fixes"] if f["id"] == "fake-fast")
    assert entry["cost_s"] == pytest.approx(fix.cost_s, abs=1e-3)
    assert saved["overhead_s"] >= fix.cost_s


class _CountingModule(_SlowModule):
    """Logs one count per validation batch (summed): a batch logged twice would show in the metric."""

    returns = True

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("batches", 1.0, reduce_fx="sum", on_step=False, on_epoch=True)
        self.log("val_loss", nn.functional.cross_entropy(out, y))
        return out if self.returns else None


def test_auto_apply_on_validate_leaves_the_users_metrics_as_logged(tmp_path, local, monkeypatch):
    import dataclasses

    import perfcallbacks.fixes.pipeline as pipeline

    pipeline.clear_memo()
    monkeypatch.setattr(pipeline, "FIXES", (dataclasses.replace(_fast_copy_spec(), stages=("validate",)),))
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.probe_inference", lambda self, m, b, **kw: [])
    model = _CountingModule()
    cb = make_cb(local, auto_apply=True)
    plain = trainer(tmp_path, None, limit_val_batches=1.0).validate(copy.deepcopy(model), loader(n=40 * 16))
    guarded = trainer(tmp_path, cb, limit_val_batches=1.0).validate(model, loader(n=40 * 16))
    fix = next(f for f in cb.advisor.fixes if f.id == "fake-fast")
    assert fix.status == "applied" and fix.details["calls_shadowed"] >= 2, fix.reason
    # the shadow calls ran the copy's validation_step too: none of its self.log calls reached the metrics
    assert guarded[0]["batches"] == plain[0]["batches"] == 40
    assert guarded[0]["val_loss"] == pytest.approx(plain[0]["val_loss"], rel=1e-5)
    assert "log" not in vars(model) and "log_dict" not in vars(model)


def test_auto_apply_on_a_validation_step_without_output_changes_nothing(tmp_path, local, monkeypatch):
    import dataclasses

    import perfcallbacks.fixes.pipeline as pipeline

    pipeline.clear_memo()
    monkeypatch.setattr(pipeline, "FIXES", (dataclasses.replace(_fast_copy_spec(), stages=("validate",)),))
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.probe_inference", lambda self, m, b, **kw: [])
    model = _CountingModule()
    model.returns = False  # the common validation_step: it logs and returns nothing
    cb = make_cb(local, auto_apply=True)
    metrics = trainer(tmp_path, cb, limit_val_batches=1.0).validate(model, loader(n=40 * 16))
    fix = next(f for f in cb.advisor.fixes if f.id == "fake-fast")
    assert fix.status == "skipped" and "returned no tensor to compare (NoneType)" in fix.reason
    assert model.calls == 40 and metrics[0]["batches"] == 40  # every batch ran once, on the user's module


def test_auto_apply_skips_measuring_on_a_short_job(tmp_path, local, monkeypatch):
    import perfcallbacks.fixes.pipeline as pipeline

    pipeline.clear_memo()
    monkeypatch.setattr(pipeline, "FIXES", (_fast_copy_spec(),))
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.probe_inference", lambda self, m, b, **kw: [])
    model = _SlowModule()
    cb = make_cb(local, auto_apply=True)
    with recorded_hints():
        trainer(tmp_path, cb).predict(model, loader(n=3 * 16))
    fix = next(f for f in cb.advisor.fixes if f.id == "fake-fast")
    assert fix.status == "skipped" and "job" in fix.reason and fix.cost_s == 0
    assert model.calls == 3  # nothing ran twice


def test_second_predict_reuses_the_decision_without_measuring(tmp_path, local, monkeypatch):
    import perfcallbacks.fixes.pipeline as pipeline

    pipeline.clear_memo()
    monkeypatch.setattr(pipeline, "FIXES", (_fast_copy_spec(),))
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.probe_inference", lambda self, m, b, **kw: [])
    monkeypatch.setenv("PERFCALLBACKS_CACHE", "off")
    model = _SlowModule()
    cb = make_cb(local, auto_apply=True)
    with recorded_hints():
        trainer(tmp_path, cb).predict(model, loader(n=40 * 16))
        first = next(f for f in cb.advisor.fixes if f.id == "fake-fast")
        model.calls = 0
        trainer(tmp_path, cb).predict(model, loader(n=40 * 16))
    second = next(f for f in cb.advisor.fixes if f.id == "fake-fast")
    assert first.status == second.status == "applied"
    assert "reused" in second.reason and second.cost_s < first.cost_s
    assert model.calls == 0  # every call of the second job went to the kept copy


def test_threads_are_restored_after_predict_and_fit(tmp_path, cpu_profile):
    torch.set_num_threads(2)
    one_core = cpu_profile.replace(physical_cores=1, logical_cores=1)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

        def on_predict_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    cb = make_cb(one_core, auto_apply=True)
    with recorded_hints():
        trainer(tmp_path, cb, max_steps=3, callbacks=[cb, Record()]).fit(TinyModule(), loader())
        assert torch.get_num_threads() == 2
        trainer(tmp_path, cb, callbacks=[cb, Record()]).predict(TinyModule(), loader(n=32))
    assert torch.get_num_threads() == 2 and set(seen) == {1}  # capped during each stage, restored after
    fix = next(f for f in cb.advisor.fixes if f.id == "threads")
    assert fix.status == "applied" and fix.details["previous"] == 2 and fix.details["chosen"] == 1


def test_auto_apply_real_fixes_never_break_predict(tmp_path, local):
    torch.set_num_threads(2)  # = the profile's 2 cores, on any machine (restored by conftest)
    cb = make_cb(local, auto_apply=True)
    model = TinyModule()
    with recorded_hints():
        preds = trainer(tmp_path, cb).predict(model, loader(n=32))
    assert len(preds) == 2 and type(model.layer) is nn.Linear
    # Two predict batches on an AVX2 profile: every real fix is considered and declines, each for its reason.
    fixes = {f.id: f for f in cb.advisor.fixes}
    assert {k: f.status for k, f in fixes.items()} == {"threads": "skipped", "autocast": "skipped",
                                                       "dynamic-quantization": "skipped"}
    assert "already within the 2-thread cap" in fixes["threads"].reason
    assert "no fast low-precision dtype" in fixes["autocast"].reason
    assert "job is too short" in fixes["dynamic-quantization"].reason


# -- resume, pickling, loggers, principle 1 -----------------------------------------------------------
def test_resume_from_checkpoint_does_not_repeat_hints(tmp_path, local):
    ckpt_dir = tmp_path / "ckpt"
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(cb, max_steps, **fit_kwargs):
        pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=str(tmp_path),
                   callbacks=[cb, ModelCheckpoint(dirpath=ckpt_dir)]).fit(TinyModule(), loader(), **fit_kwargs)

    first = make_cb(local, target="a100")
    with recorded_hints() as ids_first:
        run(first, 6)
    assert "tensor-cores-idle" in ids_first
    ckpt = next(ckpt_dir.glob("*.ckpt"))
    state = torch.load(ckpt, weights_only=False)["callbacks"]
    assert any("tensor-cores-idle" in json.dumps(v) for v in state.values())

    second = make_cb(local, target="a100")
    with recorded_hints() as ids_second:
        run(second, 12, ckpt_path=ckpt)
    assert ids_second == []
    assert "tensor-cores-idle" in second.advisor.hints  # still in the report
    assert second.advisor.timer.steps_seen == 0  # warm-up was done before the checkpoint


def test_callback_pickles_before_and_after_fit(tmp_path, local):
    cb = make_cb(local, target="a100", suppress=["dim-unaligned"])
    clone = pickle.loads(pickle.dumps(cb))
    assert clone.target == cb.target and clone.suppress == ("dim-unaligned",) and clone.advisor is None
    with recorded_hints():
        trainer(tmp_path, cb, max_steps=3).fit(TinyModule(), loader())
    clone = pickle.loads(pickle.dumps(cb))
    assert clone.advisor is None and "tensor-cores-idle" in json.dumps(clone.state_dict())


def test_hint_counts_logged_to_loggers(tmp_path, local):
    from lightning.pytorch.loggers import CSVLogger

    cb = make_cb(local, target="a100")
    with recorded_hints():
        trainer(tmp_path, cb, max_steps=4, logger=CSVLogger(str(tmp_path), name="csv")).fit(TinyModule(), loader())
    metrics = (Path(cb.report_written).parent / "metrics.csv").read_text()
    assert "perf_hints/count" in metrics and "perf_hints/warning" in metrics
    assert cb.report_written.parent == Path(tmp_path) / "csv" / "version_0"


def test_internal_errors_never_reach_training(tmp_path, local, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("internal bug")

    monkeypatch.setattr("perfcallbacks.advisor.Advisor.run_checks", boom)
    monkeypatch.setattr("perfcallbacks.advisor.Advisor.step_begin", boom)
    cb = make_cb(local, target="a100")
    t = trainer(tmp_path, cb, max_steps=6)
    t.fit(TinyModule(), loader(), loader())
    t.predict(TinyModule(), loader(n=32))
    assert t.global_step == 6


def test_unwritable_report_path_is_a_warning_not_an_exception(tmp_path, local):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cb = make_cb(local, report_path=str(blocker / "sub" / "r.json"))
    with recorded_hints():
        trainer(tmp_path, cb, max_steps=3).fit(TinyModule(), loader())
    assert cb.report_written is None


def test_verbose_prints_summary_and_report_location(tmp_path, local, capsys):
    cb = make_cb(local, target="a100", verbose=True, warmup_steps=2)
    with recorded_hints():
        trainer(tmp_path, cb, max_steps=4).fit(TinyModule(), loader())
    out = capsys.readouterr().out
    assert out.count("open hint, critical first") == 1  # one table per fit (end of warm-up) ...
    assert f"nothing new since the table above (1 open hint); report: {tmp_path / 'perf_hints.json'}" in out


# -- pure helpers -----------------------------------------------------------------------------------------
def test_strategy_name_helper():
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    assert lightning_adapter.strategy_name(SingleDeviceStrategy("cpu")) == "single_device"
    assert lightning_adapter.strategy_name(DDPStrategy(start_method="spawn")) == "ddp_spawn"
    assert lightning_adapter.strategy_name(DDPStrategy()) == "ddp"


def test_auto_apply_exports_int8_beside_the_last_checkpoint(tmp_path, local):
    cb = make_cb(local, auto_apply=True)
    model = TinyModule()
    with torch.no_grad():  # a clear winner per row, so argmax agreement does not hang on near-ties
        model.layer.bias[0] = 10.0
    with recorded_hints():
        trainer(tmp_path, cb, enable_checkpointing=True, max_steps=8).fit(model, loader())
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert len(ckpts) == 1
    artifact = ckpts[0].with_suffix(".int8.pt2")
    export = next(f for f in cb.advisor.fixes if f.id == "export")
    assert export.status == "applied", export.reason
    assert export.details["path"] == str(artifact) and artifact.is_file()
    assert export.fidelity["cosine_mean"] >= 0.99
    int8 = torch.export.load(str(artifact)).module()
    x = torch.randn(4, 32)
    assert torch.nn.functional.cosine_similarity(int8(x), model(x).detach(), dim=-1).min() > 0.98
    # the fp32 checkpoint still holds fp32 weights
    state = torch.load(ckpts[0], weights_only=False)["state_dict"]
    assert state["layer.weight"].dtype == torch.float32


def test_export_needs_a_checkpoint(tmp_path, local):
    cb = make_cb(local, auto_apply=True)
    with recorded_hints():
        trainer(tmp_path, cb).fit(TinyModule(), loader())
    assert all(f.id != "export" for f in cb.advisor.fixes)
