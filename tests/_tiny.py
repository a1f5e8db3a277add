"""Tiny real models for the fix tests (built from config: no hub, no network)."""

from __future__ import annotations

import torch


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=64)
    return BertModel(cfg).eval()


def tiny_bert_batch(batch: int = 8, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[batch // 2:, length // 2:] = 0  # dynamic padding: half the rows are shorter
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.zeros(batch)}


def mlp(width: int = 128, classes: int = 10) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, classes))


def snapshot(model: torch.nn.Module) -> dict[str, bytes]:
    """Byte-exact copy of every parameter and buffer."""
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}
