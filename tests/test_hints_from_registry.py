"""Fire / quiet / suppress for every registered hint, driven by its fixture in ``hint_fixtures.py``.

A hint registered without a fixture, a check, or its docs fails here: that is what keeps the triple
from being written (or forgotten) by hand for each new hint.
"""

from __future__ import annotations

import pytest

from hint_fixtures import FIXTURES, HintFixture
from perfcallbacks import Advisor
from perfcallbacks.checks import CHECKS
from perfcallbacks.hints import REGISTRY, Hint

IDS = sorted(REGISTRY)
CHECK_OF = {c.hint_id: c for c in CHECKS}


def _hints(hint_id: str, result: object) -> list[Hint]:
    found = [] if result is None else [result] if isinstance(result, Hint) else list(result)  # type: ignore[call-overload]
    return [h for h in found if h.id == hint_id]


def _fixture(hint_id: str) -> HintFixture:
    if hint_id not in FIXTURES:
        pytest.fail(f"{hint_id!r} is registered but has no entry in tests/hint_fixtures.py (fire and quiet facts)")
    return FIXTURES[hint_id]


def test_every_fixture_is_a_registered_hint():
    assert sorted(set(FIXTURES) - set(REGISTRY)) == []


@pytest.mark.parametrize("hint_id", IDS)
def test_registered_hint_has_check_fixture_and_docs(hint_id):
    fixture = _fixture(hint_id)
    assert hint_id in CHECK_OF, f"{hint_id!r} has no @check"
    assert fixture.phase in CHECK_OF[hint_id].phases, f"{hint_id!r}: its check does not run in {fixture.phase}"
    spec = REGISTRY[hint_id]
    for part in ("title", "what", "why", "fix"):
        assert len(getattr(spec, part).strip()) >= 10, f"{hint_id!r}: {part} docs missing"
    assert fixture.evidence, f"{hint_id!r}: the fixture names no evidence the firing context must produce"


@pytest.mark.parametrize("hint_id", IDS)
def test_fires_on_its_firing_facts(hint_id):
    fixture = _fixture(hint_id)
    ctx = fixture.fire()
    ctx.phase = fixture.phase
    hints = _hints(hint_id, CHECK_OF[hint_id].fn(ctx))
    assert len(hints) == 1, f"{hint_id!r} did not fire on its firing facts"
    hint = hints[0]
    assert hint.phase == fixture.phase and hint.message and hint.fix
    for key, value in fixture.evidence.items():
        got = hint.evidence.get(key, "<missing>")
        assert got == (pytest.approx(value) if isinstance(value, float) else value), f"{hint_id!r} evidence {key}"


@pytest.mark.parametrize("hint_id", IDS)
def test_quiet_on_its_quiet_facts(hint_id):
    fixture = _fixture(hint_id)
    ctx = fixture.quiet()
    ctx.phase = fixture.phase
    assert _hints(hint_id, CHECK_OF[hint_id].fn(ctx)) == []


@pytest.mark.parametrize("hint_id", IDS)
@pytest.mark.parametrize("suppressed", [False, True])
def test_suppress_keeps_it_out_of_the_open_hints(hint_id, suppressed):
    # Through the Advisor's own bookkeeping, on the fixture's facts (gathering is what _judge skips).
    fixture = _fixture(hint_id)
    ctx = fixture.fire()
    ctx.phase = fixture.phase
    adv = Advisor(warn=False, local=ctx.local, suppress=[hint_id] if suppressed else [])
    adv.context = ctx
    adv._judge(fixture.phase)
    assert (hint_id in adv.hints) is not suppressed
    assert (hint_id in adv.suppressed_hints) is suppressed
    if suppressed:
        assert adv.suppressed_hints[hint_id].suppressed


@pytest.mark.parametrize("hint_id", IDS)
def test_fired_hint_carries_the_evidence_its_spec_promises(hint_id):
    fixture = _fixture(hint_id)
    ctx = fixture.fire()
    ctx.phase = fixture.phase
    (hint,) = _hints(hint_id, CHECK_OF[hint_id].fn(ctx))
    missing = [key for key in REGISTRY[hint_id].evidence if key not in hint.evidence]
    assert not missing, f"{hint_id!r} promises evidence keys it did not produce: {missing}"


def test_fix_ids_on_specs_agree_with_fix_resolves():
    from perfcallbacks.report import FIX_RESOLVES

    by_spec = {(spec.fix_id, hint_id) for hint_id, spec in REGISTRY.items() if spec.fix_id}
    by_report = {(fix_id, hint_id) for fix_id, entries in FIX_RESOLVES.items() for hint_id, _ in entries}
    assert by_spec == by_report


def test_registry_and_suppress_validation_load_without_torch():
    # `perfhints run` validates suppress ids in a parent process that must not pay for importing torch.
    import subprocess
    import sys

    code = ("import sys; from perfcallbacks.hints import REGISTRY, validate_suppress; "
            "validate_suppress(['padding-waste']); n = len(REGISTRY); "
            "print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(REGISTRY)), "False"]


def test_a_hint_id_registered_twice_or_in_an_unknown_category_is_rejected():
    from dataclasses import replace

    from perfcallbacks.hints import HintRegistry

    registry, spec = HintRegistry(), REGISTRY["gpu-unused"]
    registry.register(spec)
    registry.register(spec)  # the same spec again (a module re-imported) is harmless
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(replace(spec, title="another hint under the same id"))
    with pytest.raises(ValueError, match="unknown category"):
        registry.register(replace(spec, id="new-hint", category="misc"))
