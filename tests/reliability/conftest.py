"""Fixtures for the reliability suite: a stable local device and a recorder of swallowed errors."""

from __future__ import annotations

import logging
import traceback

import pytest


@pytest.fixture
def local(cpu_profile):
    """The 2-core AVX2 CPU preset: hardware is faked at the probe, never in the checks."""
    return cpu_profile


@pytest.fixture
def swallowed(caplog):
    """Internal errors our hooks caught and logged at DEBUG (principle 1 hides them from training).

    Odd-but-valid runs must not even *need* that net: a test asserts ``swallowed() == []``.

    One failure is a documented limitation, not a bug, and is left out: a probe
    or fix that cannot feed the captured batch to ``forward`` (``call_model``
    guesses how; a nested batch that only the user's ``predict_step`` unpacks
    gives a ``TypeError`` at the call).
    """
    caplog.set_level(logging.DEBUG, logger="perfcallbacks")

    def records() -> list[str]:
        return [f"{r.getMessage()}: {r.exc_info[1]!r}" for r in caplog.records
                if r.name.startswith("perfcallbacks") and r.exc_info and not _cannot_feed_batch(r.exc_info)]

    return records


def _cannot_feed_batch(exc_info) -> bool:
    _, err, tb = exc_info
    if not isinstance(err, TypeError):
        return False
    frames = traceback.extract_tb(tb)
    names = [f.name for f in frames]
    return "call_model" in names and names[-1] in ("call_model", "_call_impl", "forward")
