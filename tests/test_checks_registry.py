"""Every hint id has a registered check, and every check is registered for valid phases."""

from __future__ import annotations

import types

from perfcallbacks.checks import CHECKS, checks_for
from perfcallbacks.hints import PHASES, REGISTRY, HintSpec


def test_every_hint_id_has_a_check():
    registered = {c.hint_id for c in CHECKS}
    missing = [hint_id for hint_id in REGISTRY if hint_id not in registered]
    assert not missing, f"hint ids without a check: {missing}"


def hint_ids_built_by(fn: types.FunctionType, seen: set | None = None) -> set[str]:
    """Hint ids a check's code can build a hint of: registry-id string constants (``REGISTRY["x"]``,
    ``spec("x")``) and module-level :class:`HintSpec` objects it names, following the helper functions of
    its own module it calls."""
    seen = set() if seen is None else seen
    if fn in seen:
        return set()
    seen.add(fn)
    found: set[str] = set()

    def walk(code: types.CodeType) -> None:
        for const in code.co_consts:
            if isinstance(const, str) and const in REGISTRY:
                found.add(const)
            elif isinstance(const, types.CodeType):
                walk(const)  # comprehensions, nested functions
        for name in code.co_names:
            value = fn.__globals__.get(name)
            if isinstance(value, HintSpec):
                found.add(value.id)
            elif isinstance(value, types.FunctionType) and value.__module__ == fn.__module__:
                found.update(hint_ids_built_by(value, seen))

    walk(fn.__code__)
    return found


def test_every_check_runs_in_some_phase_and_emits_its_own_id():
    for chk in CHECKS:
        assert chk.phases and set(chk.phases) <= set(PHASES), chk.name
        assert all(chk in checks_for(phase) for phase in chk.phases), chk.name
        # Its own id and no other: a check copied from a neighbour and left building the neighbour's
        # hint would report under the wrong id (and its suppress= would not silence it).
        assert hint_ids_built_by(chk.fn) == {chk.hint_id}, chk.name


def test_a_check_building_another_hint_is_caught():
    from perfcallbacks.hints import Hint

    def copied(ctx) -> Hint | None:
        return REGISTRY["gpu-unused"].make(ctx.phase, "m", "f")

    # registered as @check(GPUS_IDLE, ...), this is what the test above would reject
    assert hint_ids_built_by(copied) == {"gpu-unused"} != {"gpus-idle"}


def test_checks_are_pure_functions_of_an_empty_context(cpu_profile):
    # An empty context (nothing observed yet) must not crash a check nor make it fire on nothing.
    from perfcallbacks.context import RunContext

    for phase in PHASES:
        ctx = RunContext(local=cpu_profile, phase=phase)
        for chk in checks_for(phase):
            assert chk.fn(ctx) is None, chk.name
