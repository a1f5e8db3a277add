"""What the checks need to know about a model, read from the live ``nn.Module`` once per phase.

Checks never walk the model: :meth:`ModelFacts.of` does it before they run (the
:class:`~perfcallbacks.advisor.Advisor`, through :func:`perfcallbacks.run_facts.collect_run_facts`),
and a test builds one from a small model in one line.

FLOP estimate without running the model: a Linear or Conv layer costs
``weight.numel()`` multiply-adds per token / output position, so in a transformer
(every Linear sees every token) the weight share *is* the FLOP share. For CNNs,
whose layers run at different spatial sizes, it is a proxy. Embedding lookups
cost no FLOPs, except when the embedding matrix is also the output projection
(tied LM head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from perfcallbacks._lazy import lazy_module

torch = lazy_module("torch")  # loads on first use: the checks import this module (see _lazy)
nn = lazy_module("torch.nn")

# Embedding tables smaller than this are positions/segments/classes, not a vocabulary.
MIN_VOCAB = 256
_VOCAB_HEAD_NAMES = ("lm_head", "decoder", "output", "generator", "embed_out", "head")
_FP8_MODULE_PREFIXES = ("torchao.float8", "transformer_engine")


@dataclass(frozen=True)
class GemmLayer:
    """One GEMM-like layer: its name, kind, the dims that become GEMM dims, and its FLOP share."""

    name: str
    kind: Literal["linear", "conv"]
    in_dim: int
    out_dim: int
    flops: int  # multiply-adds per token / output position (weight elements)
    share: float  # of all Linear/Conv FLOPs in the model


def model_device(model: Any = None, batch: Any = None) -> torch.device:
    """Where ``model`` lives: its first parameter's device, else its first buffer's, else the device
    of ``batch``'s first tensor (a model without tensors runs where its input is), else the CPU.

    The one "device of a model" in the package (checks, probes, timings, fixes and helpers).

    Example::

        >>> from torch import nn
        >>> model_device(nn.Linear(2, 2)).type, model_device(None).type
        ('cpu', 'cpu')
    """
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    if batch is not None:
        from perfcallbacks.observe import iter_tensors

        for _, tensor in iter_tensors(batch):
            return tensor.device
    return torch.device("cpu")


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
    found: list[tuple[str, Literal["linear", "conv"], int, int, int]] = []
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


# Packages whose modules hold quantized weights (torch.ao, bitsandbytes, torchao, quanto, GPTQ, AWQ).
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                       "bitsandbytes", "torchao", "optimum.quanto", "auto_gptq", "awq")


def quantized_reason(model: nn.Module | None) -> str | None:
    """Why ``model`` already counts as quantized (a short reason), or ``None``.

    The one test shared by the ``int8-available`` hint and the int8 fix, so they never disagree.

    Example::

        >>> from torch import nn
        >>> quantized_reason(nn.Linear(4, 4)) is None
        True
    """
    if model is None:
        return None
    for name, module in model.named_modules():
        if _is_quantized_class(module) or type(module).__module__.startswith(_QUANTIZED_PACKAGES):
            return f"module {name or '<root>'} is {type(module).__name__}"
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        # A parameter is never an integer tensor unless quantized; integer buffers (position ids) are common.
        is_param = isinstance(tensor, nn.Parameter)
        if tensor.is_quantized or "torchao" in type(tensor).__module__ or "torchao" in type(tensor.data).__module__ \
                or (is_param and not tensor.is_floating_point()) \
                or (name.endswith("weight") and tensor.dtype in (torch.int8, torch.uint8)):
            return f"tensor {name} is already quantized ({type(tensor).__name__}, {tensor.dtype})"
    return None


def is_quantized(model: nn.Module | None) -> bool:
    """True when the model already holds quantized layers (torch.ao, torchao, ...) or int8 weights."""
    return quantized_reason(model) is not None


def model_config(model: Any) -> Any:
    """``model.config`` (HF), also through wrappers (``.model``, ``.module``), else ``None``."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "model", None)):
        config = getattr(candidate, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            return config
    return None


def _first_positive_int(config: Any, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


_HIDDEN_KEYS = ("hidden_size", "d_model", "n_embd", "dim")


def hidden_size(model: Any, *, deep: bool = False) -> int | None:
    """Transformer hidden size from ``model.config`` (:func:`model_config`) when known.

    ``deep=True`` also reads the config of the first submodule carrying one (an HF model held
    anywhere inside a wrapper), as output comparisons need.

    Example::

        >>> from types import SimpleNamespace
        >>> from torch import nn
        >>> wrapper = nn.Sequential(nn.Linear(2, 2))
        >>> wrapper[0].config = SimpleNamespace(hidden_size=384)
        >>> hidden_size(wrapper), hidden_size(wrapper, deep=True)
        (None, 384)
    """
    found = _first_positive_int(model_config(model), _HIDDEN_KEYS)
    if found is None and deep and isinstance(model, nn.Module):
        for module in model.modules():
            found = _first_positive_int(getattr(module, "config", None), _HIDDEN_KEYS)
            if found is not None:
                break
    return found


def num_layers(model: Any) -> int | None:
    """Transformer depth from ``model.config`` when known."""
    return _first_positive_int(model_config(model), ("num_hidden_layers", "n_layer", "n_layers", "num_layers"))


def vocab_projection(model: nn.Module | None, layers: list[GemmLayer] | None = None) -> GemmLayer | None:
    """The Linear that projects onto the vocabulary (LM head / tied embedding), or ``None``.

    An encoder's input embedding alone is not one: only an output projection is.
    """
    if model is None:
        return None
    by_name = {layer.name: layer for layer in (gemm_layers(model) if layers is None else layers)}
    head = None
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # some models raise NotImplementedError
            head = None
    embed_weights = {id(m.weight): m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)
                     and m.num_embeddings >= MIN_VOCAB}
    vocab = getattr(model_config(model), "vocab_size", None)
    for name, module in model.named_modules():
        if name not in by_name:
            continue
        if head is not None and module is head:
            return by_name[name]
        weight = getattr(module, "weight", None)
        tied = id(weight) in embed_weights
        named_head = name.rsplit(".", 1)[-1] in _VOCAB_HEAD_NAMES
        out = by_name[name].out_dim
        if tied or (named_head and (out == vocab or out in embed_weights.values())):
            return by_name[name]
    return None


def task_fixed_sides(model: nn.Module | None, layers: list[GemmLayer] | None = None) -> dict[str, set[str]]:
    """Layer name -> the sides (``"in"``/``"out"``) whose width the task or the data fixes.

    Never asked to change: the output width of the model's final GEMM (classes,
    regression targets), any output of ``config.num_labels`` width (HF heads),
    and the input width of the first GEMM when no embedding precedes it (the
    data's feature count). The vocabulary projection has its own hint.

    Example::

        >>> from torch import nn
        >>> sorted(task_fixed_sides(nn.Sequential(nn.Linear(30, 767), nn.ReLU(), nn.Linear(767, 2))).items())
        [('0', {'in'}), ('2', {'out'})]
    """
    if model is None:
        return {}
    layers = gemm_layers(model) if layers is None else layers
    if not layers:
        return {}
    fixed: dict[str, set[str]] = {}
    fixed.setdefault(layers[-1].name, set()).add("out")
    labels = getattr(model_config(model), "num_labels", None)
    if isinstance(labels, int) and labels > 0:
        for layer in layers:
            if layer.kind == "linear" and layer.out_dim == labels:
                fixed.setdefault(layer.name, set()).add("out")
    first = layers[0].name
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            break  # token ids come in: the first GEMM reads the embedding width, a model choice
        if name == first:
            fixed.setdefault(first, set()).add("in")
            break
    return fixed


@dataclass(frozen=True)
class ModelFacts:
    """The model as the checks see it. ``present=False`` (the default) means no model is known.

    Example::

        >>> from torch import nn
        >>> facts = ModelFacts.of(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2)))
        >>> facts.present, len(facts.layers), round(facts.linear_share, 2), facts.linear_params
        (True, 2, 1.0, 4224)
    """

    present: bool = False
    class_name: str | None = None
    layers: tuple[GemmLayer, ...] = ()
    vocab_projection: GemmLayer | None = None
    task_fixed: dict[str, set[str]] = field(default_factory=dict)  # see task_fixed_sides
    quantized: bool = False  # already holds quantized layers / int8 weights (is_quantized)
    fp8_modules: bool = False  # torchao.float8 / Transformer Engine modules inside
    # From an HF ``config`` (``has_config``); ``None`` when the model has none or does not say.
    has_config: bool = False
    hidden_size: int | None = None
    num_layers: int | None = None
    model_type: str | None = None
    name_or_path: str | None = None
    architectures: tuple[str, ...] = ()
    is_decoder: bool = False
    is_encoder_decoder: bool = False

    @property
    def linear_share(self) -> float:
        """Share of the Linear+Conv FLOPs in Linear layers (0 without any)."""
        return sum(layer.share for layer in self.layers if layer.kind == "linear")

    @property
    def linear_params(self) -> int:
        """Weights of all Linear layers (their multiply-adds per token)."""
        return sum(layer.flops for layer in self.layers if layer.kind == "linear")

    @classmethod
    def of(cls, model: nn.Module | None) -> ModelFacts:
        """Read ``model`` once (``ModelFacts()`` for ``None``)."""
        if model is None:
            return cls()
        layers = gemm_layers(model)
        config = model_config(model)
        return cls(
            present=True,
            class_name=type(model).__name__,
            layers=tuple(layers),
            vocab_projection=vocab_projection(model, layers),
            task_fixed=task_fixed_sides(model, layers),
            quantized=is_quantized(model),
            fp8_modules=any(type(m).__module__.startswith(_FP8_MODULE_PREFIXES) for m in model.modules()),
            has_config=config is not None,
            hidden_size=hidden_size(model),
            num_layers=num_layers(model),
            model_type=_str_or_none(getattr(config, "model_type", None)),
            name_or_path=_str_or_none(getattr(config, "_name_or_path", None)),
            architectures=tuple(str(a) for a in (getattr(config, "architectures", None) or ())),
            is_decoder=bool(getattr(config, "is_decoder", False)),
            is_encoder_decoder=bool(getattr(config, "is_encoder_decoder", False)),
        )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
