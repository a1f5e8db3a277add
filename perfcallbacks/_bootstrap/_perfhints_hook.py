"""Patch Lightning / transformers ``Trainer`` constructors when (and only when) they are imported.

Installed by our ``sitecustomize`` in processes started by ``perfhints run``
(gate: the ``PERFHINTS_RUN_CONFIG`` environment variable, a JSON object). A
meta path finder waits for the modules that define the trainers; once such a
module has executed, its ``Trainer.__init__`` is wrapped so that every trainer
the program creates (subclasses included) gets our callback, configured from
the command line. Trainers that already carry our callback are left alone.

This module is importable as the top-level ``_perfhints_hook`` (in the child)
and as ``perfcallbacks._bootstrap._perfhints_hook`` (in tests). It imports
nothing heavy at module level: the callbacks are imported only when a trainer
module has been imported, at which point torch is loaded anyway.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import sys
from typing import Any, Callable

ENV_VAR = "PERFHINTS_RUN_CONFIG"
MARK = "__perfhints_original__"  # attribute on our wrapper pointing at the original __init__

# Module that defines each trainer class -> (framework, class name).
TARGETS: dict[str, tuple[str, str]] = {
    "lightning.pytorch.trainer.trainer": ("lightning", "Trainer"),
    "pytorch_lightning.trainer.trainer": ("pytorch_lightning", "Trainer"),
    "transformers.trainer": ("hf", "Trainer"),
}

_config: dict[str, Any] | None = None
_counter = itertools.count()
_instrumented: list[tuple[Any, str]] = []  # (callback, part path) for the at-exit fallback
_atexit_registered = False


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"perfhints run: {message}\n")
    except Exception:  # noqa: BLE001
        pass


# -- configuration -----------------------------------------------------------------
def load_config(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The run configuration from the environment, or ``None`` when this process did not ask for it."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "")
    if not raw.strip():
        return None
    config = json.loads(raw)
    if not isinstance(config, dict):
        raise ValueError(f"{ENV_VAR} must hold a JSON object, got {type(config).__name__}")
    return config


def callback_kwargs(config: dict[str, Any], report_path: str | None) -> dict[str, Any]:
    """Keyword arguments shared by both callbacks, from the parent's validated options."""
    return {
        "auto_apply": bool(config.get("auto_apply", False)),
        "warmup_steps": int(config.get("warmup_steps", 20)),
        "target": config.get("target"),
        "suppress": tuple(config.get("suppress") or ()),
        "report_path": report_path,
        "latency_budget_ms": config.get("latency_budget_ms"),
        "verbose": bool(config.get("verbose", False)),
    }


def next_part_path(config: dict[str, Any], framework: str) -> str | None:
    """A report file of its own for each trainer; the parent merges them into one report."""
    parts = config.get("parts_dir")
    if not parts:
        return None
    return os.path.join(parts, f"{os.getpid()}-{next(_counter)}-{framework}.json")


# -- installation -------------------------------------------------------------------
class TrainerFinder:
    """Meta path finder: lets the real finders find a trainer module, then patches it after it executes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in TARGETS:
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, TrainerFinder):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module: Any) -> None:
            exec_module(module)  # errors of the framework's own import propagate unchanged
            patch_module(module)

        try:
            spec.loader.exec_module = exec_then_patch  # loader instances are per module
        except Exception:  # noqa: BLE001 - a loader we cannot wrap: import it unpatched
            _say(f"cannot instrument {name}: its loader cannot be wrapped")
        return spec


def install(config: dict[str, Any]) -> None:
    """Install the finder (once) and patch trainer modules imported before us (e.g. by a .pth file)."""
    global _config
    _config = config
    if not any(isinstance(f, TrainerFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, TrainerFinder())
    for name in TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            patch_module(module)


def install_from_env() -> bool:
    """Install when ``PERFHINTS_RUN_CONFIG`` is set; returns whether anything was installed."""
    config = load_config()
    if config is None:
        return False
    if config.get("validate_target"):
        validate_target(config)
    install(config)
    return True


def validate_target(config: dict[str, Any], exit: Callable[[int], Any] = os._exit) -> None:
    """``--target``, checked in the first Python process before the program's first line.

    Resolving a preset imports torch, which the ``perfhints run`` parent never does. An unknown
    name ends this process with status 2 and the presets' own message (close matches listed);
    once checked, descendants (torchrun ranks, workers) inherit a config that skips the check.
    """
    target = config.get("target")
    try:
        from perfcallbacks.device import resolve_target

        resolve_target(target, argument="--target")
    except ValueError as err:
        _say(str(err))
        sys.stderr.flush()
        exit(2)
        return
    config = dict(config, validate_target=False)
    os.environ[ENV_VAR] = json.dumps(config)


def patch_module(module: Any) -> None:
    """Wrap ``module.Trainer.__init__``; failures leave the trainer unpatched, never raise."""
    try:
        framework, class_name = TARGETS[module.__name__]
        cls = getattr(module, class_name)
        original = cls.__dict__.get("__init__")
        if original is None or hasattr(original, MARK):
            return
        inject = _inject_hf if framework == "hf" else _inject_lightning
        cls.__init__ = make_wrapper(original, inject, framework)
    except Exception as err:  # noqa: BLE001 - principle 1
        _say(f"could not instrument {getattr(module, '__name__', module)}: {err!r}")


def make_wrapper(original: Callable, inject: Callable, framework: str) -> Callable:
    """``__init__`` that adds our callback, then calls the original exactly once."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        late: Callable[[Any], None] | None = None
        try:
            args, kwargs, late = inject(original, self, args, kwargs, framework)
        except Exception as err:  # noqa: BLE001 - our failure must not stop the user's Trainer
            _say(f"not instrumenting this {framework} Trainer: {err!r}")
        original(self, *args, **kwargs)
        if late is not None:
            try:
                late(self)
            except Exception as err:  # noqa: BLE001
                _say(f"not instrumenting this {framework} Trainer: {err!r}")

    setattr(__init__, MARK, original)
    return __init__


# -- callbacks ------------------------------------------------------------------------
def callback_class(framework: str) -> type:
    """Our callback class for ``framework`` (imported now: the framework itself is already loaded)."""
    if framework == "hf":
        from perfcallbacks.adapters.hf import HFPerfHints

        return HFPerfHints
    if framework == "pytorch_lightning":
        return pl_callback_class()
    from perfcallbacks.adapters.lightning import PerfHintCallback

    return PerfHintCallback


def pl_callback_class() -> type:
    """``PerfHintCallback`` that is also a ``pytorch_lightning.Callback`` (the standalone package's
    Trainer checks callbacks against its own classes). Defined here by name so it pickles (DDP spawn)."""
    global PLPerfHintCallback
    cls = globals().get("PLPerfHintCallback")
    if cls is None:
        import pytorch_lightning

        from perfcallbacks.adapters.lightning import PerfHintCallback

        cls = type("PLPerfHintCallback", (PerfHintCallback, pytorch_lightning.Callback),
                   {"__module__": __name__, "__qualname__": "PLPerfHintCallback"})
        PLPerfHintCallback = cls
    return cls


def __getattr__(name: str) -> Any:
    # Unpickling in a spawned process looks the class up before anything created it.
    if name == "PLPerfHintCallback":
        return pl_callback_class()
    raise AttributeError(name)


def _is_ours(callback: Any, cls: type) -> bool:
    base = cls.__mro__[1] if cls.__name__ == "PLPerfHintCallback" else cls
    if isinstance(callback, type):  # HF accepts callback classes and instantiates them
        return issubclass(callback, base)
    return isinstance(callback, base)


def new_callback(framework: str) -> Any:
    config = _config or {}
    path = next_part_path(config, framework)
    callback = callback_class(framework)(**callback_kwargs(config, path))
    remember(callback, path)
    return callback


def remember(callback: Any, path: str | None) -> None:
    """Track a callback for the at-exit report (so a script that fails still shows its hints)."""
    global _atexit_registered
    if path is None:
        return
    _instrumented.append((callback, path))
    if not _atexit_registered:
        atexit.register(write_pending_reports)
        _atexit_registered = True


def _inject_lightning(original: Callable, trainer: Any, args: tuple, kwargs: dict, framework: str):
    cls = callback_class(framework)
    callbacks = kwargs.get("callbacks")
    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]  # a single Callback is allowed
    existing = [cb for cb in callbacks if _is_ours(cb, cls)]
    if existing:
        adopt(existing[0], framework)
        return args, kwargs, None
    kwargs = dict(kwargs, callbacks=[*callbacks, new_callback(framework)])
    return args, kwargs, None


def _inject_hf(original: Callable, trainer: Any, args: tuple, kwargs: dict, framework: str):
    import inspect  # not at module level: start-up of every instrumented process stays cheap

    cls = callback_class(framework)
    try:
        bound = inspect.signature(original).bind_partial(trainer, *args, **kwargs)
    except TypeError:
        bound = None  # let the original report the bad call; add ours afterwards
    if bound is not None:
        callbacks = list(bound.arguments.get("callbacks") or [])
        existing = [cb for cb in callbacks if _is_ours(cb, cls)]
        if existing:
            adopt(existing[0], framework)
            return args, kwargs, None
        bound.arguments["callbacks"] = [*callbacks, new_callback(framework)]
        return bound.args[1:], bound.kwargs, None

    def add_after_init(instance: Any) -> None:
        handler = getattr(instance, "callback_handler", None)
        if handler is not None and not any(_is_ours(cb, cls) for cb in handler.callbacks):
            instance.add_callback(new_callback(framework))

    return args, kwargs, add_after_init


def adopt(callback: Any, framework: str) -> None:
    """The program already adds our callback: keep it as configured, but show its hints at exit."""
    if isinstance(callback, type):
        return
    remember(callback, next_part_path(_config or {}, framework))


# -- at exit -------------------------------------------------------------------------------
def _rank_zero() -> bool:
    return os.environ.get("RANK", "0") in ("", "0") and os.environ.get("LOCAL_RANK", "0") in ("", "0")


def advisor_of(callback: Any) -> Any:
    """The callback's Advisor, or ``None`` when it has not seen a run yet."""
    for name in ("advisor", "_advisor"):
        try:
            advisor = getattr(callback, name, None)
        except Exception:  # noqa: BLE001 - a property that fails means nothing to report
            advisor = None
        if advisor is not None and hasattr(advisor, "report"):
            return advisor
    return None


def write_pending_reports() -> None:
    """At exit: write the report of every callback whose part file is not written yet.

    The callbacks write at the end of each fit/train; this covers programs that
    fail (or exit) before that, so their warm-up hints are still shown.
    """
    if not _rank_zero():
        return
    for callback, path in _instrumented:
        try:
            if os.path.exists(path):
                continue  # written by the callback itself: that one is complete
            advisor = advisor_of(callback)
            if advisor is None or getattr(advisor, "is_rank_zero", True) is False:
                continue
            advisor.report.save(path)
        except Exception as err:  # noqa: BLE001 - at exit, never turn the program's exit into a crash
            _say(f"could not write a report at exit: {err!r}")
