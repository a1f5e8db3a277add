"""`import perfcallbacks` works with only torch: Lightning and transformers are optional."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCK = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"lightning", "pytorch_lightning", "transformers", "accelerate"}:
                raise ImportError(f"blocked {name}")
    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


def test_core_imports_without_frameworks():
    result = _run(
        """
        import perfcallbacks
        from perfcallbacks import Advisor, DeviceProfile, Hint, Report, PerfHintWarning
        import torch
        r = Advisor(torch.nn.Linear(8, 8), target="a100", warn=False).analyze()
        assert "lightning" not in sys.modules and "transformers" not in sys.modules
        print("ok", r.hint_ids)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_adapter_without_framework_names_the_install_command():
    result = _run(
        """
        try:
            from perfcallbacks import PerfHintCallback
        except ImportError as err:
            print("ERR", err)
        """
    )
    assert "pip install" in result.stdout, result.stdout + result.stderr
