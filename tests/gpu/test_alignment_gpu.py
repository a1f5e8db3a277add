"""On a real GPU: the alignment hints fire with the right evidence on fp16 CUDA models, and stay quiet when aligned.

Their impacts against measured slowdowns (±25%) are claims of the GPU
benchmarks (``benchmarks/gpu/run_gpu.py``, section ``alignment``).
"""

from __future__ import annotations

import pytest
import torch

from perfcallbacks import Advisor
from scenarios import bert_encoder, find_hint, mlp, tiny_lm, token_loader, vector_loader

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::perfcallbacks.hints.PerfHintWarning")]


def _setup_hint(model, hint_id):
    return find_hint(Advisor(model, warn=False).analyze("setup"), hint_id)


@pytest.mark.parametrize("width", [767, 770])
def test_dim_unaligned_fires_for_fp16_widths_off_the_multiple_of_8(cuda, width):
    hint = _setup_hint(mlp(width, 4, device=cuda, dtype=torch.float16), "dim-unaligned")
    assert hint is not None
    assert hint.evidence["alignment"] == 8 and hint.evidence["dtype"] == "fp16"
    below, above = hint.evidence["widths"][str(width)]
    assert below % 8 == 0 and above % 8 == 0 and below < width < above
    assert hint.evidence["unaligned_flop_share"] == pytest.approx(1.0)
    assert hint.impact is not None and hint.impact > 1


@pytest.mark.parametrize("width", [768, 776])
def test_dim_unaligned_quiet_for_multiples_of_8(cuda, width):
    assert _setup_hint(mlp(width, 4, device=cuda, dtype=torch.float16), "dim-unaligned") is None


def test_vocab_unaligned_fires_on_a_30522_lm_head(cuda):
    hint = _setup_hint(tiny_lm(30522, device=cuda, dtype=torch.float16), "vocab-unaligned")
    assert hint is not None
    assert hint.evidence["vocab_size"] == 30522 and hint.evidence["suggested"] == 30528
    assert hint.evidence["layer"] == "lm_head"


def test_vocab_unaligned_quiet_on_30528(cuda):
    assert _setup_hint(tiny_lm(30528, device=cuda, dtype=torch.float16), "vocab-unaligned") is None


def test_batch_size_unaligned_fires_on_a_cuda_run_with_batch_127(cuda):
    model = mlp(256, 2, device=cuda, dtype=torch.float16)
    hint = find_hint(Advisor(model, vector_loader(254, 256, batch_size=127), warn=False).analyze(),
                     "batch-size-unaligned")
    assert hint is not None
    assert hint.evidence["batch_size"] == 127 and hint.evidence["suggested"] == [120, 128]


def test_batch_size_unaligned_quiet_at_128(cuda):
    model = mlp(256, 2, device=cuda, dtype=torch.float16)
    report = Advisor(model, vector_loader(256, 256, batch_size=128), warn=False).analyze()
    assert find_hint(report, "batch-size-unaligned") is None


@pytest.mark.parametrize("seq, fires", [(127, True), (128, False)])
def test_seq_len_unaligned_on_token_batches(cuda, seq, fires):
    pytest.importorskip("transformers")
    enc = bert_encoder("sdpa", hidden=64, layers=1, heads=2, intermediate=128, device=cuda, dtype=torch.float16)
    report = Advisor(enc, token_loader(32, seq, batch_size=8), warn=False).analyze()
    hint = find_hint(report, "seq-len-unaligned")
    assert (hint is not None) == fires
    if fires:
        assert set(hint.evidence["seq_lens"]) == {seq} and hint.evidence["unaligned_share"] == 1.0
