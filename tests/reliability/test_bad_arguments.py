"""Bad arguments fail fast and clearly, the same way for the Advisor and both callbacks.

Each message must name the argument, repeat what was given and say what is allowed.
"""

from __future__ import annotations

import pytest

from perfcallbacks import Advisor


def _lightning():
    pytest.importorskip("lightning.pytorch")
    from perfcallbacks import PerfHintCallback

    return PerfHintCallback


def _hf():
    pytest.importorskip("transformers")
    from perfcallbacks import HFPerfHints

    return HFPerfHints


CONSTRUCTORS = {"Advisor": lambda: Advisor, "PerfHintCallback": _lightning, "HFPerfHints": _hf}

# (kwargs, exception type, fragments the message must contain: argument, what was given, what is allowed)
BAD = {
    "warmup-negative": ({"warmup_steps": -1}, ValueError, ["warmup_steps", "-1", "non-negative int"]),
    "warmup-float": ({"warmup_steps": 2.5}, TypeError, ["warmup_steps", "2.5", "non-negative int"]),
    "warmup-str": ({"warmup_steps": "20"}, TypeError, ["warmup_steps", "'20'", "non-negative int"]),
    "warmup-bool": ({"warmup_steps": True}, TypeError, ["warmup_steps", "True", "non-negative int"]),
    "target-unknown": ({"target": "a1000"}, ValueError, ["target", "'a1000'", "'a100'", "Known presets"]),
    "target-type": ({"target": 100}, TypeError, ["target", "int", "preset name", "DeviceProfile"]),
    "suppress-typo": ({"suppress": ["tensor-core-idle"]}, ValueError,
                      ["suppress", "'tensor-core-idle'", "Did you mean 'tensor-cores-idle'", "Known ids"]),
    "suppress-unknown": ({"suppress": ["padding-waste", "no-such-hint"]}, ValueError,
                         ["suppress", "'no-such-hint'", "Known ids"]),
    "suppress-string": ({"suppress": "padding-waste"}, TypeError, ["suppress", "'padding-waste'", "list"]),
    "latency-zero": ({"latency_budget_ms": 0}, ValueError, ["latency_budget_ms", "0", "positive"]),
    "latency-negative": ({"latency_budget_ms": -5.0}, ValueError, ["latency_budget_ms", "-5.0", "positive"]),
    "latency-nan": ({"latency_budget_ms": float("nan")}, ValueError, ["latency_budget_ms", "nan", "positive"]),
    "latency-str": ({"latency_budget_ms": "10"}, TypeError, ["latency_budget_ms", "'10'", "positive"]),
    "auto-apply-str": ({"auto_apply": "yes"}, TypeError, ["auto_apply", "'yes'", "True or False"]),
    "verbose-int": ({"verbose": 1}, TypeError, ["verbose", "1", "True or False"]),
    "report-path-type": ({"report_path": 3}, TypeError, ["report_path", "int", "file path"]),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("owner", list(CONSTRUCTORS))
def test_bad_argument_is_rejected_with_a_clear_message(owner, case):
    cls = CONSTRUCTORS[owner]()
    kwargs, error, fragments = BAD[case]
    with pytest.raises(error) as info:
        cls(**kwargs)
    message = str(info.value)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{owner}({kwargs}) message {message!r} lacks {missing}"


@pytest.mark.parametrize("owner", list(CONSTRUCTORS))
def test_report_path_that_is_a_directory(owner, tmp_path):
    cls = CONSTRUCTORS[owner]()
    for given in (tmp_path, str(tmp_path)):
        with pytest.raises(ValueError) as info:
            cls(report_path=given)
        message = str(info.value)
        assert "report_path" in message and str(tmp_path) in message and "perf_hints.json" in message


@pytest.mark.parametrize("owner", list(CONSTRUCTORS))
def test_good_arguments_are_accepted(owner, tmp_path):
    """The other side of the contract: every allowed form constructs without error."""
    from perfcallbacks import DeviceProfile

    cls = CONSTRUCTORS[owner]()
    cls(warmup_steps=0, target=None, suppress=(), report_path=None, latency_budget_ms=None)
    cls(warmup_steps=3, target="a100", suppress=["padding-waste", "dim-unaligned"],
        report_path=tmp_path / "sub" / "r.json", latency_budget_ms=12.5, auto_apply=True, verbose=False)
    cls(target=DeviceProfile.preset("t4"), suppress=set(), report_path=str(tmp_path / "r.json"), latency_budget_ms=1)


def test_advisor_model_must_be_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module or None, got str"):
        Advisor("bert-base-uncased")
