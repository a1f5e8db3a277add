"""Odd-but-valid ingredients shared by the reliability tests: batch shapes, models, loaders.

Everything is tiny (32 features, 16 classes, 64 rows) so a fit takes well under a second.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

FEATURES, CLASSES, ROWS, BATCH = 32, 16, 64, 16
VOCAB, SEQ = 100, 12


# -- rows --------------------------------------------------------------------------------------
class Rows(Dataset):
    """``(features, label, token_ids, length)`` rows; token rows are padded to ``SEQ`` with id 0."""

    def __init__(self, n: int = ROWS, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=gen)
        self.y = torch.randint(0, CLASSES, (n,), generator=gen)
        self.lengths = torch.randint(3, SEQ + 1, (n,), generator=gen)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        return self.x[i], self.y[i], self.ids[i], int(self.lengths[i])


class StreamRows(IterableDataset):
    """The same rows as a stream: no ``__len__`` (Lightning cannot size the epoch)."""

    def __init__(self, n: int = ROWS) -> None:
        self.rows = Rows(n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
        for i in range(len(self.rows)):
            yield self.rows[i]


# -- batch containers ------------------------------------------------------------------------------
@dataclasses.dataclass
class DataclassBatch:
    x: torch.Tensor
    y: torch.Tensor
    names: list[str]


class CustomBatch:
    """A collate output that is neither a mapping, a sequence nor a dataclass."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:  # some user containers define len: must not confuse us
        return len(self.y)


def _stack(rows: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.stack([r[0] for r in rows])
    y = torch.stack([r[1] for r in rows])
    ids = torch.stack([r[2] for r in rows])
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        mask[i, : r[3]] = 1
    return x, y, ids * mask, mask


def collate_tuple(rows):
    x, y, _, _ = _stack(rows)
    return (x, y)


def collate_dict_with_non_tensors(rows):
    x, y, _, _ = _stack(rows)
    return {"x": x, "y": y, "ids": [f"row-{i}" for i in range(len(rows))], "source": "train", "epoch": 0,
            "weight": 1.5, "extra": None}


def collate_nested(rows):
    x, y, _, _ = _stack(rows)
    return {"inputs": (x, {"scale": torch.tensor(1.0)}), "y": y, "lengths": [int(r[3]) for r in rows]}


def collate_dataclass(rows):
    x, y, _, _ = _stack(rows)
    return DataclassBatch(x, y, [f"row-{i}" for i in range(len(rows))])


def collate_custom(rows):
    x, y, _, _ = _stack(rows)
    return CustomBatch(x, y)


def collate_batch_encoding(rows):
    from transformers import BatchEncoding

    _, y, ids, mask = _stack(rows)
    return BatchEncoding({"input_ids": ids, "attention_mask": mask, "labels": y})


def collate_token_tuple(rows):
    _, y, ids, mask = _stack(rows)
    return (ids, mask, y)


# name -> (collate_fn, unpack(batch) -> (forward input, labels), model factory)
def unpack_tuple(b):
    return b[0], b[1]


def unpack_dict(b):
    return b["x"], b["y"]


def unpack_nested(b):
    return b["inputs"][0] * b["inputs"][1]["scale"], b["y"]


def unpack_attrs(b):
    return b.x, b.y


def unpack_encoding(b):
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, b["labels"]


def unpack_token_tuple(b):
    return {"input_ids": b[0], "attention_mask": b[1]}, b[2]


# -- models -------------------------------------------------------------------------------------------
class TokenClassifier(nn.Module):
    """Embedding -> masked mean -> Linear: takes ``input_ids`` / ``attention_mask`` like an HF model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, FEATURES)
        self.head = nn.Linear(FEATURES, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(input_ids)
        if attention_mask is not None:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            h = (h * m).sum(1) / m.sum(1).clamp(min=1)
        else:
            h = h.mean(1)
        return self.head(h)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, CLASSES))


class ConvOnly(nn.Module):
    """No Linear layer anywhere: Conv1d feature extractor and a 1x1 conv classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, CLASSES, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.unsqueeze(1)).mean(-1)


class LazyNet(nn.Module):
    """Parameters do not exist (``UninitializedParameter``) until the first forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LazyLinear(64), nn.ReLU(), nn.LazyLinear(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LoraLinear(nn.Module):
    """PEFT-style LoRA layer: a frozen ``base_layer`` plus a trainable low-rank ``lora_A``/``lora_B``."""

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base_layer = base
        self.base_layer.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x)) * self.scaling


class PeftStyleModel(nn.Module):
    """What ``peft.get_peft_model`` builds: ``base_model.model`` holds the user's net, Linears wrapped."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        for name, module in list(base.named_modules()):
            if isinstance(module, nn.Linear):
                parent_name, _, child = name.rpartition(".")
                parent = base.get_submodule(parent_name) if parent_name else base
                setattr(parent, child, LoraLinear(module))
        self.base_model = nn.Module()
        self.base_model.model = base

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.model(*args, **kwargs)


class QuantizedBackbone(nn.Module):
    """A frozen, already int8-quantized backbone (``quantize_dynamic``) and a trainable fp32 head."""

    def __init__(self) -> None:
        super().__init__()
        backbone = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU())
        self.backbone = torch.ao.quantization.quantize_dynamic(backbone, {nn.Linear}, dtype=torch.qint8)
        self.head = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.backbone(x)
        return self.head(h)


class ParameterFree(nn.Module):
    """No parameters at all (a fixed random projection kept as a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("proj", torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj


# -- loaders -------------------------------------------------------------------------------------------
def loader(collate: Callable | None = collate_tuple, *, stream: bool = False, n: int = ROWS,
           batch_size: int = BATCH) -> DataLoader:
    dataset = StreamRows(n) if stream else Rows(n)
    return DataLoader(dataset, batch_size=batch_size, collate_fn=collate)


# -- report ---------------------------------------------------------------------------------------------
def load_report(path: str | Path) -> dict[str, Any]:
    """Parse the JSON file and round-trip it through :class:`Report` (both must work)."""
    from perfcallbacks import Report

    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text)
    report = Report.from_json(text)
    assert data["schema"] == "perfcallbacks/report-v1"
    keys = [(h.id, h.phase) for h in report.hints]
    assert len(keys) == len(set(keys)), "one entry per (hint id, phase)"
    return data


def tmp_leftovers(folder: str | Path) -> list[str]:
    """Temp files a report write may have left behind (``.<name>.*.tmp``)."""
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))
