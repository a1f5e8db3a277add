"""``perfhints run`` start-up hook: install the trainer patches, then chain to the real sitecustomize.

Python imports the first ``sitecustomize`` on ``sys.path`` at start-up; ours is
first only in processes launched by ``perfhints run`` (and their children, which
inherit ``PYTHONPATH``). It must never fail and never import heavy modules.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _install() -> None:
    try:
        import _perfhints_hook

        _perfhints_hook.install_from_env()
    except Exception as err:  # noqa: BLE001 - never break the user's program at start-up
        # e.g. another interpreter without perfcallbacks inherited our PYTHONPATH
        if os.environ.get("PERFHINTS_RUN_CONFIG"):
            sys.stderr.write(f"perfhints run: instrumentation disabled in this process: {err}\n")


def _chain() -> None:
    """Run the sitecustomize we shadow (distro or venv one), as if we were not here."""
    try:
        import importlib.machinery
        import importlib.util

        path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - same as Python: a failing sitecustomize is reported, not fatal
        sys.stderr.write(f"Error in sitecustomize (chained by perfhints run): {err!r}\n")


_install()
_chain()
