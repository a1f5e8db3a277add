"""Odd-but-valid HF Trainer runs never crash, never need our safety net, and leave a loadable report.

The Trainer calls ``model(**batch)``, so its batch is always a mapping: the odd
cases are what the mapping holds (non-tensor values, nested containers, a
``BatchEncoding``), how the data is served (no ``len``) and what the model is.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

pytest.importorskip("transformers")
from transformers import Trainer, TrainingArguments  # noqa: E402

from _odd import (  # noqa: E402
    CLASSES,
    ConvOnly,
    PeftStyleModel,
    QuantizedBackbone,
    Rows,
    StreamRows,
    TokenClassifier,
    _stack,
    collate_batch_encoding,
    load_report,
    mlp,
)
from perfcallbacks import DeviceProfile, HFPerfHints  # noqa: E402


class HFNet(nn.Module):
    """Any net behind the HF convention: keyword inputs in, ``{"loss", "logits"}`` out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs: Any = None, **extra: Any) -> dict[str, torch.Tensor]:
        if inputs is not None:  # nested: (tensor, {"scale": tensor})
            x = inputs[0] * inputs[1]["scale"]
        logits = self.net(x) if input_ids is None else self.net(input_ids=input_ids, attention_mask=attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def collate_dict_with_non_tensors(rows):
    x, y, _, _ = _stack(rows)
    return {"x": x, "labels": y, "ids": [f"row-{i}" for i in range(len(rows))], "source": "train", "extra": None}


def collate_nested(rows):
    x, y, _, _ = _stack(rows)
    return {"inputs": (x, {"scale": torch.tensor(1.0)}), "labels": y}


def collate_plain(rows):
    x, y, _, _ = _stack(rows)
    return {"x": x, "labels": y}


def hf_trainer(tmp_path, *, model: nn.Module | None = None, dataset: Dataset | None = None, collator=collate_plain,
               eval_dataset: Dataset | None = None, cb_kwargs: dict | None = None,
               local: DeviceProfile | None = None, **arg_overrides) -> tuple[Trainer, HFPerfHints]:
    cb_kwargs = dict(cb_kwargs or {})
    for key in ("target", "auto_apply", "warmup_steps"):
        if key in arg_overrides:
            cb_kwargs[key] = arg_overrides.pop(key)
    cb_kwargs.setdefault("verbose", False)
    cb_kwargs.setdefault("warmup_steps", 3)
    cb = HFPerfHints(**cb_kwargs)
    cb._local = local or DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)
    args = dict(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=16, per_device_eval_batch_size=16,
                report_to="none", use_cpu=True, save_strategy="no", logging_steps=2, disable_tqdm=True,
                dataloader_num_workers=0, remove_unused_columns=False, learning_rate=0.05)
    args.update(arg_overrides)
    trainer = Trainer(model=model or HFNet(mlp()), args=TrainingArguments(**args),
                      train_dataset=dataset if dataset is not None else Rows(),
                      eval_dataset=eval_dataset, data_collator=collator, callbacks=[cb])
    return trainer, cb


def quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


BATCHES = {
    "plain-dict": (collate_plain, mlp),
    "dict-with-non-tensors": (collate_dict_with_non_tensors, mlp),
    "nested": (collate_nested, mlp),
    "batch-encoding": (collate_batch_encoding, TokenClassifier),
}


@pytest.mark.parametrize("kind", list(BATCHES))
def test_odd_batches_train_evaluate_predict(kind, tmp_path, swallowed):
    collate, net = BATCHES[kind]
    trainer, cb = hf_trainer(tmp_path, model=HFNet(net()), collator=collate, eval_dataset=Rows(32), target="a100")
    quietly(trainer.train)
    assert trainer.state.global_step == 4
    quietly(trainer.evaluate)
    out = quietly(trainer.predict, Rows(32))
    assert out.predictions.shape == (32, CLASSES)
    data = load_report(tmp_path / "perf_hints.json")
    assert "tensor-cores-idle" in {h["id"] for h in data["hints"]}
    assert cb.advisor.context.batches, "the training batches were observed"
    assert data["check_failures"] == [] and swallowed() == []


def test_iterable_dataset_without_len(tmp_path):
    trainer, cb = hf_trainer(tmp_path, dataset=StreamRows(), max_steps=6, target="a100")
    quietly(trainer.train)
    assert trainer.state.global_step == 6
    load_report(tmp_path / "perf_hints.json")


def test_iterable_dataset_is_observed(tmp_path, swallowed):
    trainer, cb = hf_trainer(tmp_path, dataset=StreamRows(), max_steps=6, target="a100")
    quietly(trainer.train)
    data = load_report(tmp_path / "perf_hints.json")
    assert "tensor-cores-idle" in {h["id"] for h in data["hints"]}
    assert cb.advisor.context.loader.has_len is False
    assert cb.advisor.context.batches and swallowed() == []


MODELS = {
    "conv-only": lambda: HFNet(ConvOnly()),
    "peft-style-lora": lambda: HFNet(PeftStyleModel(mlp())),
    "already-quantized": lambda: HFNet(QuantizedBackbone()),
    "compiled-eager-inner": lambda: HFNet(torch.compile(mlp(), backend="eager")),
}


@pytest.mark.parametrize("auto_apply", [False, True], ids=["observe", "auto_apply"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_odd_models_train_and_predict(kind, auto_apply, tmp_path, swallowed):
    model = MODELS[kind]()
    trainer, cb = hf_trainer(tmp_path, model=model, auto_apply=auto_apply)
    quietly(trainer.train)
    out = quietly(trainer.predict, Rows(32))
    assert out.predictions.shape == (32, CLASSES)
    data = load_report(tmp_path / "perf_hints.json")
    assert data["check_failures"] == [] and swallowed() == []
    if auto_apply:
        assert {f["id"] for f in data["fixes"]} >= {"threads"}


LOOPS = {
    "one-step": dict(max_steps=1),
    "zero-epochs": dict(max_steps=-1, num_train_epochs=0),
    "grad-accumulation": dict(max_steps=3, gradient_accumulation_steps=2),
    "warmup-longer-than-run": dict(max_steps=2, warmup_steps=500),
    "epochs-not-steps": dict(max_steps=-1, num_train_epochs=2),
}


@pytest.mark.parametrize("kind", list(LOOPS))
def test_loop_shapes_complete_with_a_report(kind, tmp_path, swallowed):
    trainer, cb = hf_trainer(tmp_path, target="a100", **LOOPS[kind])
    quietly(trainer.train)
    data = load_report(tmp_path / "perf_hints.json")
    assert "tensor-cores-idle" in {h["id"] for h in data["hints"]}
    assert cb.advisor.warmup_done and swallowed() == []


def _second_trainer(tmp_path, cb) -> Trainer:
    args = TrainingArguments(output_dir=str(tmp_path / "b"), max_steps=3, per_device_train_batch_size=16,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                             remove_unused_columns=False)
    return Trainer(model=HFNet(mlp()), args=args, train_dataset=Rows(), data_collator=collate_plain, callbacks=[cb])


def test_same_callback_across_trainers_and_repeated_train(tmp_path, swallowed):
    trainer, cb = hf_trainer(tmp_path / "a", target="a100")
    quietly(trainer.train)
    first = load_report(tmp_path / "a" / "perf_hints.json")
    quietly(trainer.train)  # train() again on the same Trainer
    second = _second_trainer(tmp_path, cb)
    quietly(second.train)
    quietly(second.predict, Rows(32))
    assert second.state.global_step == 3
    data = load_report(cb._report_file)
    assert {h["id"] for h in data["hints"]} >= {h["id"] for h in first["hints"]}
    assert swallowed() == []


def test_reused_callback_reports_into_the_new_output_dir(tmp_path):
    trainer, cb = hf_trainer(tmp_path / "a", target="a100")
    quietly(trainer.train)
    quietly(_second_trainer(tmp_path, cb).train)
    load_report(tmp_path / "b" / "perf_hints.json")
