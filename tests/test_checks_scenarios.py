"""End-to-end scenarios: real tiny loops on CPU driven through the Advisor (plain PyTorch)."""

from __future__ import annotations

import inspect
import time
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from perfcallbacks import Advisor, PerfHintWarning


def _train(advisor: Advisor, model: nn.Module, loader, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for index, (x, y) in enumerate(loader):
        if index >= steps:
            break
        with advisor.step((x, y)):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()


def test_clean_cpu_run_has_no_hint_above_info():
    """Aligned widths, in-memory data, batch 64, default threads, fp32, on this machine's real profile."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    data = TensorDataset(torch.randn(64 * 12, 256), torch.randint(0, 10, (64 * 12,)))
    loader = DataLoader(data, batch_size=64, shuffle=True)
    advisor = Advisor(model, loader, warmup_steps=10)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", PerfHintWarning)
        advisor.run_checks("setup")
        _train(advisor, model, loader, steps=12)
        report = advisor.analyze()
    assert advisor.warmup_done and len(advisor.context.step_times) >= 5
    loud = [h.id for h in report.hints if h.severity != "info"]
    assert not loud, f"a clean CPU run raised {loud}: {[h.message for h in report.hints]}"
    assert not report.check_failures


class SlowDataset(Dataset):
    """Each item costs ~5 ms (decoding, augmentation...): the loop waits for data."""

    def __len__(self) -> int:
        return 256

    def __getitem__(self, index: int):
        time.sleep(0.005)
        return torch.randn(64), index % 4


def test_plain_loop_finds_dataloader_bottleneck():
    torch.set_num_threads(1)  # a tiny model: keep its step short even on a busy machine (restored by conftest)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    loader = DataLoader(SlowDataset(), batch_size=8)
    advisor = Advisor(model, loader, warmup_steps=6)
    with pytest.warns(PerfHintWarning, match=r"\[dataloader-bottleneck\]"):
        _train(advisor, model, loader, steps=8)
    hint = advisor.report.hint("dataloader-bottleneck")
    assert hint.evidence["data_wait_ms"] >= 30  # 8 items x 5 ms
    assert hint.evidence["num_workers"] == 0 and hint.impact > 1.2
    assert "num_workers=" in hint.fix


def _sentences(n: int) -> list[str]:
    import json

    texts = []
    for module in (json, inspect, warnings, torch.nn.functional):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) or ""
            texts += [s.strip() for s in doc.replace("\n", " ").split(". ") if 20 < len(s.strip()) < 300]
    return texts[:n]


def test_plain_loop_with_max_length_padding_finds_padding_hints(minilm_dir):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=tokenizer.vocab_size)
    model = transformers.BertForSequenceClassification(config)
    texts = _sentences(128)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    data = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(i % 2)} for i in range(len(texts))]
    loader = DataLoader(data, batch_size=16)
    advisor = Advisor(model, loader, warmup_steps=6, framework="torch")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with pytest.warns(PerfHintWarning) as record:
        for index, batch in enumerate(loader):
            if index >= 7:
                break
            with advisor.step(batch):
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad()
    ids = {str(w.message).split("]")[0].lstrip("[") for w in record}
    assert {"padding-waste", "static-padding"} <= ids
    waste = advisor.report.hint("padding-waste")
    real = enc["attention_mask"][:7 * 16].sum().item()
    assert waste.evidence["pad_fraction"] == pytest.approx(1 - real / (7 * 16 * 128), abs=0.01)
    assert waste.impact > 1.5 and advisor.report.hint("static-padding").evidence["padded_len"] == 128
