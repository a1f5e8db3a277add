"""Every ``>>>`` example in the package runs as part of ``make test``.

A test module here rather than ``--doctest-modules`` on ``perfcallbacks/``: the
examples then run under ``tests/conftest.py`` (threads, matmul precision and the
environment restored; a fresh decision cache per example, so a guarded fix never
reads or writes ``~/.cache/perfcallbacks``), ``_bootstrap/sitecustomize.py`` is
never imported (importing it re-runs the interpreter's own sitecustomize), and
a module whose optional framework is missing is skipped with that reason.
Option flags match pytest's doctest default (``ELLIPSIS``).
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

import perfcallbacks

PACKAGE_DIR = Path(perfcallbacks.__file__).parent
# Start-up hook of `perfhints run`: importing it runs code (chains the real sitecustomize), so never here.
NEVER_IMPORTED = {"perfcallbacks._bootstrap.sitecustomize"}
# Extras a module may need; anything else that fails to import is a failure, not a skip.
OPTIONAL = {"lightning", "pytorch_lightning", "lightning_fabric", "transformers", "accelerate", "rich", "onnx",
            "onnxruntime", "onnxscript", "torchao", "tqdm"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_with_examples() -> list[str]:
    """Every package module whose source holds a ``>>>`` line (found without importing anything)."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = _module_name(path)
        if name in NEVER_IMPORTED:
            continue
        if any(line.lstrip().startswith(">>>") for line in path.read_text(encoding="utf-8").splitlines()):
            names.append(name)
    return names


MODULES = modules_with_examples()


def test_the_examples_are_found():
    # The selection is a text scan: if it found nothing the parametrised test below would pass on nothing.
    assert len(MODULES) >= 20 and "perfcallbacks.hints" in MODULES and "perfcallbacks.fixes.pipeline" in MODULES
    assert not NEVER_IMPORTED & set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name: str):
    try:
        module = importlib.import_module(name)
    except ImportError as err:
        if (err.name or "").split(".")[0] in OPTIONAL:
            pytest.skip(f"{name} needs {err.name}, not installed")
        raise
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    # Lines with >>> that the finder does not see (a docstring on an object from another module, a
    # comment) would silently not run: every module selected must yield examples.
    assert tests, f"{name} has '>>>' lines but no doctest the finder collects"
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}:\n{out.getvalue()}"
