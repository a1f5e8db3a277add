"""``quantize_for_export``: an int8 TorchScript artifact written beside (never over) the fp32 one.

The artifact is a traced TorchScript module holding int8 Linear weights (and
int8 embedding rows), so a fresh process loads it with torch alone::

    model = torch.jit.load("model.int8.pt")   # no perfcallbacks, no transformers needed
    out = model(*inputs)                        # positional, order in "model.int8.pt.json"

It returns the main output tensor (``logits`` / ``last_hidden_state``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes._guard import model_device, quiet_torch, safe_copy
from perfcallbacks.fixes.int8 import Int8Embedding, available_backends, linear_layers, set_submodule
from perfcallbacks.fixes.quantize import QuantTolerance, _build, _sensitivity, _skip_reason
from perfcallbacks.measure import _forward_params, call_model, fidelity, output_kind, output_tensor, padding_mask

log = logging.getLogger(__name__)
PRODUCER = "perfcallbacks"
MIN_EMBEDDING_NUMEL = 65536  # small tables (positions, token types) are not worth the rounding


@dataclass
class ExportResult:
    """What :func:`quantize_for_export` wrote and how faithful the reloaded artifact is."""

    status: str  # "applied" (artifact written and verified) | "rejected" | "skipped" | "failed"
    reason: str
    path: str | None = None
    fp32_bytes: int = 0
    int8_bytes: int = 0
    ratio: float | None = None
    fidelity: dict[str, float] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Traceable(nn.Module):
    """Positional tensors in, the model's main output tensor out (what TorchScript can trace)."""

    def __init__(self, model: nn.Module, keys: list[str] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.keys is None:
            return output_tensor(self.model(*tensors))
        return output_tensor(self.model(**dict(zip(self.keys, tensors))))


def _inputs(model: nn.Module, example_inputs: Any) -> tuple[list[str] | None, tuple[torch.Tensor, ...]]:
    if isinstance(example_inputs, torch.Tensor):
        return None, (example_inputs,)
    if isinstance(example_inputs, Mapping):
        names, _ = _forward_params(model)
        keys = [k for k, v in example_inputs.items()
                if isinstance(v, torch.Tensor) and (names is None or k in names)]
        return keys, tuple(example_inputs[k] for k in keys)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in example_inputs):
        _, arity = _forward_params(model)  # an (x, y) training batch feeds forward(x): drop the labels
        return None, tuple(example_inputs)[: max(arity, 1)] if arity is not None else tuple(example_inputs)
    raise TypeError("example_inputs must be a tensor, a tuple/list of tensors or a mapping of tensors "
                    f"(e.g. a tokenizer's BatchEncoding), got {type(example_inputs).__name__}")


def _tensor_bytes(model: nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.state_dict(keep_vars=True).values()):
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _is_ours(path: Path) -> bool:
    try:
        meta = json.loads(_sidecar(path).read_text())
        return meta.get("producer") == PRODUCER and meta.get("sha256") == _sha256(path)
    except (OSError, ValueError):
        return False


def _check_path(path: str | os.PathLike[str], fp32_path: str | os.PathLike[str] | None) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    target = Path(path)
    if fp32_path is not None and target.resolve() == Path(fp32_path).resolve():
        raise ValueError(f"path {str(target)!r} is the fp32 artifact (fp32_path): the int8 one goes beside it, "
                         "e.g. 'model.int8.pt'")
    if target.is_dir():
        raise ValueError(f"path {str(target)!r} is a directory: give a file name such as 'model.int8.pt'")
    if target.exists() and not _is_ours(target):
        raise ValueError(f"path {str(target)!r} exists and was not written by perfcallbacks: refusing to "
                         "overwrite it (choose another name, e.g. 'model.int8.pt')")
    target.parent.mkdir(parents=True, exist_ok=True)  # like torch.save callers expect of an output path
    return target


def _quantize_embeddings(model: nn.Module) -> list[str]:
    tied = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Linear)}
    names = [n for n, m in model.named_modules() if type(m) is nn.Embedding
             and m.weight.numel() >= MIN_EMBEDDING_NUMEL and m.weight.data_ptr() not in tied]
    for name in names:
        set_submodule(model, name, Int8Embedding.from_embedding(model.get_submodule(name)))
    return names


def quantize_for_export(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any, *,
                        tolerance: QuantTolerance | None = None, fp32_path: str | os.PathLike[str] | None = None,
                        backend: str = "auto", quantize_embeddings: bool = True) -> ExportResult:
    """Write an int8 TorchScript copy of ``model`` to ``path`` and verify the reloaded file against fp32.

    Linear layers become dynamic int8 (the most sensitive kept fp32 until the
    outputs are within ``tolerance``), large embedding tables int8 rows. The file
    is traced with ``example_inputs``, reloaded with ``torch.jit.load`` and
    compared to the fp32 model; it is kept only within tolerance. ``path`` must
    not be ``fp32_path`` nor a file written by anything else (``ValueError``).
    A sidecar ``<path>.json`` records the input order and a checksum. Load it in
    a fresh process with torch alone: ``torch.jit.load(path)(*inputs)``.
    The user's model is never modified. Failures return ``status="failed"``.

    Example::

        >>> import os, tempfile, torch
        >>> from perfcallbacks import quantize_for_export
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> path = os.path.join(tempfile.mkdtemp(), "model.int8.pt")
        >>> r = quantize_for_export(model, path, example_inputs=torch.randn(8, 64))
        >>> r.status, r.ratio < 0.5, torch.jit.load(path)(torch.randn(2, 64)).shape
        ('applied', True, torch.Size([2, 4]))
    """
    tol = QuantTolerance() if tolerance is None else tolerance
    if not isinstance(tol, QuantTolerance):
        raise TypeError(f"tolerance must be a QuantTolerance, got {type(tolerance).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target = _check_path(path, fp32_path)
    keys, tensors = _inputs(model, example_inputs)
    result = ExportResult("failed", "", path=str(target), fp32_bytes=_tensor_bytes(model), inputs=keys or [])
    skip = _skip_reason(model) if model_device(model).type == "cpu" else None
    if skip:
        result.status, result.reason = "skipped", skip
        return result
    have = [b for b in available_backends() if b in ("fbgemm", "onednn")]
    if backend == "auto":
        backend = have[0] if have else ""
    if backend not in have:
        result.status, result.reason = "skipped", f"int8 backend {backend or 'fbgemm/onednn'!r} not available"
        return result
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        return _export(model, target, tmp, keys, tensors, tol, backend, quantize_embeddings, result)
    except Exception as err:  # never raise into the user's run
        log.debug("quantize_for_export failed", exc_info=True)
        result.status, result.reason = "failed", f"{type(err).__name__}: {err}"
        return result
    finally:
        if tmp.exists():
            tmp.unlink()


def _export(model: nn.Module, target: Path, tmp: Path, keys: list[str] | None, tensors: tuple[torch.Tensor, ...],
            tol: QuantTolerance, backend: str, quantize_embeddings: bool, result: ExportResult) -> ExportResult:
    cpu_tensors = tuple(t.to("cpu") for t in tensors)
    batch = dict(zip(keys, cpu_tensors)) if keys is not None else cpu_tensors
    work = safe_copy(model).to("cpu").eval()
    with torch.inference_mode():
        out = call_model(work, batch)
        argmax = output_kind(out, work) == "scores"
        ref = output_tensor(out).detach().clone()
    layers = linear_layers(work)
    with quiet_torch():
        sens = _sensitivity(work, batch, layers, backend)
        order = sorted(layers, key=lambda n: -sens[n])
        cand, fid, kept, bad = _build(work, batch, ref, layers, order, backend, tol, argmax=argmax)
    if bad:
        result.status, result.reason = "rejected", f"int8 outside tolerance: {'; '.join(bad)}"
        result.fidelity = fid
        return result
    embedded: list[str] = []
    if quantize_embeddings:
        trial = safe_copy(cand)
        embedded = _quantize_embeddings(trial)
        with torch.inference_mode():
            if embedded and not tol.violations(fidelity(ref, output_tensor(call_model(trial, batch)), argmax=argmax,
                                                       mask=padding_mask(batch, ref))):
                cand = trial
            else:
                embedded = []
    for module in cand.modules():
        # LightningModule properties (trainer, ...) raise on a detached copy unless they know
        # TorchScript is looking at them; Lightning's own to_torchscript sets the same flag.
        if hasattr(type(module), "_jit_is_scripting"):
            module._jit_is_scripting = True
    with quiet_torch(), warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_Traceable(cand, keys), cpu_tensors, check_trace=False)
        torch.jit.save(traced, str(tmp))
        reloaded = torch.jit.load(str(tmp))
        fid = fidelity(ref, reloaded(*cpu_tensors), argmax=argmax, mask=padding_mask(batch, ref))
    result.fidelity = fid
    bad = tol.violations(fid)
    result.details = {"backend": backend, "layers_total": len(layers), "layers_fp32": kept,
                      "embeddings_int8": embedded, "format": "torchscript",
                      "load": f"torch.jit.load({str(target)!r})(*inputs)"}
    if bad:
        result.status, result.reason = "rejected", f"reloaded artifact outside tolerance: {'; '.join(bad)}"
        return result
    os.replace(tmp, target)
    result.int8_bytes = target.stat().st_size
    result.ratio = result.int8_bytes / result.fp32_bytes if result.fp32_bytes else None
    meta = {"producer": PRODUCER, "sha256": _sha256(target), "inputs": keys or [], "format": "torchscript",
            "fidelity": fid, "fp32_bytes": result.fp32_bytes, "int8_bytes": result.int8_bytes}
    _sidecar(target).write_text(json.dumps(meta, indent=2))
    result.status = "applied"
    result.reason = (f"int8 artifact {result.int8_bytes / 1e6:.1f} MB = {result.ratio:.0%} of fp32, reloaded "
                     f"cosine {fid['cosine_mean']:.4f}")
    return result
