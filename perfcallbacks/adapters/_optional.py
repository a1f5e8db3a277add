"""Import an optional framework, failing with the install command in the message."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module} is needed for this part of perfcallbacks but is not installed: "
            f"pip install 'perfcallbacks[{extra}]' (or pip install {package})"
        ) from err
