"""workers-restart on the HF Trainer: the eval loader's workers started again at every evaluation of train()."""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perfcallbacks import HFPerfHints  # noqa: E402
from perfcallbacks.hints import PerfHintWarning  # noqa: E402

STARTUP_S = 0.4


class LazyOpenDataset(torch.utils.data.Dataset):
    """Opens its storage once per process on first use (a file, a tokenizer): what each new worker pays."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = [{"input_ids": torch.randint(1, 100, (12,), generator=g), "labels": int(i % 2)} for i in range(n)]
        self._opened_in: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if self._opened_in != os.getpid():
            time.sleep(STARTUP_S)
            self._opened_in = os.getpid()
        return self.rows[i]


def _train(tmp_path, persistent: bool, epochs: int = 3):
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=100, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    cb = HFPerfHints(warmup_steps=6, verbose=False)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=epochs, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
        eval_strategy="epoch", dataloader_num_workers=1, dataloader_persistent_workers=persistent)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=LazyOpenDataset(96, 0),
                                   eval_dataset=LazyOpenDataset(48, 1), callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        trainer.train()
    return cb


def _hint(cb, loader):
    return next((h for h in cb.report.hints if h.id == "workers-restart" and h.evidence.get("loader") == loader),
                None)


def test_eval_workers_restarting_every_evaluation_fire_with_measured_startup(tmp_path):
    cb = _train(tmp_path, persistent=False)
    timing = cb.advisor.context.validation
    assert timing is not None and timing.batches_per_run == 6
    assert timing.runs_per_epoch == 1.0 and timing.runs_total == 3
    hint = _hint(cb, "val")
    assert hint is not None and hint.phase == "inference"
    ev = hint.evidence
    assert STARTUP_S * 0.8 <= ev["startup_s_per_epoch"] <= STARTUP_S * 3  # the planted start-up, once per run
    assert ev["restarts_to_come"] == 2 and ev["num_workers"] == 1
    assert hint.fix == "TrainingArguments(dataloader_persistent_workers=True)"


def test_persistent_eval_workers_are_quiet(tmp_path):
    cb = _train(tmp_path, persistent=True)
    assert _hint(cb, "val") is None and _hint(cb, "train") is None
