"""A module imported on first use, so that the hint registry (checks included) loads without torch.

``perfhints run`` / ``perfhints explain`` validate and document hint ids in a parent process that
never needs torch (importing it costs seconds); the modules the checks import name ``torch`` through
:func:`lazy_module`, and torch loads the first time a check, probe or profile actually uses it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:  # only called for attributes not set in __init__
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> ModuleType:
    """``name`` as a stand-in whose attributes import the module on first access.

    Example::

        >>> math = lazy_module("math")
        >>> math.sqrt(4.0)
        2.0
    """
    return _LazyModule(name)  # type: ignore[return-value]
