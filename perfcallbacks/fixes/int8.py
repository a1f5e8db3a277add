"""Int8 building blocks: a dynamic-int8 Linear, an int8 Embedding, and how to swap them in.

Why our own Linear and not ``torch.ao.quantization.quantize_dynamic``: its
default quantizes activations to 7 bits (``reduce_range``) and weights per
tensor, which loses BERT-style activation outliers (cosine 0.94 on MiniLM).
Here activations keep the full 8 bits and weights are per output channel at
7 bits, which keeps AVX2's u8*s8 pair sums below int16 saturation without
giving up activation range (cosine 0.99+ at the same speed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes._guard import quiet_torch
from perfcallbacks.model_facts import quantized_reason as is_quantized  # noqa: F401 (one test, shared with the hint)

WEIGHT_BITS = 7  # 2 * 255 * 64 < 32767: no int16 saturation on AVX2 (vpmaddubsw) without VNNI
OPS_BACKENDS = ("fbgemm", "onednn")  # prepacking engines of torch.ops.quantized, measured per machine
BACKENDS = ("auto", *OPS_BACKENDS, "torch.ao", "torchao")
# What each backend calls in torch: once torch removes one (the qint8 dtypes are deprecated since 2.13),
# that backend becomes unavailable with the reason, never an AttributeError in the user's run.
_OPS_API = ("torch.qint8", "torch.quantize_per_channel", "torch.ops.quantized.linear_prepack",
            "torch.ops.quantized.linear_dynamic", "torch.ops.quantized.linear_unpack",
            "torch.backends.quantized.supported_engines")
_AO_API = ("torch.ao.nn.quantized.dynamic.Linear", "torch.ao.quantization.default_dynamic_qconfig")


class BackendUnavailable(RuntimeError):
    """An int8 backend cannot be built in this process (reason in the message)."""


def _missing(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    try:
        obj: Any = importlib.import_module(parts[0])
        for i, part in enumerate(parts[1:], start=1):
            if hasattr(obj, part):
                obj = getattr(obj, part)
            else:  # a submodule not imported yet (torch.ao.nn...)
                obj = importlib.import_module(".".join(parts[: i + 1]))
    except Exception:  # ImportError, AttributeError, RuntimeError of a half-removed op namespace
        return True
    return False


def _first_missing(names: tuple[str, ...]) -> str | None:
    with quiet_torch():
        return next((n for n in names if _missing(n)), None)


def backend_status() -> dict[str, str | None]:
    """Every int8 backend with ``None`` if usable in this process, else why not (one line).

    Example::

        >>> from perfcallbacks.fixes.int8 import backend_status
        >>> sorted(backend_status())
        ['fbgemm', 'onednn', 'torch.ao', 'torchao']
    """
    if _STATUS:  # the torch build does not change within a process: look once (it is called per layer)
        return dict(_STATUS)
    status: dict[str, str | None] = {}
    gone = _first_missing(_OPS_API)
    engines: set[str] = set()
    if gone is None:
        engines = set(torch.backends.quantized.supported_engines)
    for name in OPS_BACKENDS:
        status[name] = (f"{gone} is not in torch {torch.__version__} (removed)" if gone else
                        None if name in engines else f"quantized engine {name!r} not built into this torch "
                        f"(has {sorted(engines)})")
    gone_ao = _first_missing(_AO_API) or _first_missing(_OPS_API)
    status["torch.ao"] = f"{gone_ao} is not in torch {torch.__version__} (removed)" if gone_ao else None
    status["torchao"] = _torchao_problem()
    _STATUS.update(status)
    return status


_STATUS: dict[str, str | None] = {}


def _torchao_problem() -> str | None:
    try:
        with quiet_torch():
            from torchao.quantization import Int8WeightOnlyConfig, quantize_  # noqa: F401
    except ImportError as err:
        if getattr(err, "name", None) == "torchao":
            return "torchao is not installed (pip install torchao)"
        return f"torchao does not import with torch {torch.__version__}: {err}"
    except Exception as err:  # a torchao built for another torch can fail in odd ways
        return f"torchao does not import with torch {torch.__version__}: {type(err).__name__}: {err}"
    return None


def ops_available() -> bool:
    """Whether torch still ships the dynamic int8 Linear ops (``torch.ao`` is deprecated)."""
    return _first_missing(_OPS_API) is None


def available_backends() -> list[str]:
    """Int8 backends usable in this process, in preference order (measured, benchmarks/int8_backends.md)."""
    return [name for name, problem in backend_status().items() if problem is None]


@contextlib.contextmanager
def _engine(name: str) -> Iterator[None]:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


class Int8DynamicLinear(nn.Module):
    """``nn.Linear`` replacement: int8 per-channel weights, activations quantized per call to 8 bits.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.int8 import Int8DynamicLinear
        >>> lin = torch.nn.Linear(16, 4)
        >>> q = Int8DynamicLinear.from_linear(lin, backend="fbgemm")
        >>> torch.nn.functional.cosine_similarity(q(torch.ones(2, 16)), lin(torch.ones(2, 16))).min() > 0.99
        tensor(True)
    """

    def __init__(self, packed: Any, in_features: int, out_features: int, backend: str) -> None:
        super().__init__()
        self._packed = packed
        self.in_features, self.out_features, self.backend = in_features, out_features, backend

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, backend: str = "fbgemm",
                    weight_bits: int = WEIGHT_BITS) -> Int8DynamicLinear:
        w = linear.weight.detach().to("cpu", torch.float32)
        qmax = 2 ** (weight_bits - 1) - 1
        scale = (w.abs().amax(dim=1) / qmax).clamp(min=1e-12).double()
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32).clone()
        with quiet_torch(), _engine(backend):
            qw = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qw, bias)
        return cls(packed, linear.in_features, linear.out_features, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # e.g. under autocast: compute in fp32, hand back the caller's dtype
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, False).to(x.dtype)
        return torch.ops.quantized.linear_dynamic(x, self._packed, False)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) as fp32 tensors, e.g. to rebuild an ``nn.Linear``."""
        with quiet_torch():
            qw, bias = torch.ops.quantized.linear_unpack(self._packed)
        return qw.dequantize(), bias

    @property
    def weight(self) -> torch.Tensor:  # read-only view for code that inspects `.weight.shape/dtype`
        return self.dequantized()[0]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, backend={self.backend}"


class Int8WeightLinear(nn.Module):
    """``nn.Linear`` with int8 per-output-channel weights, dequantized in ``forward`` (weight-only int8).

    Plain tensor ops only (no qint8 dtype, no packed params): it survives the
    ``torch.ao`` deprecations and ``torch.export`` can carry it, so it is what the
    portable ``.pt2`` artifact holds (a quarter of the fp32 weight bytes).

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.int8 import Int8WeightLinear
        >>> lin = torch.nn.Linear(16, 4)
        >>> q = Int8WeightLinear.from_linear(lin)
        >>> torch.nn.functional.cosine_similarity(q(torch.ones(2, 16)), lin(torch.ones(2, 16))).min() > 0.99
        tensor(True)
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.out_features, self.in_features = qweight.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8WeightLinear:
        w = linear.weight.detach().to("cpu", torch.float32)
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
        q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach().to("cpu", torch.float32).clone()
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, (self.qweight.to(x.dtype) * self.scale.to(x.dtype)),
                                    None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


class Int8Embedding(nn.Module):
    """``nn.Embedding`` with int8 rows and one fp32 scale per row (weight-only, for smaller artifacts).

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.int8 import Int8Embedding
        >>> emb = torch.nn.Embedding(10, 8)
        >>> Int8Embedding.from_embedding(emb)(torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 8])
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, padding_idx: int | None) -> None:
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = qweight.shape

    @classmethod
    def from_embedding(cls, emb: nn.Embedding) -> Int8Embedding:
        w = emb.weight.detach().to("cpu", torch.float32)
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
        q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
        return cls(q, scale, emb.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.qweight).float() * nn.functional.embedding(ids, self.scale)


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` by qualified name, except those sharing weights with an embedding (tied heads)."""
    embedding_ptrs = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    return {name: m for name, m in model.named_modules()
            if type(m) is nn.Linear and m.weight.data_ptr() not in embedding_ptrs}


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def relative_error(ref: torch.Tensor, new: torch.Tensor) -> float:
    ref, new = ref.detach().float(), new.detach().float()
    denom = ref.norm().item()
    return (ref - new).norm().item() / denom if denom > 0 else float((ref - new).norm().item())


def _fresh_linear(linear: nn.Linear) -> nn.Linear:
    """A new fp32 CPU ``nn.Linear`` with copies of ``linear``'s weights (quantizers may rewrite it in place)."""
    fresh = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        fresh.weight.copy_(linear.weight.detach().to("cpu", torch.float32))
        if linear.bias is not None:
            fresh.bias.copy_(linear.bias.detach().to("cpu", torch.float32))
    return fresh.eval()


def int8_linear(linear: nn.Linear, backend: str) -> nn.Module:
    """An int8 replacement for ``linear`` built by ``backend``; ``linear`` itself is never modified.

    Raises :class:`BackendUnavailable` (with the reason) when ``backend`` cannot be
    built in this process, e.g. after torch removed the API it calls.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.int8 import available_backends, int8_linear
        >>> lin = torch.nn.Linear(32, 8)
        >>> int8_linear(lin, available_backends()[0])(torch.ones(1, 32)).shape
        torch.Size([1, 8])
    """
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")
    problem = backend_status()[backend]
    if problem is not None:
        raise BackendUnavailable(f"int8 backend {backend!r} unavailable: {problem}")
    if backend in OPS_BACKENDS:
        return Int8DynamicLinear.from_linear(linear, backend=backend)
    fresh = _fresh_linear(linear)
    if backend == "torch.ao":  # the stock per-tensor path, kept for comparison and as a fallback
        with quiet_torch():
            from torch.ao.nn.quantized.dynamic import Linear as AoLinear
            from torch.ao.quantization import default_dynamic_qconfig

            fresh.qconfig = default_dynamic_qconfig  # on our copy: from_float reads it there
            return AoLinear.from_float(fresh)
    with quiet_torch():  # torchao: quantize_ swaps weights in place, hence the fresh copy
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        holder = nn.Sequential(fresh)
        quantize_(holder, Int8WeightOnlyConfig())
        return holder[0]
