"""Odd-but-valid Lightning runs never crash, never need our safety net, and always leave a loadable report.

Each case runs a real tiny fit on CPU. Besides "the run completes", every test
asserts that none of our hooks had to swallow an internal error (``swallowed()``):
the safety net is for bugs, an unusual batch or model must not need it.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from _odd import (  # noqa: E402
    ConvOnly,
    LazyNet,
    ParameterFree,
    PeftStyleModel,
    QuantizedBackbone,
    TokenClassifier,
    collate_batch_encoding,
    collate_custom,
    collate_dataclass,
    collate_dict_with_non_tensors,
    collate_nested,
    collate_token_tuple,
    collate_tuple,
    load_report,
    loader,
    mlp,
    unpack_attrs,
    unpack_dict,
    unpack_encoding,
    unpack_nested,
    unpack_token_tuple,
    unpack_tuple,
)

from perfcallbacks import PerfHintCallback  # noqa: E402


class Flex(pl.LightningModule):
    """Any ``net`` and any batch layout: ``unpack(batch) -> (forward input, labels)``."""

    def __init__(self, net: nn.Module, unpack=unpack_tuple, manual: bool = False) -> None:
        super().__init__()
        self.net = net
        self.unpack = unpack
        self.automatic_optimization = not manual

    def forward(self, x: Any) -> torch.Tensor:
        return self.net(**x) if isinstance(x, dict) else self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = self.unpack(batch)
        loss = nn.functional.cross_entropy(self(x), y)
        if not self.automatic_optimization:  # nothing to optimise: just report the loss
            self.log("loss", loss, batch_size=len(y))
            return None
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = self.unpack(batch)
        self.log("val_loss", nn.functional.cross_entropy(self(x), y), batch_size=len(y))

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(self.unpack(batch)[0])

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.05) if params else None


def make_trainer(tmp_path, cb, **kwargs) -> pl.Trainer:
    opts = dict(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                num_sanity_val_steps=0, limit_val_batches=2)
    opts.update(kwargs)
    return pl.Trainer(callbacks=[cb], **opts)


def make_cb(local, **kwargs) -> PerfHintCallback:
    kwargs.setdefault("verbose", False)
    kwargs.setdefault("warmup_steps", 3)
    return PerfHintCallback(local=local, **kwargs)


def quietly(fn, *args, **kwargs):
    """Run with hint warnings recorded, not raised (the hints are not what is under test)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


BATCHES = {
    "tuple": (collate_tuple, unpack_tuple, mlp),
    "dict-with-non-tensors": (collate_dict_with_non_tensors, unpack_dict, mlp),
    "nested-dict-tuple": (collate_nested, unpack_nested, mlp),
    "dataclass": (collate_dataclass, unpack_attrs, mlp),
    "custom-object": (collate_custom, unpack_attrs, mlp),
    "batch-encoding": (collate_batch_encoding, unpack_encoding, TokenClassifier),
    "padded-token-tuple": (collate_token_tuple, unpack_token_tuple, TokenClassifier),
}


@pytest.mark.parametrize("kind", list(BATCHES))
def test_odd_batches_fit_validate_predict(kind, tmp_path, local, swallowed):
    collate, unpack, net = BATCHES[kind]
    cb = make_cb(local, target="a100")
    model = Flex(net(), unpack)
    trainer = make_trainer(tmp_path, cb)
    quietly(trainer.fit, model, loader(collate), loader(collate))
    assert trainer.global_step == 4
    if kind != "custom-object":  # an opaque object's tensors are not looked for (only its survival is promised)
        assert cb.advisor.context.batches, "the training batches were observed"
    preds = quietly(trainer.predict, model, loader(collate, n=32))
    assert len(preds) == 2 and preds[0].shape == (16, 16)
    data = load_report(tmp_path / "perf_hints.json")
    assert data["framework"] == "lightning" and "tensor-cores-idle" in {h["id"] for h in data["hints"]}
    assert data["check_failures"] == [] and swallowed() == []


def test_token_batches_are_measured_for_padding(tmp_path, local, swallowed):
    """Not only 'no crash': BatchEncoding batches are understood (real lengths from the mask)."""
    cb = make_cb(local)
    quietly(make_trainer(tmp_path, cb).fit, Flex(TokenClassifier(), unpack_encoding), loader(collate_batch_encoding))
    stats = cb.advisor.context.batches
    assert stats and all(s.seq_len == 12 and s.batch_size == 16 and len(s.lengths) == 16 for s in stats)
    assert swallowed() == []


def test_iterable_dataset_without_len(tmp_path, local):
    cb = make_cb(local, target="a100")
    trainer = make_trainer(tmp_path, cb, max_steps=-1, max_epochs=2)
    quietly(trainer.fit, Flex(mlp()), loader(stream=True), loader(stream=True))
    assert trainer.global_step == 8  # 2 epochs x 4 batches: the stream was read to its end
    data = load_report(tmp_path / "perf_hints.json")
    assert "tensor-cores-idle" in {h["id"] for h in data["hints"]}


def test_iterable_dataset_is_observed(tmp_path, local, swallowed):
    cb = make_cb(local)
    trainer = make_trainer(tmp_path, cb, max_steps=-1, max_epochs=1)
    quietly(trainer.fit, Flex(mlp()), loader(stream=True))
    info = cb.advisor.context.loader
    assert info is not None and info.has_len is False and info.iterable_dataset
    assert len(cb.advisor.context.batches) == 3 and swallowed() == []


# -- models -----------------------------------------------------------------------------------------------
MODELS = {
    "conv-only": lambda: Flex(ConvOnly()),
    "peft-style-lora": lambda: Flex(PeftStyleModel(mlp())),
    "already-quantized": lambda: Flex(QuantizedBackbone()),
    "parameter-free": lambda: Flex(ParameterFree(), manual=True),
    "compiled-eager-inner": lambda: Flex(torch.compile(mlp(), backend="eager")),
    "compiled-eager-module": lambda: torch.compile(Flex(mlp()), backend="eager"),
}
# Manual optimization without an optimizer never advances global_step: bound the run by epochs.
LOOP_OF = {"parameter-free": dict(max_steps=-1, max_epochs=1)}


@pytest.mark.parametrize("auto_apply", [False, True], ids=["observe", "auto_apply"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_odd_models_fit_and_predict(kind, auto_apply, tmp_path, local, swallowed):
    model = MODELS[kind]()
    cb = make_cb(local, auto_apply=auto_apply)
    trainer = make_trainer(tmp_path, cb, **LOOP_OF.get(kind, {}))
    quietly(trainer.fit, model, loader(), loader())
    preds = quietly(trainer.predict, model, loader(n=32))
    assert len(preds) == 2 and preds[0].shape == (16, 16) and torch.isfinite(preds[0]).all()
    data = load_report(tmp_path / "perf_hints.json")
    assert data["check_failures"] == [] and swallowed() == []
    if auto_apply:
        assert {f["id"] for f in data["fixes"]} >= {"threads"}


def test_lazy_model_no_parameters_at_setup(tmp_path, local, swallowed):
    model = Flex(LazyNet())
    cb = make_cb(local)
    trainer = make_trainer(tmp_path, cb)
    quietly(trainer.fit, model, loader())
    assert trainer.global_step == 4
    load_report(tmp_path / "perf_hints.json")
    assert cb.advisor.context.batches and swallowed() == []


def test_lazy_model_still_trains_and_reports(tmp_path, local):
    """Whatever the advisor thinks of lazy parameters, training and the report survive."""
    model = Flex(LazyNet())
    cb = make_cb(local)
    trainer = make_trainer(tmp_path, cb)
    quietly(trainer.fit, model, loader())
    assert trainer.global_step == 4
    load_report(tmp_path / "perf_hints.json")


@pytest.mark.slow
def test_compiled_with_inductor(tmp_path, local, swallowed):
    """The real compiler (20-60 s cold on 2 cores): hooks on an OptimizedModule's forward."""
    model = Flex(torch.compile(mlp()))
    cb = make_cb(local, auto_apply=True)
    trainer = make_trainer(tmp_path, cb)
    quietly(trainer.fit, model, loader())
    quietly(trainer.predict, model, loader(n=32))
    data = load_report(tmp_path / "perf_hints.json")
    assert data["check_failures"] == [] and swallowed() == []


# -- loop shapes --------------------------------------------------------------------------------------------
LOOPS = {
    "zero-steps": dict(max_steps=0),
    "no-train-batches": dict(limit_train_batches=0, max_epochs=1, max_steps=-1),
    "one-step": dict(max_steps=1),
    "limit-train-batches": dict(limit_train_batches=2, max_epochs=2, max_steps=-1),
    "grad-accumulation": dict(accumulate_grad_batches=2, max_steps=3),
    "validate-every-step": dict(val_check_interval=1, max_steps=3),
}


@pytest.mark.parametrize("kind", list(LOOPS))
def test_loop_shapes_complete_with_a_report(kind, tmp_path, local, swallowed):
    cb = make_cb(local, target="a100")
    trainer = make_trainer(tmp_path, cb, **LOOPS[kind])
    quietly(trainer.fit, Flex(mlp()), loader(), loader())
    data = load_report(tmp_path / "perf_hints.json")
    assert "tensor-cores-idle" in {h["id"] for h in data["hints"]}  # judged even with nothing observed
    assert swallowed() == []
    assert not cb.advisor.observing  # warm-up is over once the fit ends, however short it was


def test_grad_accumulation_counts_batches_not_optimizer_steps(tmp_path, local):
    cb = make_cb(local, warmup_steps=4)
    trainer = make_trainer(tmp_path, cb, accumulate_grad_batches=2, max_steps=3)
    quietly(trainer.fit, Flex(mlp()), loader())
    assert trainer.global_step == 3
    assert cb.advisor.context.settings["lightning"]["accumulate_grad_batches"] == 2
    assert len(cb.advisor.context.batches) == 4  # warm-up observed 4 batches (2 optimizer steps)


def test_warmup_longer_than_the_run(tmp_path, local, swallowed):
    cb = make_cb(local, target="a100", warmup_steps=500)
    trainer = make_trainer(tmp_path, cb, max_steps=3)
    quietly(trainer.fit, Flex(mlp()), loader())
    assert cb.advisor.warmup_done and len(cb.advisor.context.batches) == 3
    data = load_report(tmp_path / "perf_hints.json")
    assert data["hints"] and swallowed() == []


def test_same_callback_across_fits_validate_test_predict(tmp_path, local, swallowed):
    cb = make_cb(local, target="a100")
    model = Flex(mlp())
    quietly(make_trainer(tmp_path / "a", cb).fit, model, loader(), loader())
    first = load_report(tmp_path / "a" / "perf_hints.json")
    second_trainer = make_trainer(tmp_path / "b", cb, max_steps=8)
    quietly(second_trainer.fit, model, loader(), loader())
    assert second_trainer.global_step == 8
    quietly(second_trainer.validate, model, loader())
    quietly(second_trainer.predict, model, loader(n=32))
    quietly(make_trainer(tmp_path / "c", cb).fit, Flex(mlp()), loader())  # a fresh model, same callback
    for folder in ("b", "c"):
        data = load_report(tmp_path / folder / "perf_hints.json")
        assert {h["id"] for h in data["hints"]} >= {h["id"] for h in first["hints"]}
    assert swallowed() == []
