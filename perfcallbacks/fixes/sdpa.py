"""The ``sdpa`` candidate: a copy of an HF model whose attention runs through ``scaled_dot_product_attention``.

Only models whose class declares SDPA support and that run ``eager`` attention
are switched (never a flash-attention model, never a non-HF module). The copy
is switched with ``set_attn_implementation`` where the installed transformers
has it, else by rebuilding the HF module from its config with
``attn_implementation="sdpa"`` and loading its weights (transformers 4.x chose
attention classes at construction). The pipeline measures and keeps it.
"""

from __future__ import annotations

import copy as _copy
import time
from typing import Any

from torch import nn

from perfcallbacks.fixes._guard import Tolerance, is_compiled, model_device, safe_copy
from perfcallbacks.fixes.candidate import Candidate
from perfcallbacks.report import FixResult

FIX_ID = "sdpa"
# Same attention, fused: softmax and sums reordered, so outputs agree to ~1e-6 relative.
TOLERANCE = Tolerance(cosine_mean=0.999, cosine_min=0.999, argmax_agreement=0.99)


def hf_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost HF ``PreTrainedModel``-like modules of ``model`` (``config._attn_implementation`` present).

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.sdpa import hf_attention_modules
        >>> hf_attention_modules(torch.nn.Linear(2, 2))
        []
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name == outer or name.startswith(outer + ".") for outer, _ in found if outer):
            continue
        if found and found[0][0] == "":
            break  # the model itself is the HF model: its submodules are covered
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation") and hasattr(type(module), "_supports_sdpa"):
            found.append((name, module))
    return found


def attention_implementation(module: nn.Module) -> str | None:
    return getattr(getattr(module, "config", None), "_attn_implementation", None)


def supports_sdpa(module: nn.Module) -> bool:
    try:
        return bool(getattr(type(module), "_supports_sdpa", False))
    except Exception:
        return False


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> nn.Module:
    if not name:
        return module
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
    return root


def _transformers_major() -> int:
    import sys

    version = getattr(sys.modules.get("transformers"), "__version__", "5")
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 5


def _switch(module: nn.Module) -> nn.Module:
    """``module`` (a private copy) running SDPA; may return a rebuilt module."""
    setter = getattr(module, "set_attn_implementation", None)
    if callable(setter) and _transformers_major() >= 5:
        setter("sdpa")
        return module
    # transformers 4.x picks attention classes at construction (BertSdpaSelfAttention vs BertSelfAttention;
    # its set_attn_implementation does not swap them): rebuild from the config.
    param = next(iter(module.parameters()), None)
    config = _copy.deepcopy(module.config)
    rebuilt = type(module)._from_config(config, attn_implementation="sdpa",
                                        torch_dtype=None if param is None else param.dtype)
    rebuilt.load_state_dict(module.state_dict())
    rebuilt.to(model_device(module))
    rebuilt.train(module.training)
    return rebuilt


def sdpa_candidate(model: nn.Module, example_batch: Any = None, *, profile: Any = None) -> Candidate | FixResult:
    """A copy of ``model`` with its HF attention switched from ``eager`` to SDPA; the user's model is untouched.

    ``skipped`` when there is no HF model inside, its class has no SDPA support, or it already runs SDPA
    (or another fused kernel); ``failed`` when the copy cannot be switched.

    Example::

        >>> from transformers import BertConfig, BertModel
        >>> from perfcallbacks.fixes.sdpa import sdpa_candidate
        >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        ...                  vocab_size=50)
        >>> bert = BertModel._from_config(cfg, attn_implementation="eager")
        >>> cand = sdpa_candidate(bert, None)
        >>> cand.model.config._attn_implementation, bert.config._attn_implementation
        ('sdpa', 'eager')
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = hf_attention_modules(model)
    if not modules:
        return FixResult(FIX_ID, "skipped", "no HuggingFace model (config._attn_implementation) inside the model")
    if is_compiled(model):
        return FixResult(FIX_ID, "skipped", "compiled model: load it with attn_implementation=\"sdpa\" "
                                            "before torch.compile")
    impls = {name: attention_implementation(module) for name, module in modules}
    eager = [(name, module) for name, module in modules if impls[name] in (None, "eager")]
    if not eager:
        return FixResult(FIX_ID, "skipped", f"attention already runs {sorted(set(map(str, impls.values())))}")
    unsupported = [type(m).__name__ for _, m in eager if not supports_sdpa(m)]
    if unsupported:
        return FixResult(FIX_ID, "skipped", f"{', '.join(sorted(set(unsupported)))} does not support SDPA "
                                            f"(_supports_sdpa is False)")
    try:
        work = safe_copy(model)
        for name, _ in eager:
            switched = _switch(work.get_submodule(name) if name else work)
            work = _set_submodule(work, name, switched)
        bad = [name for name, _ in eager
               if attention_implementation(work.get_submodule(name) if name else work) != "sdpa"]
        if bad:
            return FixResult(FIX_ID, "failed", f"the copy still runs eager attention in {bad}")
    except Exception as err:  # principle 1
        return FixResult(FIX_ID, "failed", f"could not switch a copy to SDPA: {type(err).__name__}: {err}")
    details = {"from": "eager", "modules": [name or type(model).__name__ for name, _ in eager],
               "model_class": type(eager[0][1]).__name__}
    if profile is not None:
        details["device"] = getattr(profile, "name", None)
    return Candidate(FIX_ID, work, tolerance=TOLERANCE, details=details, build_s=time.perf_counter() - start)
