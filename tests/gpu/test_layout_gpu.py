"""On a real GPU: the second-round hints (DESIGN.md) on a conv net, an HF encoder and large Linear layers.

Each test is gated on its hint landing (``needs_hint``): skipped, naming what
is missing, until the id is registered and a check emits it. Whether the
measured ones fire (channels-last-off) and the ``channels-last`` / ``sdpa``
fixes' speedups are claims of the GPU benchmarks (section ``layout``).
"""

from __future__ import annotations

import pytest
import torch

from perfcallbacks import Advisor, DeviceProfile
from scenarios import bert_encoder, conv_net, find_hint, image_loader, mlp, token_loader

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::perfcallbacks.hints.PerfHintWarning")]


def _fit_and_predict(lit, loader, **trainer_kw):
    """Every hint from a short fit and a predict of the same module (setup, warm-up and inference phases)."""
    pytest.importorskip("lightning")
    from lit_models import quiet_trainer
    from perfcallbacks import PerfHintCallback

    ids = {}
    for run in ("fit", "predict"):
        cb = PerfHintCallback(verbose=False, warmup_steps=6)
        trainer = quiet_trainer(accelerator="cuda", devices=1, max_steps=8, callbacks=[cb], **trainer_kw)
        getattr(trainer, run)(lit, loader)
        ids.update({h.id: h for h in cb.advisor.report.hints})
    return ids


def _conv_run(*, benchmark: bool, channels_last: bool = False, precision: str = "32-true"):
    from lit_models import LitClassifier

    return _fit_and_predict(LitClassifier(conv_net(channels_last=channels_last)),
                            image_loader(128, batch_size=32, size=64), benchmark=benchmark, precision=precision)


@pytest.mark.needs_hint("cudnn-benchmark-off")
def test_cudnn_benchmark_off_fires_on_a_fixed_shape_conv_fit():
    hint = _conv_run(benchmark=False).get("cudnn-benchmark-off")
    assert hint is not None
    assert hint.category == "device"


@pytest.mark.needs_hint("cudnn-benchmark-off")
def test_cudnn_benchmark_off_quiet_with_benchmark_true():
    assert "cudnn-benchmark-off" not in _conv_run(benchmark=True)
    # Lightning's benchmark=True is process-wide; the autouse fixture puts it back.


@pytest.mark.needs_hint("channels-last-off")
def test_channels_last_off_quiet_for_a_channels_last_model():
    hints = _conv_run(benchmark=True, channels_last=True, precision="bf16-mixed")
    assert "channels-last-off" not in hints


@pytest.mark.needs_hint("channels-last-off")
def test_channels_last_off_quiet_without_convolutions():
    from lit_models import LitClassifier
    from scenarios import vector_loader

    hints = _fit_and_predict(LitClassifier(mlp(256, 3, out=8)), vector_loader(256, 256, batch_size=32),
                             precision="bf16-mixed")
    assert "channels-last-off" not in hints


def _encoder_hints(attn: str):
    pytest.importorskip("transformers")
    model = bert_encoder(attn, hidden=256, layers=2, heads=4, intermediate=1024, device="cuda")
    loader = token_loader(64, 128, batch_size=16)
    advisor = Advisor(model, loader, warn=False)
    advisor.analyze()
    batch = {k: v.cuda() for k, v in next(iter(loader)).items()}
    advisor.probe_inference(model, batch)
    return {h.id: h for h in advisor.report.hints}


@pytest.mark.needs_hint("attention-eager")
def test_attention_eager_fires_on_an_eager_bert():
    hint = _encoder_hints("eager").get("attention-eager")
    assert hint is not None and hint.category == "model"


@pytest.mark.needs_hint("attention-eager")
def test_attention_eager_quiet_on_sdpa():
    assert "attention-eager" not in _encoder_hints("sdpa")


@pytest.mark.needs_hint("fp8-eligible")
def test_fp8_eligible_on_large_linear_layers():
    large = mlp(8192, 4, device="cuda", dtype=torch.bfloat16)
    hint = find_hint(Advisor(large, warn=False).analyze(), "fp8-eligible")
    if DeviceProfile.detect().is_fast("fp8"):
        assert hint is not None and hint.category == "precision"
    else:
        assert hint is None, "fp8-eligible on a device without fast FP8"


@pytest.mark.needs_hint("fp8-eligible")
def test_fp8_eligible_quiet_on_small_layers():
    small = mlp(256, 2, device="cuda", dtype=torch.bfloat16)
    assert find_hint(Advisor(small, warn=False).analyze(), "fp8-eligible") is None
