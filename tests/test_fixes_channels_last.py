"""channels-last candidate builder: a converted copy, inputs converted by ``prepare``, the user's model untouched."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import torch
from torch import nn

from perfcallbacks import DeviceProfile
from perfcallbacks.fixes.candidate import Candidate
from perfcallbacks.fixes.channels_last import channels_last_candidate, to_channels_last
from perfcallbacks.measure import call_model, compare_times, fidelity
from perfcallbacks.report import FixResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "lightning"))
from image_classification import SmallResNet  # noqa: E402

from _tiny import snapshot  # noqa: E402

CPU = DeviceProfile.preset("cpu-avx2")


def test_candidate_is_a_channels_last_copy_with_near_exact_outputs():
    torch.manual_seed(0)
    net = SmallResNet(16).eval()
    before = snapshot(net)
    images = torch.randn(8, 3, 16, 16)
    cand = channels_last_candidate(net, images, profile=CPU)
    assert isinstance(cand, Candidate) and cand.fix_id == "channels-last" and cand.model is not net
    assert cand.details["conv2d_layers"] == 9 and cand.details["image_inputs"] == [[8, 3, 16, 16]]
    conv = cand.model.stem[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    prepared = cand.prepare(images)
    assert prepared.is_contiguous(memory_format=torch.channels_last) and images.is_contiguous()
    with torch.inference_mode():
        ref, new = call_model(net, images), call_model(cand.model, prepared)
    fid = fidelity(ref, new)
    assert not cand.tolerance.violations(fid), fid
    assert fid["max_abs_error"] < 1e-4
    times = compare_times({"nchw": lambda: call_model(net, images), "nhwc": lambda: call_model(cand.model, prepared)},
                          repeats=3)  # measured, not asserted: timing claims live in benchmarks/
    assert set(times) == {"nchw", "nhwc"}
    assert snapshot(net) == before and all(p.is_contiguous() for p in net.parameters())


def test_prepare_walks_dicts_tuples_and_namedtuples_without_touching_the_batch():
    Batch = collections.namedtuple("Batch", "pixels labels")
    x = torch.randn(2, 3, 4, 4)
    out = to_channels_last({"pixel_values": x, "labels": torch.zeros(2), "meta": "a"})
    assert out["pixel_values"].is_contiguous(memory_format=torch.channels_last) and out["meta"] == "a"
    pair = to_channels_last((x, torch.zeros(2)))
    assert isinstance(pair, tuple) and not pair[0].is_contiguous()
    named = to_channels_last(Batch(x, torch.zeros(2)))
    assert isinstance(named, Batch) and not named.pixels.is_contiguous()
    assert x.is_contiguous()
    ints = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    assert to_channels_last(ints) is ints  # only floating images


def test_skipped_without_conv_or_images_or_when_already_channels_last():
    no_conv = channels_last_candidate(nn.Linear(4, 2), torch.randn(2, 4))
    assert isinstance(no_conv, FixResult) and no_conv.status == "skipped" and "Conv2d" in no_conv.reason
    net = SmallResNet(8)
    no_images = channels_last_candidate(net, {"ids": torch.zeros(2, 5, dtype=torch.long)})
    assert no_images.status == "skipped" and "4-D" in no_images.reason
    done = SmallResNet(8).to(memory_format=torch.channels_last)
    already = channels_last_candidate(done, torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    assert already.status == "skipped" and "already" in already.reason


def test_a_model_that_cannot_be_copied_fails_cleanly():
    class Uncopyable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def __deepcopy__(self, memo):
            raise RuntimeError("holds a file handle")

    result = channels_last_candidate(Uncopyable(), torch.randn(1, 3, 8, 8))
    assert result.status == "failed" and "file handle" in result.reason
