"""Output that goes where the user's tools already print: progress bars, trackers, loggers.

* :func:`emit_text` / :func:`emit_report`: through the active progress bar's safe print
  (Lightning's TQDM bar ``print``, Lightning's rich console, transformers' tqdm via
  ``tqdm.write``), so a table never lands on a bar's line; plain ``print`` otherwise.
* :func:`progress_safe`: a context in which anything written to stdout/stderr (a warning)
  first clears the tqdm bars and redraws them after.
* :func:`log_to_lightning_loggers` / :func:`log_to_hf_trackers`: the hint table as text and
  the report JSON as an artifact, for the trackers that support it (others are skipped).
* :func:`hint_counts_for_log`: the per-step counts, only when there is something to report.

Nothing here raises into the user's run: a channel that fails falls back to ``print``, a
tracker that fails is skipped (logged at DEBUG).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfcallbacks.report import Report

log = logging.getLogger("perfcallbacks")

TEXT_TAG = "perf_hints"  # TensorBoard text tag / W&B key / MLflow artifact stem
METRIC_PREFIX = "perf_hints"
_TQDM_BARS = ("_train_progress_bar", "_val_progress_bar", "_test_progress_bar", "_predict_progress_bar")


# -- progress-bar-safe printing ------------------------------------------------------------------------
def _class_names(obj: Any) -> set[str]:
    return {cls.__name__ for cls in type(obj).__mro__}


def _lightning_rich_console(trainer: Any) -> Any:
    """The console of Lightning's ``RichProgressBar`` while its live display runs, else ``None``."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is None or "RichProgressBar" not in _class_names(bar):
        return None
    progress = getattr(bar, "progress", None)
    if progress is None or getattr(bar, "_progress_stopped", False) or not getattr(bar, "is_enabled", False):
        return None
    return getattr(progress, "console", None) or getattr(bar, "_console", None)


def _lightning_tqdm_bar(trainer: Any) -> Any:
    """Lightning's TQDM progress bar callback when one of its bars is on screen, else ``None``."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is None or "TQDMProgressBar" not in _class_names(bar):
        return None
    for name in _TQDM_BARS:
        inner = getattr(bar, name, None)
        if inner is not None and not getattr(inner, "disable", True):
            return bar
    return None


def _live_tqdm() -> Any:
    """The ``tqdm`` class when some tqdm bar is on screen (HF Trainer's, a user's loop), else ``None``."""
    module = sys.modules.get("tqdm")
    if module is None:  # never import tqdm only to print
        return None
    cls = getattr(module, "tqdm", None)
    instances = getattr(cls, "_instances", None)
    try:
        if instances and any(not getattr(bar, "disable", True) for bar in list(instances)):
            return cls
    except Exception:  # noqa: BLE001 - a weak set changing under us: no bar to protect
        return None
    return None


def channel(trainer: Any = None, framework: str = "torch") -> str:
    """Which channel :func:`emit_text` uses now: ``"rich"``, ``"lightning-tqdm"``, ``"tqdm"`` or ``"print"``.

    Example::

        >>> channel(None)
        'print'
    """
    if trainer is not None and framework in ("lightning", "pytorch_lightning"):
        if _lightning_rich_console(trainer) is not None:
            return "rich"
        if _lightning_tqdm_bar(trainer) is not None:
            return "lightning-tqdm"
    if _live_tqdm() is not None:
        return "tqdm"
    return "print"


def emit_text(text: str, *, trainer: Any = None, framework: str = "torch") -> str:
    """Print ``text`` without breaking the user's progress bar; returns the channel used.

    Lightning (``trainer`` given): the rich console of ``RichProgressBar`` (prints above the live
    display) or ``TQDMProgressBar.print`` (``tqdm.write``: clears the bar, writes, redraws).
    HF and plain loops: ``tqdm.write`` when a tqdm bar is on screen. Otherwise ``print`` to
    stdout. Never raises: a failing channel falls back to ``print``.

    Example::

        >>> emit_text("perfcallbacks: hello")
        perfcallbacks: hello
        'print'
    """
    try:
        used = channel(trainer, framework)
        if used == "rich":
            _lightning_rich_console(trainer).print(text, markup=False, highlight=False, soft_wrap=True)
        elif used == "lightning-tqdm":
            trainer.progress_bar_callback.print(text)
        elif used == "tqdm":
            # tqdm.write without its flush: stdout piped beside a stderr bar (2>&1 | tee) would
            # release the text after the bar's redraw, on the bar's line. Flush inside the clear.
            with _live_tqdm().external_write_mode(file=sys.stdout):
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
        else:
            print(text, flush=True)
        return used
    except Exception:  # noqa: BLE001 - principle 1
        log.debug("perfcallbacks: progress-bar-safe print failed; printing plainly", exc_info=True)
        try:
            print(text, flush=True)
        except Exception:  # noqa: BLE001 - a closed stdout: nothing left to do
            pass
        return "print"


def emit_report(report: Report, *, trainer: Any = None, framework: str = "torch", color: bool | None = None) -> str:
    """Render ``report`` for the channel :func:`emit_text` would use, and print it there.

    On a rich console the renderables go to that console (its width, its live display); else the
    text is rendered at the terminal's width (``COLUMNS`` / the tty), in colour when stdout is a
    terminal. The code to paste comes below the table, never folded. Returns the channel.
    """
    try:
        if channel(trainer, framework) == "rich":
            from perfcallbacks.render import print_rich

            print_rich(report, _lightning_rich_console(trainer))
            return "rich"
    except Exception:  # noqa: BLE001
        log.debug("perfcallbacks: rich console print failed", exc_info=True)
    from perfcallbacks.render import render_report, terminal_width

    return emit_text(render_report(report, color=color, width=terminal_width()), trainer=trainer,
                     framework=framework)


@contextlib.contextmanager
def progress_safe() -> Iterator[None]:
    """Inside, writes to stdout/stderr (e.g. a warning) first clear the tqdm bars; they are redrawn after.

    Example::

        >>> with progress_safe():
        ...     print("no bar is broken by this line")
        no bar is broken by this line
    """
    proxy = _rich_soft_wrap_stderr()
    if proxy is not None:  # a rich live display (RichProgressBar) owns stderr: print through it, unfolded
        previous, sys.stderr = sys.stderr, proxy
        try:
            yield
        finally:
            sys.stderr = previous
            try:
                proxy.flush()
            except Exception:  # noqa: BLE001
                log.debug("perfcallbacks: could not print through the rich console", exc_info=True)
        return
    cls = _live_tqdm()
    if cls is None:
        yield
        return
    try:
        manager = cls.external_write_mode(file=sys.stderr)
        manager.__enter__()
    except Exception:  # noqa: BLE001
        yield
        return
    try:
        yield
    finally:
        try:
            for stream in (sys.stderr, sys.stdout):  # what was written lands before the bars come back
                stream.flush()
            manager.__exit__(None, None, None)
        except Exception:  # noqa: BLE001
            log.debug("perfcallbacks: could not redraw the progress bars", exc_info=True)


class _RichSoftWrap(io.TextIOBase):
    """Collects what is written and prints it on a rich console with ``soft_wrap=True``: rich's own
    stderr proxy would fold a warning's fix code at the console width (newlines inside the code)."""

    def __init__(self, console: Any, file: Any) -> None:
        self._console, self._file, self._parts = console, file, []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        text, self._parts = "".join(self._parts), []
        if text:
            self._console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)

    def isatty(self) -> bool:
        return bool(getattr(self._file, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self._file.fileno()


def _rich_soft_wrap_stderr() -> _RichSoftWrap | None:
    stream = sys.stderr
    if type(stream).__name__ != "FileProxy" or not hasattr(stream, "rich_proxied_file"):
        return None
    console = getattr(stream, "_FileProxy__console", None)
    return None if console is None else _RichSoftWrap(console, stream.rich_proxied_file)


def unchanged_line(report: Report, report_path: str | os.PathLike | None = None) -> str:
    """The one line printed at fit end when nothing changed since the warm-up table.

    Example::

        >>> from perfcallbacks.report import Report
        >>> unchanged_line(Report(), "out/perf_hints.json")
        'perfcallbacks: nothing new since the table above (0 open hints); report: out/perf_hints.json'
    """
    where = f"; report: {report_path}" if report_path else ""
    count = len(report.open_hints)
    return f"perfcallbacks: nothing new since the table above ({count} open hint{'s' if count != 1 else ''}){where}"


def report_signature(report: Report) -> tuple:
    """What a table shows: compare two signatures to print a table only when something changed."""
    resolved = tuple(sorted((h.id, h.phase) for h, _ in report.resolved_hints))
    return (tuple(sorted((h.id, h.phase, h.severity) for h in report.open_hints)), resolved,
            tuple((f.id, f.status) for f in report.fixes), report.suppressed_count)


# -- trackers ----------------------------------------------------------------------------------------------
def hint_table_text(report: Report) -> str:
    """The hint table as Markdown (TensorBoard's text plugin, W&B and MLflow render it)."""
    from perfcallbacks.render import render_markdown

    return render_markdown(report)


def hint_rows(report: Report) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of open hints, for trackers that take tables (W&B)."""
    from perfcallbacks.render import sort_hints

    columns = ["severity", "id", "phase", "message", "fix", "impact"]
    rows = [[h.severity, h.id, h.phase, h.message, h.fix, h.impact] for h in sort_hints(report.open_hints)]
    return columns, rows


def hint_counts_for_log(report: Report, last: dict[str, float] | None = None) -> dict[str, float] | None:
    """Counts for a per-step log line, or ``None`` when there is nothing (new) to report.

    ``None`` when no open hint and no applied fix exist, or when the counts equal ``last``
    (what was logged before). Zero counts are left out. Log them through the framework's
    own API as a separate entry, never by adding keys to the framework's ``logs`` dict.

    Example::

        >>> from perfcallbacks.report import Report
        >>> hint_counts_for_log(Report()) is None
        True
    """
    hints = report.open_hints
    applied = sum(f.applied for f in report.fixes)
    if not hints and not applied:
        return None
    counts: dict[str, float] = {f"{METRIC_PREFIX}/count": float(len(hints))}
    for severity in ("info", "warning", "critical"):
        n = sum(h.severity == severity for h in hints)
        if n:
            counts[f"{METRIC_PREFIX}/{severity}"] = float(n)
    if applied:
        counts[f"{METRIC_PREFIX}/fixes_applied"] = float(applied)
    if last is not None and dict(last) == counts:
        return None
    return counts


def _report_file(report: Report, report_path: str | os.PathLike | None) -> Path | None:
    if report_path is not None and Path(report_path).is_file():
        return Path(report_path)
    return None


def log_to_lightning_loggers(loggers: Iterable[Any], report: Report, step: int, *,
                             report_path: str | os.PathLike | None = None) -> list[str]:
    """Send the hint table (text) and the report JSON (artifact) to each logger that supports it.

    TensorBoard: ``experiment.add_text``. W&B: ``log_text`` table + the JSON as an artifact.
    MLflow: ``log_text`` + ``log_artifact`` on the logger's run. Comet: ``log_text`` + ``log_asset``.
    Other loggers (CSV, ...) are skipped. Call on rank zero. Returns the names of the loggers
    that received something; never raises.
    """
    text = hint_table_text(report)
    path = _report_file(report, report_path)
    done = []
    for logger in loggers or ():
        names = _class_names(logger)
        try:
            if "TensorBoardLogger" in names:
                logger.experiment.add_text(TEXT_TAG, text, global_step=step)
            elif "WandbLogger" in names:
                columns, rows = hint_rows(report)
                logger.log_text(key=TEXT_TAG, columns=columns, data=rows, step=step)
                if path is not None:
                    _wandb_artifact(sys.modules.get("wandb"), logger.experiment, path)
            elif "MLFlowLogger" in names:
                client, run_id = logger.experiment, logger.run_id
                client.log_text(run_id, text, f"{TEXT_TAG}.md")
                if path is not None:
                    client.log_artifact(run_id, str(path))
            elif "CometLogger" in names:
                logger.experiment.log_text(text, step=step)
                if path is not None:
                    logger.experiment.log_asset(str(path))
            else:
                continue
            done.append(type(logger).__name__)
        except Exception:  # noqa: BLE001 - a tracker that fails is skipped
            log.debug("perfcallbacks: logger %s did not take the hint table", type(logger).__name__, exc_info=True)
    return done


def log_to_hf_trackers(callbacks: Iterable[Any], report: Report, step: int, *,
                       report_path: str | os.PathLike | None = None) -> list[str]:
    """The same for transformers' ``report_to`` integrations (the Trainer's ``callback_handler.callbacks``).

    ``TensorBoardCallback``: ``tb_writer.add_text`` (only while its writer is open: call before its
    ``on_train_end``). ``WandbCallback``: a ``wandb.Table`` and the JSON as an artifact.
    ``MLflowCallback``: ``mlflow.log_text`` + ``mlflow.log_artifact``. Uninitialised or other
    trackers are skipped. Returns the names of the callbacks that received something; never raises.
    """
    text = hint_table_text(report)
    path = _report_file(report, report_path)
    done = []
    for callback in callbacks or ():
        names = _class_names(callback)
        try:
            if "TensorBoardCallback" in names:
                writer = getattr(callback, "tb_writer", None)
                if writer is None:
                    continue
                writer.add_text(TEXT_TAG, text, global_step=step)
                flush = getattr(writer, "flush", None)
                if callable(flush):
                    flush()
            elif "WandbCallback" in names:
                wandb = getattr(callback, "_wandb", None)
                if wandb is None or not getattr(callback, "_initialized", False):
                    continue
                columns, rows = hint_rows(report)
                wandb.log({TEXT_TAG: wandb.Table(columns=columns, data=rows)})
                if path is not None:
                    _wandb_artifact(wandb, wandb.run, path)
            elif "MLflowCallback" in names:
                mlflow = getattr(callback, "_ml_flow", None)
                if mlflow is None or not getattr(callback, "_initialized", False):
                    continue
                mlflow.log_text(text, f"{TEXT_TAG}.md")
                if path is not None:
                    mlflow.log_artifact(str(path))
            else:
                continue
            done.append(type(callback).__name__)
        except Exception:  # noqa: BLE001
            log.debug("perfcallbacks: tracker %s did not take the hint table", type(callback).__name__,
                      exc_info=True)
    return done


def _wandb_artifact(wandb: Any, run: Any, path: Path) -> None:
    if wandb is None or run is None:
        return
    artifact = wandb.Artifact(TEXT_TAG, type="perf-hints")
    artifact.add_file(str(path))
    run.log_artifact(artifact)
