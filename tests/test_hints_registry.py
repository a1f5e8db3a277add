"""The hint registry: every id from the contract, documented, validated suppression."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from perfcallbacks.hints import CATEGORIES, REGISTRY, SEVERITIES, validate_suppress

CONTRACT_IDS = {
    "gpu-unused", "gpus-idle", "distributed-single-process", "cpu-oversubscribed", "tensor-cores-idle",
    "half-on-cpu", "bf16-emulated", "dim-unaligned", "vocab-unaligned", "batch-size-unaligned",
    "seq-len-unaligned", "batch-size-small", "padding-waste", "static-padding", "dataloader-bottleneck",
    "pin-memory-off", "grad-in-inference", "int8-available", "autocast-available", "threads-untuned",
    "repeated-inputs", "smaller-model-available",
}


def test_registry_has_every_contract_id():
    assert CONTRACT_IDS <= set(REGISTRY)


@pytest.mark.parametrize("hint_id", sorted(REGISTRY))
def test_every_entry_is_documented(hint_id):
    spec = REGISTRY[hint_id]
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", spec.id)
    assert spec.category in CATEGORIES and spec.severity in SEVERITIES
    for text in (spec.title, spec.what, spec.why, spec.fix):
        assert len(text) > 10
    explained = spec.explain()
    for section in ("What it does", "Why it matters", "Fix", "Silence it", hint_id):
        assert section in explained


def test_suppress_typo_raises_with_close_matches():
    with pytest.raises(ValueError, match=r"suppress: unknown hint id 'paddng-waste'.*Did you mean 'padding-waste'"):
        validate_suppress(["paddng-waste"])


def test_suppress_rejects_a_bare_string():
    with pytest.raises(TypeError, match="not a single string"):
        validate_suppress("padding-waste")


def test_suppress_accepts_known_ids():
    assert validate_suppress(("padding-waste", "gpu-unused")) == {"padding-waste", "gpu-unused"}
    assert validate_suppress(None) == frozenset()


def test_readme_catalog_matches_registry():
    from perfcallbacks.docs import BEGIN, END

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    readme = readme[readme.index(BEGIN):readme.index(END)]
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", readme, re.MULTILINE))
    assert documented == set(REGISTRY), "regenerate the README table: python -m perfcallbacks.docs"
