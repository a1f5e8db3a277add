"""Model checks (``smaller-model-available``) and pure helpers that read a model's shape.

The helpers estimate where a model's FLOPs go without running it: a Linear or
Conv layer costs ``weight.numel()`` multiply-adds per token / output position,
so in a transformer (every Linear sees every token) the weight share *is* the
FLOP share. For CNNs, whose layers run at different spatial sizes, it is a
proxy. Embedding lookups cost no FLOPs, except when the embedding matrix is
also the output projection (tied LM head).

Settings read (``ctx.settings``, absent = unknown):
    ``task``: e.g. ``"sequence-classification"`` (set by the adapters when the
    model is a ``*ForSequenceClassification`` / has a classifier head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import REGISTRY, Hint

# BERT-base: 12 layers x 768 hidden. Anything this size or larger used for
# classification is a candidate for a distilled / MiniLM-class model.
BASE_LAYERS = 12
BASE_HIDDEN = 768
# DistilBERT: 6 layers x 768 hidden, ~97% of BERT-base's GLUE score (Sanh et al. 2019).
DISTILBERT_LAYERS = 6
DISTILBERT_HIDDEN = 768
# Names that mark a model as already small/distilled: no hint for those.
_SMALL_MARKERS = ("distil", "minilm", "tiny", "small", "mini", "mobile", "albert")
_CLASSIFY_MARKERS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice",
                     "ForQuestionAnswering")
_CLASSIFY_TASKS = ("classification", "multiple-choice", "question-answering")


@dataclass(frozen=True)
class GemmLayer:
    """One GEMM-like layer: its name, kind, the dims that become GEMM dims, and its FLOP share."""

    name: str
    kind: str  # "linear" | "conv"
    in_dim: int
    out_dim: int
    flops: int  # multiply-adds per token / output position (weight elements)
    share: float  # of all Linear/Conv FLOPs in the model


def gemm_layers(model: nn.Module | None) -> list[GemmLayer]:
    """Every Linear / Conv layer of ``model`` with its share of the Linear+Conv FLOPs.

    Example::

        >>> from torch import nn
        >>> layers = gemm_layers(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2)))
        >>> [(l.out_dim, round(l.share, 2)) for l in layers]
        [(64, 0.97), (2, 0.03)]
    """
    if model is None:
        return []
    found: list[tuple[str, str, int, int, int]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or _is_quantized_linear(module):
            n_in, n_out = int(module.in_features), int(module.out_features)
            found.append((name, "linear", n_in, n_out, n_in * n_out))
        elif isinstance(module, nn.modules.conv._ConvNd):
            found.append((name, "conv", int(module.in_channels), int(module.out_channels),
                          int(module.weight.numel())))
    total = sum(f[4] for f in found) or 1
    return [GemmLayer(n, k, i, o, f, f / total) for n, k, i, o, f in found]


def _is_quantized_class(module: nn.Module) -> bool:
    cls = type(module)
    return ("quantized" in cls.__module__ or cls.__module__.startswith("torchao")
            or "int8" in cls.__name__.lower())


def _is_quantized_linear(module: nn.Module) -> bool:
    return _is_quantized_class(module) and hasattr(module, "in_features") and hasattr(module, "out_features")


def linear_share(model: nn.Module | None) -> float:
    """Share of the model's Linear+Conv FLOPs that sits in Linear layers (0 without any)."""
    return sum(layer.share for layer in gemm_layers(model) if layer.kind == "linear")


def is_quantized(model: nn.Module | None) -> bool:
    """True when the model already holds quantized layers (torch.ao, torchao) or int8 weights."""
    if model is None:
        return False
    if any(_is_quantized_class(module) for module in model.modules()):
        return True
    for param in model.parameters():
        if not param.is_floating_point():
            return True
        if "torchao" in type(param.data).__module__:  # torchao tensor subclasses
            return True
    return False


def model_config(model: Any) -> Any:
    """``model.config`` (HF), also through wrappers (``.model``, ``.module``), else ``None``."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "model", None)):
        config = getattr(candidate, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            return config
    return None


def hidden_size(model: Any) -> int | None:
    """Transformer hidden size from ``model.config`` when known."""
    config = model_config(model)
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _layers(config: Any) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def is_classifier(ctx: RunContext) -> bool:
    """The model is used for classification: adapter's ``task`` setting, class or config names."""
    task = str(ctx.settings.get("task") or "")
    if any(t in task for t in _CLASSIFY_TASKS):
        return True
    names = [type(ctx.model).__name__]
    config = model_config(ctx.model)
    names += list(getattr(config, "architectures", None) or [])
    return any(marker in name for name in names for marker in _CLASSIFY_MARKERS)


@check("smaller-model-available", phases=("setup",))
def smaller_model_available(ctx: RunContext) -> Hint | None:
    config = model_config(ctx.model)
    if config is None or getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return None
    layers, hidden = _layers(config), hidden_size(ctx.model)
    if layers is None or hidden is None or layers < BASE_LAYERS or hidden < BASE_HIDDEN:
        return None
    name = " ".join(str(x) for x in (getattr(config, "_name_or_path", ""), getattr(config, "model_type", ""),
                                     type(ctx.model).__name__)).lower()
    if any(marker in name for marker in _SMALL_MARKERS) or not is_classifier(ctx):
        return None
    # Encoder cost scales with layers x hidden^2 (projections and FFN dominate).
    impact = (layers * hidden**2) / (DISTILBERT_LAYERS * DISTILBERT_HIDDEN**2)
    candidates = "distilbert-base-uncased (6x768) or microsoft/MiniLM-L12-H384-uncased (12x384)"
    fix = fix_text(ctx,
                   lightning=f"load {candidates} in your LightningModule and compare validation metrics",
                   hf=f"AutoModelForSequenceClassification.from_pretrained(\"distilbert-base-uncased\", "
                      f"num_labels=...) (or {candidates}); compare eval metrics",
                   torch=f"swap the encoder for {candidates} and compare validation metrics")
    return REGISTRY["smaller-model-available"].make(
        ctx.phase,
        f"A {layers}-layer x {hidden}-hidden encoder is used for classification; a distilled 6-layer model "
        f"is about {impact:.1f}x cheaper per token and usually within ~3% of the accuracy.",
        fix,
        evidence={"num_layers": layers, "hidden_size": hidden, "model_type": getattr(config, "model_type", None),
                  "model_class": type(ctx.model).__name__},
        impact=impact)
