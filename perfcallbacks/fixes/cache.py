"""On-disk cache of guarded-fix decisions, so a second process does not measure again.

A decision (``applied`` / ``rejected`` / ``skipped`` with its numbers) is worth
reusing when the same fix meets the same model structure, dtype, device, torch
version, thread count and batch-shape bucket: :func:`decision_key` hashes those
parts. Each key is one JSON file, ``<key>.json``, in :func:`cache_dir`
(``$PERFCALLBACKS_CACHE``, default ``~/.cache/perfcallbacks``;
``PERFCALLBACKS_CACHE=off`` disables it). Files are written to a temporary file
in the same directory and moved into place with :func:`os.replace`, so a reader
sees either nothing or one whole file, ranks writing different keys never
contend, and two writers of one key both succeed. A corrupt, foreign or
unreadable file reads as "no decision"; a full or read-only disk makes
:meth:`DecisionCache.put` return ``False``. Nothing here raises into the
user's run.

:func:`weights_fingerprint` is a cheap hash of a sample of the weights'
values, stored with a decision so the pipeline can tell when the weights
changed (fidelity must then be verified again; speed decisions still hold).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import operator
import os
import re
import struct
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

ENV = "PERFCALLBACKS_CACHE"
SCHEMA = "perfcallbacks/decision-v1"

_OFF = frozenset({"off", "0", "false", ""})
_KEY_RE = re.compile(r"[0-9a-f]{1,128}")
_MAX_FILE_BYTES = 1 << 20  # a decision is a few hundred bytes; anything huge is not ours
_SAMPLES = 64  # values sampled per tensor by weights_fingerprint
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0

_log = logging.getLogger(__name__)


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The decision cache folder: ``$PERFCALLBACKS_CACHE``, default ``~/.cache/perfcallbacks``.

    ``off``, ``0``, ``false`` (any case) or an empty value disable the cache (``None``).

    Example::

        >>> from perfcallbacks.fixes.cache import cache_dir
        >>> cache_dir({"PERFCALLBACKS_CACHE": "/tmp/pc-cache"})
        PosixPath('/tmp/pc-cache')
        >>> cache_dir({"PERFCALLBACKS_CACHE": "OFF"}) is None
        True
        >>> cache_dir({}).parts[-2:]
        ('.cache', 'perfcallbacks')
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV)
    if value is not None:
        if value.strip().lower() in _OFF:
            return None
        return Path(value).expanduser()
    try:
        return Path.home() / ".cache" / "perfcallbacks"
    except (RuntimeError, KeyError, OSError):  # no HOME and no passwd entry (some containers)
        _log.debug("perfcallbacks: no home directory; decision cache disabled")
        return None


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _class_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def model_signature(model: nn.Module) -> str:
    """Hash of the model's structure, the same in every process for the same architecture.

    Covers each submodule's qualified name and class, each parameter and buffer's
    name, shape and dtype, and (for HuggingFace models) the attention
    implementation, which changes speed without changing any module class. Not
    the weights' values (see :func:`weights_fingerprint`), nor the device.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.cache import model_signature
        >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        >>> model_signature(a) == model_signature(b)
        True
        >>> model_signature(a) == model_signature(torch.nn.Linear(4, 3))
        False
        >>> model_signature(a) == model_signature(torch.nn.Linear(4, 2).double())
        False
    """
    parts: list[Any] = []
    for name, module in model.named_modules(remove_duplicate=False):
        params = [(n, list(t.shape), str(t.dtype)) for n, t in module.named_parameters(recurse=False)]
        buffers = [(n, list(t.shape), str(t.dtype)) for n, t in module.named_buffers(recurse=False)]
        parts.append([name, _class_name(module), params, buffers])
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None) if config is not None else None
    return _digest({"modules": parts, "attn": attn if isinstance(attn, str) else None})


@functools.lru_cache(maxsize=1024)
def _sample_index(numel: int, device: torch.device) -> torch.Tensor:
    import torch

    # Low-discrepancy positions (golden-ratio sequence): spread over rows *and* columns, where evenly
    # spaced indices on a square matrix would all land in one column.
    k = min(_SAMPLES, numel)
    idx = [int(((i * _GOLDEN) % 1.0) * numel) for i in range(k)]
    return torch.tensor(idx, dtype=torch.long, device=device)


def _sample(tensor: torch.Tensor) -> torch.Tensor | None:
    import torch

    t = tensor.detach()
    if t.is_meta or t.layout != torch.strided or t.numel() == 0:
        return None
    if t.is_quantized:
        t = t.int_repr()
    if t.is_complex():
        t = torch.view_as_real(t)
    # take() reads a non-contiguous tensor in row-major order without copying it
    return torch.take(t, _sample_index(t.numel(), t.device))


def weights_fingerprint(model: nn.Module) -> str:
    """Cheap hash of the weights' values: :data:`_SAMPLES` fixed positions of every parameter and buffer.

    Any real update (an optimizer step, loading another checkpoint) changes it.
    It reads 64 values per tensor, never a pass over the weights, so its cost
    grows with the number of tensors, not their size. Being a sample, it can
    miss an update confined to a few unsampled rows (a sparse embedding update
    without weight decay). The same values give the same string in every process.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.cache import weights_fingerprint
        >>> m = torch.nn.Linear(4, 2)
        >>> before = weights_fingerprint(m)
        >>> before == weights_fingerprint(m)
        True
        >>> with torch.no_grad():
        ...     _ = m.weight.add_(0.01)
        >>> before == weights_fingerprint(m)
        False
    """
    import torch

    meta: list[Any] = []
    # Samples are gathered per (device, dtype) for one cat, cast and transfer each rather than one per
    # tensor, then hashed in the model's own order: the device (cuda:0 on one rank, cuda:1 on another)
    # is no part of the fingerprint.
    groups: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for i, (name, tensor) in enumerate(tensors):
        try:
            sample = _sample(tensor)
        except (RuntimeError, TypeError, ValueError):  # exotic tensor subclasses: record the shape only
            sample = None
        meta.append([name, list(tensor.shape), str(tensor.dtype), None if sample is None else sample.numel()])
        if sample is not None:
            groups.setdefault((str(sample.device), str(sample.dtype)), []).append((i, sample))
    chunks: dict[int, list[float]] = {}
    for members in groups.values():
        # float64 holds every fp32/fp16/bf16/int32 value exactly
        values = torch.cat([t for _, t in members]).to(torch.float64).cpu().tolist()
        start = 0
        for i, t in members:
            chunks[i] = values[start : start + t.numel()]
            start += t.numel()
    ordered = [v for i in sorted(chunks) for v in chunks[i]]
    h = hashlib.sha256(json.dumps(meta, separators=(",", ":")).encode("ascii"))
    h.update(struct.pack(f"<{len(ordered)}d", *ordered))
    return h.hexdigest()


def _pow2_ceil(value: int | None, name: str) -> str:
    if value is None:
        return "any"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {n}")
    return str(1 << (n - 1).bit_length()) if n > 1 else str(n)


def shape_bucket(batch_size: int | None, seq_len: int | None) -> str:
    """Coarse bucket of a batch shape: each size rounded up to a power of two (``None`` = unknown).

    A decision measured on one shape transfers to the other shapes of its bucket.

    Raises:
        TypeError / ValueError: a size that is not a non-negative int or ``None``.

    Example::

        >>> from perfcallbacks.fixes.cache import shape_bucket
        >>> shape_bucket(32, 100), shape_bucket(17, 128), shape_bucket(1, None)
        ('b32-s128', 'b32-s128', 'b1-sany')
        >>> shape_bucket(33, 129)
        'b64-s256'
    """
    return f"b{_pow2_ceil(batch_size, 'batch_size')}-s{_pow2_ceil(seq_len, 'seq_len')}"


def decision_key(
    *,
    fix_id: str,
    model_signature: str,
    dtype: str | None,
    device: Mapping[str, Any] | str,
    torch_version: str,
    threads: int,
    bucket: str,
) -> str:
    """Stable hex key of one decision: sha256 of a canonical JSON of its parts.

    ``device`` is a :meth:`DeviceProfile.to_dict` (or any JSON-able mapping of
    facts that stay the same across runs) or a short string such as ``"cpu"``.

    Raises:
        TypeError: a part of the wrong type.

    Example::

        >>> from perfcallbacks.fixes.cache import decision_key
        >>> parts = dict(fix_id="dynamic-quantization", model_signature="ab12", dtype="float32",
        ...              device={"kind": "cpu", "name": "AMD EPYC"}, torch_version="2.13.0", threads=2,
        ...              bucket="b32-s128")
        >>> key = decision_key(**parts)
        >>> len(key), key == decision_key(**{**parts, "device": {"name": "AMD EPYC", "kind": "cpu"}})
        (64, True)
        >>> key == decision_key(**{**parts, "threads": 1})
        False
    """
    for name, value in (
        ("fix_id", fix_id),
        ("model_signature", model_signature),
        ("torch_version", torch_version),
        ("bucket", bucket),
    ):
        if not isinstance(value, str):
            raise TypeError(f"decision_key {name} must be a str, got {type(value).__name__} {value!r}")
    if dtype is not None and not isinstance(dtype, str):
        raise TypeError(f"decision_key dtype must be a str or None (e.g. 'float32'), got {dtype!r}")
    if not isinstance(device, (str, Mapping)):
        raise TypeError(f"decision_key device must be a str or a mapping of facts, got {type(device).__name__}")
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"decision_key threads must be an int, got {threads!r}")
    return _digest(
        {
            "schema": SCHEMA,
            "fix": fix_id,
            "model": model_signature,
            "dtype": dtype,
            "device": device if isinstance(device, str) else dict(device),
            "torch": torch_version,
            "threads": threads,
            "bucket": bucket,
        }
    )


def _torch_version() -> str:
    try:
        import torch

        return str(torch.__version__)
    except ImportError:  # pragma: no cover - torch is a dependency
        return "unknown"


_DEFAULT: Any = object()


class DecisionCache:
    """Decisions of guarded fixes, one JSON file per key; never raises into the run.

    Args:
        directory: the cache folder; by default :func:`cache_dir` (``$PERFCALLBACKS_CACHE``,
            read when the cache is made); ``None`` disables the cache (``get`` finds nothing,
            ``put`` stores nothing).

    Raises:
        TypeError: ``directory`` is not a path, a string or ``None``.

    Example::

        >>> import tempfile
        >>> from perfcallbacks.fixes.cache import DecisionCache, decision_key
        >>> folder = tempfile.TemporaryDirectory()
        >>> cache = DecisionCache(folder.name)
        >>> key = decision_key(fix_id="dynamic-quantization", model_signature="ab12", dtype="float32",
        ...                    device="cpu", torch_version="2.13.0", threads=2, bucket="b32-s128")
        >>> cache.get(key) is None
        True
        >>> cache.put(key, {"status": "applied", "backend": "fbgemm", "speedup": 1.3})
        True
        >>> cache.get(key)
        {'status': 'applied', 'backend': 'fbgemm', 'speedup': 1.3}
        >>> DecisionCache(None).put(key, {"status": "applied"})
        False
        >>> folder.cleanup()
    """

    def __init__(self, directory: Path | str | None | object = _DEFAULT) -> None:
        if directory is _DEFAULT:
            directory = cache_dir()
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"DecisionCache directory must be a path, a str or None (disabled), got {type(directory).__name__}"
            )
        self._dir: Path | None = None if directory is None else Path(directory).expanduser()

    def __repr__(self) -> str:
        return f"DecisionCache({str(self._dir) if self._dir is not None else None!r})"

    @property
    def enabled(self) -> bool:
        """Whether decisions are read and written at all."""
        return self._dir is not None

    @property
    def directory(self) -> Path | None:
        return self._dir

    def path_for(self, key: str) -> Path | None:
        """The file that holds ``key``'s decision; ``None`` when disabled or ``key`` is not a hex key."""
        if self._dir is None or not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            return None
        return self._dir / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored decision, or ``None`` when absent, unreadable, corrupt or foreign. Never raises."""
        path = self.path_for(key)
        if path is None:
            return None
        try:
            with open(path, "rb") as fh:
                raw = fh.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _log.debug("perfcallbacks: decision cache read of %s failed: %s", path, exc)
            return None
        if len(raw) > _MAX_FILE_BYTES:
            _log.debug("perfcallbacks: ignoring oversized decision cache file %s", path)
            return None
        try:
            entry = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            _log.debug("perfcallbacks: ignoring corrupt decision cache file %s: %s", path, exc)
            return None
        if (
            not isinstance(entry, dict)
            or entry.get("schema") != SCHEMA
            or entry.get("key") != key
            or not isinstance(entry.get("decision"), dict)
        ):
            _log.debug("perfcallbacks: ignoring foreign decision cache file %s", path)
            return None
        return entry["decision"]

    def put(self, key: str, decision: Mapping[str, Any]) -> bool:
        """Store ``decision`` (plain JSON values) under ``key``, atomically; ``False`` when not stored.

        Whatever was at that key (an older, corrupt or foreign file) is replaced.
        Never raises: a disabled cache, a bad key, a value JSON cannot hold, or any
        ``OSError`` (read-only folder, full disk) gives ``False`` and a DEBUG log line.
        """
        path = self.path_for(key)
        if path is None:
            if self._dir is not None:
                _log.debug("perfcallbacks: decision cache key must be lowercase hex, got %r", key)
            return False
        try:
            text = json.dumps(
                {
                    "schema": SCHEMA,
                    "key": key,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "torch": _torch_version(),
                    "decision": dict(decision),
                },
                indent=1,
            )
        except (TypeError, ValueError, RecursionError) as exc:
            _log.debug("perfcallbacks: decision for %s is not plain JSON, not cached: %s", key, exc)
            return False
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Same directory as the target so os.replace is a rename on one file system (atomic).
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(text)
            # No fsync: after a power loss a torn file only reads as "no decision", measured again.
            os.replace(tmp, path)
            tmp = None
            return True
        except OSError as exc:
            _log.debug("perfcallbacks: decision cache write to %s failed: %s", path, exc)
            return False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
