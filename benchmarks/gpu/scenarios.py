"""Small real models and data for the GPU suite (built in code or from a config: no hub, no network).

Shared by ``tests/gpu`` and ``benchmarks/gpu/run_gpu.py`` so that the test and
the measurement of a hint look at the same model. Every builder takes the
device and dtype; sizes are arguments so the CPU-side tests can build tiny
versions.

Example::

    >>> import torch
    >>> from scenarios import mlp
    >>> mlp(16, depth=2)(torch.randn(3, 16)).shape
    torch.Size([3, 16])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def mlp(width: int, depth: int = 4, *, out: int | None = None, device: Any = "cpu",
        dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Sequential:
    """``depth`` Linear(width, width) layers with ReLU between them (every layer carries the same FLOPs)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(depth):
        last = i == depth - 1
        layers.append(nn.Linear(width, out if (last and out) else width))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device=device, dtype=dtype)


class TinyLM(nn.Module):
    """Embedding -> one Linear block -> ``lm_head`` onto the vocabulary (the head dominates the FLOPs)."""

    def __init__(self, vocab: int, dim: int = 768) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.block(self.embed(input_ids))))


def tiny_lm(vocab: int, dim: int = 768, *, device: Any = "cpu", dtype: torch.dtype = torch.float32,
            seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(vocab, dim).to(device=device, dtype=dtype).eval()


def token_ids(batch: int, seq: int, vocab: int, *, device: Any = "cpu", seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, seq), generator=g).to(device)


def token_batch(batch: int, seq: int, vocab: int = 1000, *, device: Any = "cpu", seed: int = 1
                ) -> dict[str, torch.Tensor]:
    """``input_ids`` + an all-ones ``attention_mask`` (no padding: sequence length is what is varied)."""
    ids = token_ids(batch, seq, vocab, device=device, seed=seed)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def bert_encoder(attn: str = "sdpa", *, hidden: int = 256, layers: int = 4, heads: int = 4, intermediate: int = 1024,
                 vocab: int = 1024, max_positions: int = 512, device: Any = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """A BERT encoder from a config (random weights) with the attention implementation ``attn``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=max_positions)
    model = BertModel._from_config(cfg, attn_implementation=attn)
    return model.to(device=device, dtype=dtype).eval()


class ConvNet(nn.Module):
    """A small ResNet-style CNN: conv stem, residual 3x3 blocks at 64/128/256 channels, pooled linear head."""

    def __init__(self, classes: int = 10, widths: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        blocks: list[nn.Module] = []
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks.append(_Block(prev, width, stride=1 if i == 0 else 2))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(prev, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Identity() if cin == cout and stride == 1
                     else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


def conv_net(*, classes: int = 10, device: Any = "cpu", dtype: torch.dtype = torch.float32,
             channels_last: bool = False, seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    model = ConvNet(classes).to(device=device, dtype=dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def images(batch: int, size: int = 32, *, device: Any = "cpu", dtype: torch.dtype = torch.float32,
           channels_last: bool = False, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def vector_loader(rows: int, width: int, *, batch_size: int, classes: int = 8, pin_memory: bool = False,
                  seed: int = 3) -> DataLoader:
    """A host-side (CPU) loader of random vectors and labels; the trainer moves batches to the device."""
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(rows, width, generator=g), torch.randint(0, classes, (rows,), generator=g))
    return DataLoader(data, batch_size=batch_size, pin_memory=pin_memory)


def image_loader(rows: int, *, batch_size: int, size: int = 32, classes: int = 10, seed: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(rows, 3, size, size, generator=g), torch.randint(0, classes, (rows,), generator=g))
    return DataLoader(data, batch_size=batch_size)


def token_loader(rows: int, seq: int, *, batch_size: int, vocab: int = 1000, seed: int = 5) -> DataLoader:
    """Batches of ``{"input_ids", "attention_mask"}`` with every row ``seq`` tokens long."""
    ids = token_ids(rows, seq, vocab, seed=seed)
    rows_list = [{"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i])} for i in range(rows)]
    return DataLoader(rows_list, batch_size=batch_size)  # default collate stacks the dicts


def hint_ids(report: Any) -> set[str]:
    """Ids of every hint in a :class:`perfcallbacks.Report` (all phases)."""
    return {h.id for h in report.hints}


def find_hint(report: Any, hint_id: str, phase: str | None = None) -> Any:
    """The hint ``hint_id`` (optionally of ``phase``) in ``report``, or ``None``."""
    for hint in report.hints:
        if hint.id == hint_id and (phase is None or hint.phase == phase):
            return hint
    return None


def find_fix(report: Any, fix_id: str) -> Any:
    for fix in report.fixes:
        if fix.id == fix_id:
            return fix
    return None


def hint_missing(hint_id: str) -> str | None:
    """Why ``hint_id`` cannot fire yet, or ``None`` when it can.

    A hint can fire once its id is in ``perfcallbacks.hints.REGISTRY`` *and* a
    check that emits it is registered (``perfcallbacks.checks.CHECKS``): the
    second-round ids (DESIGN.md) are added to the registry before their checks land.
    """
    from perfcallbacks.hints import REGISTRY

    if hint_id not in REGISTRY:
        return (f"hint id {hint_id!r} is not registered yet (perfcallbacks.hints.REGISTRY); DESIGN.md lists it: "
                "this runs once it lands")
    from perfcallbacks.checks import CHECKS

    if not any(c.hint_id == hint_id for c in CHECKS):
        return (f"hint id {hint_id!r} is registered but no check emits it yet (perfcallbacks.checks.CHECKS): "
                "this runs once its check lands")
    return None


def hint_registered(hint_id: str) -> bool:
    """``hint_id`` can fire: registered and emitted by a check (see :func:`hint_missing`)."""
    return hint_missing(hint_id) is None
