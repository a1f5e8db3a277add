"""Length-grouped batching: the fix for ``padding-waste`` in training and in predict.

Rows of similar length are batched together and each batch is padded only to
its own longest row. For training, :class:`LengthGroupedBatchSampler` keeps
randomness the way transformers' ``LengthGroupedSampler`` does (random
mega-batches of ``mega_batch_mult x batch_size`` rows, sorted by length
inside). For inference, :func:`predict_length_grouped` runs a model over texts
or token ids in length-sorted batches and returns the outputs in the original
order. Measured on MiniLM-L6 with real sentences (``benchmarks/padding.md``):
see there for the speedup over ``padding="max_length"``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from perfcallbacks.model_facts import model_device

# transformers' default: mega-batches of 50 batches, or 4 mega-batches for small data.
DEFAULT_MEGA_BATCH_MULT = 50


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _check_lengths(lengths: Any) -> list[int]:
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.tolist()
    try:
        values = [int(n) for n in lengths]
    except (TypeError, ValueError):
        raise TypeError(f"lengths must be a sequence of ints, got {type(lengths).__name__}") from None
    if any(n < 0 for n in values):
        raise ValueError("lengths must be non-negative")
    return values


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool = False,
                           mega_batch_mult: int | None = None,
                           generator: torch.Generator | None = None) -> list[list[int]]:
    """Index batches whose rows have similar lengths.

    ``shuffle=False`` (inference): all rows sorted by length, longest first,
    cut into batches, so padding is minimal. ``shuffle=True`` (training): a
    random permutation cut into mega-batches of ``mega_batch_mult`` batches,
    each sorted by length and cut into batches; batch order is shuffled with the
    longest batch first (an out-of-memory shows up at once).

    Raises:
        ValueError / TypeError: for a non-positive ``batch_size`` or non-integer lengths.

    Example::

        >>> from perfcallbacks.padding import length_grouped_batches
        >>> length_grouped_batches([5, 1, 9, 2], batch_size=2)
        [[2, 0], [3, 1]]
    """
    size = _check_batch_size(batch_size)
    values = _check_lengths(lengths)
    if not values:
        return []
    if not shuffle:
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        return [order[i:i + size] for i in range(0, len(order), size)]
    mult = mega_batch_mult or max(1, min(len(values) // (size * 4), DEFAULT_MEGA_BATCH_MULT))
    perm = torch.randperm(len(values), generator=generator).tolist()
    mega = size * mult
    batches: list[list[int]] = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -values[i])
        batches.extend(chunk[i:i + size] for i in range(0, len(chunk), size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    batches = [batches[i] for i in order]
    longest = max(range(len(batches)), key=lambda b: max(values[i] for i in batches[b]))
    batches[0], batches[longest] = batches[longest], batches[0]
    return batches


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A ``batch_sampler`` for ``DataLoader`` that groups rows of similar length (reshuffled each epoch).

    Args:
        lengths: real (unpadded) length of every row of the dataset.
        batch_size: rows per batch.
        shuffle: random mega-batches (training); ``False`` = fully sorted (inference).
        mega_batch_mult: batches per sorted mega-batch (default as in transformers).
        seed: base seed; epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch`, or it advances itself).
        drop_last: drop a final short batch.
        sampler: optional index sampler (e.g. a ``DistributedSampler``): only the
            indices it yields are grouped. Lightning re-creates batch samplers for
            predict and DDP by injecting ``sampler`` and ``drop_last``; the saved
            arguments below let it do so without losing the lengths.

    Raises:
        ValueError / TypeError: for a bad ``batch_size`` or ``lengths``.

    Example::

        >>> from perfcallbacks.padding import LengthGroupedBatchSampler
        >>> sampler = LengthGroupedBatchSampler([3, 30, 4, 29], batch_size=2, mega_batch_mult=2)
        >>> sorted(sorted(b) for b in sampler)
        [[0, 2], [1, 3]]
        >>> # DataLoader(dataset, batch_sampler=sampler, collate_fn=DataCollatorWithPadding(tokenizer))
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True,
                 mega_batch_mult: int | None = None, seed: int = 0, drop_last: bool = False,
                 sampler: Iterable[int] | None = None) -> None:
        # Lightning's protocol for re-instantiating custom batch samplers (its own hook only
        # records these for samplers built inside LightningModule/DataModule methods).
        setattr(self, "__pl_saved_args", (lengths, batch_size))
        setattr(self, "__pl_saved_kwargs", {"shuffle": shuffle, "mega_batch_mult": mega_batch_mult, "seed": seed,
                                             "drop_last": drop_last, "sampler": sampler})
        setattr(self, "__pl_saved_default_kwargs", {})
        setattr(self, "__pl_saved_arg_names", ("lengths", "batch_size"))
        self.lengths = _check_lengths(lengths)
        self.sampler = sampler
        self.batch_size = _check_batch_size(batch_size)
        if mega_batch_mult is not None:
            _check_batch_size(mega_batch_mult)
        self.shuffle = bool(shuffle)
        self.mega_batch_mult = mega_batch_mult
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        indices = self._indices()
        batches = length_grouped_batches([self.lengths[i] for i in indices], self.batch_size, shuffle=self.shuffle,
                                         mega_batch_mult=self.mega_batch_mult, generator=generator)
        for batch in batches:
            if self.drop_last and len(batch) < self.batch_size:
                continue
            yield [indices[j] for j in batch]

    def _indices(self) -> list[int]:
        return list(range(len(self.lengths))) if self.sampler is None else [int(i) for i in self.sampler]

    def __len__(self) -> int:
        if self.drop_last:
            # Every mega-batch may end in a short batch; count full ones only.
            return sum(1 for _ in self._full_sizes())
        return -(-len(self._indices()) // self.batch_size)

    def _full_sizes(self) -> Iterator[int]:
        batches = length_grouped_batches([self.lengths[i] for i in self._indices()], self.batch_size, shuffle=self.shuffle,
                                         mega_batch_mult=self.mega_batch_mult,
                                         generator=torch.Generator().manual_seed(self.seed))
        return (len(b) for b in batches if len(b) == self.batch_size)


def _encode(inputs: Any, tokenizer: Any, max_length: int | None) -> dict[str, list]:
    """Unpadded encodings as a dict of per-row lists (texts need a tokenizer)."""
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of texts, not a single string")
    if isinstance(inputs, Mapping) or hasattr(inputs, "keys"):
        enc = {k: list(v) for k, v in dict(inputs).items()}
    else:
        rows = list(inputs)
        if rows and isinstance(rows[0], str):
            if tokenizer is None:
                raise ValueError("tokenizer is required when inputs are texts")
            kwargs = {"truncation": True}
            if max_length is not None:
                kwargs["max_length"] = max_length
            enc = {k: list(v) for k, v in dict(tokenizer(rows, padding=False, **kwargs)).items()}
        else:
            enc = {"input_ids": [list(r.tolist() if isinstance(r, torch.Tensor) else r) for r in rows]}
    if "input_ids" not in enc:
        raise ValueError(f"inputs must hold 'input_ids', got keys {sorted(enc)}")
    enc["input_ids"] = [list(r.tolist() if isinstance(r, torch.Tensor) else r) for r in enc["input_ids"]]
    return enc


def _pad(features: dict[str, list], rows: list[int], tokenizer: Any, pad_to_multiple_of: int | None) -> dict:
    subset = [{k: v[i] for k, v in features.items()} for i in rows]
    if tokenizer is not None and hasattr(tokenizer, "pad"):
        return dict(tokenizer.pad(subset, padding=True, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"))
    width = max(len(f["input_ids"]) for f in subset)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.zeros(len(subset), width, dtype=torch.long)
    mask = torch.zeros(len(subset), width, dtype=torch.long)
    for j, f in enumerate(subset):
        n = len(f["input_ids"])
        ids[j, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
        mask[j, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def predict_length_grouped(model: nn.Module, inputs: Any, tokenizer: Any = None, *, batch_size: int = 32,
                           max_length: int | None = None, pad_to_multiple_of: int | None = None,
                           output_fn: Callable[[Any, dict], torch.Tensor] | None = None,
                           device: str | torch.device | None = None) -> torch.Tensor | list[torch.Tensor]:
    """Run ``model`` over ``inputs`` in length-grouped, dynamically padded batches; outputs in input order.

    Args:
        model: called as ``model(**batch)`` (``input_ids``, ``attention_mask``, ...), in eval
            mode under ``torch.inference_mode()`` (its train/eval flags are restored).
        inputs: a list of texts (needs ``tokenizer``), a list of token-id lists, or an unpadded
            encoding (``tokenizer(texts)`` / a dict of per-row lists).
        tokenizer: a HF tokenizer (tokenizes texts and pads batches); without one, token ids are
            padded with 0 and an ``attention_mask`` is built.
        batch_size: rows per batch.
        max_length: truncation length for texts.
        pad_to_multiple_of: round each batch's padded length up (8 on Tensor Cores).
        output_fn: ``fn(outputs, batch) -> tensor [rows, ...]``; default: the model's main output
            tensor (``logits``, else ``last_hidden_state``).
        device: where batches go (default: the model's device).

    Returns:
        One tensor stacked in input order when every row's output has the same shape; else a
        list of per-row tensors in input order (per-token outputs are cut to each row's length).

    Raises:
        ValueError / TypeError: for a bad ``batch_size``, texts without a tokenizer, or inputs
        without ``input_ids``.

    Example::

        from transformers import AutoModel, AutoTokenizer
        from perfcallbacks.padding import predict_length_grouped
        tok = AutoTokenizer.from_pretrained(path); model = AutoModel.from_pretrained(path)
        mean_pool = lambda out, b: (out.last_hidden_state * b["attention_mask"][..., None]).sum(1) \\
            / b["attention_mask"].sum(1, keepdim=True)
        emb = predict_length_grouped(model, texts, tok, batch_size=32, output_fn=mean_pool)  # [len(texts), 384]
    """
    from perfcallbacks.measure import eval_mode, output_tensor

    size = _check_batch_size(batch_size)
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    features = _encode(inputs, tokenizer, max_length)
    lengths = [len(r) for r in features["input_ids"]]
    if device is None:
        device = model_device(model if isinstance(model, nn.Module) else None)
    results: list[torch.Tensor | None] = [None] * len(lengths)
    with eval_mode(model), torch.inference_mode():
        for rows in length_grouped_batches(lengths, size):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in _pad(features, rows, tokenizer, pad_to_multiple_of).items()}
            outputs = model(**batch)
            out = output_fn(outputs, batch) if output_fn is not None else output_tensor(outputs)
            padded = batch["input_ids"].shape[1]
            per_token = out.dim() >= 2 and out.shape[1] == padded and output_fn is None
            for j, i in enumerate(rows):
                results[i] = out[j, :lengths[i]] if per_token else out[j]
    shapes = {tuple(r.shape) for r in results if r is not None}
    if len(shapes) == 1:
        return torch.stack(results)  # type: ignore[arg-type]
    return results  # type: ignore[return-value]
