"""Every hint id has a registered check, and every check is registered for valid phases."""

from __future__ import annotations

from perfcallbacks.checks import CHECKS, checks_for
from perfcallbacks.hints import PHASES, REGISTRY


def test_every_hint_id_has_a_check():
    registered = {c.hint_id for c in CHECKS}
    missing = [hint_id for hint_id in REGISTRY if hint_id not in registered]
    assert not missing, f"hint ids without a check: {missing}"


def test_every_check_runs_in_some_phase_and_emits_its_own_id():
    for chk in CHECKS:
        assert chk.phases and set(chk.phases) <= set(PHASES), chk.name
        assert chk in checks_for(chk.phases[0])
        assert chk.hint_id in REGISTRY


def test_checks_are_pure_functions_of_an_empty_context(cpu_profile):
    # An empty context (nothing observed yet) must not crash a check nor make it fire on nothing.
    from perfcallbacks.context import RunContext

    for phase in PHASES:
        ctx = RunContext(local=cpu_profile, phase=phase)
        for chk in checks_for(phase):
            assert chk.fn(ctx) is None, chk.name
