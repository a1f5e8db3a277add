"""Output through the user's tools: progress bars (real fits, captured at 80 columns), trackers, log counts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from perfcallbacks import output
from perfcallbacks.hints import REGISTRY
from perfcallbacks.report import FixResult, Report

SCRIPTS = Path(__file__).parent / "launch_scripts"
BAR = re.compile(r"it/s\]|s/it\]|\d+/\d+ \[|Epoch 0:|━")
TABLE_MARKS = ("perfcallbacks (", "open hint", "To fix (paste", "[padding-waste]", "perfcallbacks' own cost", "PerfHintWarning",
               "LengthGroupedBatchSampler")
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen(stream: str, width: int = 80) -> list[str]:
    """What a terminal of ``width`` columns shows after ``stream``: \\r, \\n, \\b, cursor up/down,
    erase-line and autowrap; other escape sequences (colour, cursor visibility) are dropped."""
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0

    def cell_row(r: int) -> list[str]:
        while len(rows) <= r:
            rows.append([])
        return rows[r]

    while i < len(stream):
        ch = stream[i]
        if ch == "\x1b":
            m = _CSI.match(stream, i)
            if not m:
                i += 1
                continue
            arg, cmd = m.groups()
            n = int(arg) if arg.isdigit() else 1
            if cmd == "A":
                row = max(0, row - n)
            elif cmd == "B":
                row += n
            elif cmd == "G":
                col = n - 1
            elif cmd == "K":
                line = cell_row(row)
                mode = int(arg) if arg.isdigit() else 0
                if mode == 2:
                    line.clear()
                elif mode == 0:
                    del line[col:]
            i = m.end()
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " ":
            if col >= width:  # autowrap
                row, col = row + 1, 0
            line = cell_row(row)
            while len(line) < col:
                line.append(" ")
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return ["".join(r).rstrip() for r in rows]


def shared_lines(lines: list[str]) -> list[str]:
    """Screen lines that show a progress bar and our table or warning at once."""
    return [line for line in lines if BAR.search(line) and any(mark in line for mark in TABLE_MARKS)]


def test_screen_emulator_sees_a_collision_and_a_clean_overwrite():
    assert shared_lines(screen("Epoch 0:  50%|##   | 3/6 [00:00<00:00, 6.5it/s]1 open hint\n")) != []
    assert shared_lines(screen("Epoch 0:  50%|##   | 3/6 [00:00, 6.5it/s]\r" + " " * 60 + "\r1 open hint\n")) == []
    assert screen("a\x1b[2K\rb\n", 80) == ["b"]
    assert screen("x" * 85, 80) == ["x" * 80, "x" * 5]


def run_progress(mode: str, tmp_path: Path, *extra: str) -> tuple[str, str]:
    env = dict(os.environ, COLUMNS="80", LINES="40", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="default")
    env.pop("NO_COLOR", None)
    argv = [sys.executable, str(SCRIPTS / "progress_output.py"), mode]
    if mode == "hf":
        argv.append(str(tmp_path / "hf_out"))
    result = subprocess.run([*argv, *extra], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)
    code = next(line[5:] for line in plain.splitlines() if line.startswith("CODE="))
    return result.stdout, code


def _assert_clean(stream: str, code: str) -> None:
    lines = screen(stream, width=80)
    assert shared_lines(lines) == [], "\n".join(shared_lines(lines))
    assert any(BAR.search(line) for line in lines), "no progress bar was drawn: the test saw nothing"
    assert "1 open hint" in stream
    # paste-able: the code is one unbroken line of the stream (the terminal may soft-wrap it)
    raw = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", part) for part in re.split(r"[\r\n]", stream)]
    assert f"    {code}" in raw, "fix code was broken or folded"


@pytest.mark.slow
def test_lightning_tqdm_bar_at_80_columns(tmp_path):
    stream, code = run_progress("lightning", tmp_path)
    _assert_clean(stream, code)


@pytest.mark.slow
def test_plain_print_shares_the_bar_line_which_the_check_detects(tmp_path):
    """The control: printing the table straight to stdout (the old way) lands on the bar's line."""
    stream, _ = run_progress("lightning", tmp_path, "--plain-print")
    assert shared_lines(screen(stream, width=80)) != []


@pytest.mark.slow
def test_lightning_rich_bar_at_80_columns(tmp_path):
    pytest.importorskip("rich")
    stream, code = run_progress("lightning-rich", tmp_path)
    _assert_clean(stream, code)


@pytest.mark.slow
def test_hf_tqdm_bar_at_80_columns(tmp_path):
    stream, code = run_progress("hf", tmp_path)
    _assert_clean(stream, code)


# -- channels, in process -------------------------------------------------------------------------------
def _report(**kw) -> Report:
    hint = REGISTRY["padding-waste"].make("warmup", "61% padding.", "DataCollatorWithPadding(tok)", impact=2.4)
    return Report(framework="lightning", device={"kind": "cpu", "name": "x"}, hints=[hint], **kw)


def test_plain_channel_without_bars(capsys):
    assert output.emit_text("hello") == "print"
    assert capsys.readouterr().out == "hello\n"


def test_tqdm_channel_when_a_bar_is_live(capsys):
    tqdm = pytest.importorskip("tqdm")
    bar = tqdm.tqdm(total=3, file=sys.stderr)
    try:
        assert output.channel() == "tqdm"
        assert output.emit_text("table line") == "tqdm"
    finally:
        bar.close()
    assert "table line\n" in capsys.readouterr().out
    assert output.channel() == "print"


def test_lightning_tqdm_channel_uses_the_bars_print():
    from lightning.pytorch.callbacks import TQDMProgressBar

    printed = []

    class Bar(TQDMProgressBar):
        def print(self, *args, **kwargs):
            printed.append(args)

    bar = Bar()
    bar._train_progress_bar = types.SimpleNamespace(disable=False)
    trainer = types.SimpleNamespace(progress_bar_callback=bar)
    assert output.emit_text("t", trainer=trainer, framework="lightning") == "lightning-tqdm"
    assert printed == [("t",)]
    bar._train_progress_bar.disable = True  # closed at train end: Lightning's print would drop the text
    assert output.channel(trainer, "lightning") == "print"


def test_a_failing_channel_falls_back_to_print(capsys):
    class Broken:
        @property
        def progress_bar_callback(self):
            raise RuntimeError("boom")

    assert output.emit_text("still shown", trainer=Broken(), framework="lightning") == "print"
    assert "still shown" in capsys.readouterr().out


def test_unchanged_line_and_signature():
    report = _report()
    assert output.report_signature(report) == output.report_signature(_report())
    changed = _report(fixes=[FixResult("threads", "applied", "x")])
    assert output.report_signature(report) != output.report_signature(changed)
    assert "nothing new" in output.unchanged_line(report, "r.json") and "1 open hint)" in output.unchanged_line(report)


# -- trackers --------------------------------------------------------------------------------------------
def test_hint_counts_only_when_there_is_something_new():
    assert output.hint_counts_for_log(Report()) is None
    counts = output.hint_counts_for_log(_report())
    assert counts == {"perf_hints/count": 1.0, "perf_hints/warning": 1.0}  # no zero keys
    assert output.hint_counts_for_log(_report(), last=counts) is None
    suppressed = _report()
    suppressed.hints[0].suppressed = True
    assert output.hint_counts_for_log(suppressed) is None


def test_hint_table_text_is_markdown():
    text = output.hint_table_text(_report())
    assert "| severity | id | finding | estimated gain |" in text and "```python" in text


class _Writer:
    def __init__(self):
        self.texts = []

    def add_text(self, tag, text, global_step=None):
        self.texts.append((tag, text, global_step))

    def flush(self):
        pass


def test_lightning_loggers_get_text_and_artifacts_where_supported(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    path = _report().save(tmp_path / "perf_hints.json")
    TensorBoardLogger = type("TensorBoardLogger", (), {})
    tb = TensorBoardLogger()
    tb.experiment = _Writer()
    MLFlowLogger = type("MLFlowLogger", (), {})
    ml = MLFlowLogger()
    ml.run_id = "run1"
    ml.experiment = types.SimpleNamespace(texts=[], artifacts=[])
    ml.experiment.log_text = lambda run_id, text, name: ml.experiment.texts.append((run_id, name))
    ml.experiment.log_artifact = lambda run_id, p: ml.experiment.artifacts.append((run_id, p))
    csv = CSVLogger(tmp_path)
    done = output.log_to_lightning_loggers([csv, tb, ml], _report(), step=7, report_path=path)
    assert done == ["TensorBoardLogger", "MLFlowLogger"]
    assert tb.experiment.texts[0][0] == "perf_hints" and tb.experiment.texts[0][2] == 7
    assert "padding-waste" in tb.experiment.texts[0][1]
    assert ml.experiment.texts == [("run1", "perf_hints.md")] and ml.experiment.artifacts == [("run1", str(path))]


def test_hf_trackers_get_text_and_skip_closed_writers(tmp_path):
    from transformers.integrations import TensorBoardCallback

    cb = TensorBoardCallback.__new__(TensorBoardCallback)  # no tensorboard needed: only its writer is used
    cb.tb_writer = _Writer()
    closed = TensorBoardCallback.__new__(TensorBoardCallback)
    closed.tb_writer = None
    MLflowCallback = type("MLflowCallback", (), {})
    ml = MLflowCallback()
    ml._initialized = True
    logged = []
    ml._ml_flow = types.SimpleNamespace(log_text=lambda text, name: logged.append(name),
                                        log_artifact=lambda p: logged.append(p))
    path = _report().save(tmp_path / "perf_hints.json")
    done = output.log_to_hf_trackers([closed, cb, ml, object()], _report(), step=3, report_path=path)
    assert done == ["TensorBoardCallback", "MLflowCallback"]
    assert cb.tb_writer.texts[0][2] == 3 and logged == ["perf_hints.md", str(path)]


def test_a_failing_tracker_is_skipped():
    TensorBoardLogger = type("TensorBoardLogger", (), {"experiment": property(lambda self: 1 / 0)})
    assert output.log_to_lightning_loggers([TensorBoardLogger()], _report(), step=0) == []


# -- warnings at the user's code (perfcallbacks.hints) ------------------------------------------------------
def _hint():
    return REGISTRY["padding-waste"].make("warmup", "61% of tokens are padding.", "DataCollatorWithPadding(tok)",
                                          impact=2.4)


class UserNet:  # stands in for the user's LightningModule class
    pass


def test_warning_points_at_the_users_class_and_follows_the_template():
    import inspect
    import warnings

    from perfcallbacks.hints import PerfHintWarning, user_code_location, warn_hint

    location = user_code_location(UserNet())
    assert location == (__file__, inspect.getsourcelines(UserNet)[1])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn_hint(_hint(), user_frame=location)
    (w,) = seen
    assert w.category is PerfHintWarning and (w.filename, w.lineno) == location
    text = str(w.message)
    order = [text.index(part) for part in ("[padding-waste]", "61% of tokens", "why:", "fix:",
                                           'suppress=["padding-waste"]', "perfhints explain padding-waste")]
    assert order == sorted(order)


def test_library_classes_and_frames_are_skipped():
    import torch

    from perfcallbacks.hints import user_code_location

    filename, _ = user_code_location(torch.nn.Linear(2, 2))  # a torch class: fall back to the stack
    assert filename == __file__
    import warnings

    from perfcallbacks.hints import warn_hint

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warn_hint(_hint())  # no location: the first frame outside the libraries, i.e. this line
    assert seen[0].filename == __file__


def test_hints_as_errors_are_contained_and_returned():
    import warnings

    from perfcallbacks.hints import PerfHintWarning, emit_hint_warning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfHintWarning)
        err = emit_hint_warning(_hint())
    assert isinstance(err, PerfHintWarning) and "[padding-waste]" in str(err)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert emit_hint_warning(_hint()) is None


def test_filters_that_silence_a_hint_are_recognised():
    import warnings

    from perfcallbacks.hints import PerfHintWarning, hint_silenced_by_filters

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert not hint_silenced_by_filters(_hint())
        warnings.filterwarnings("ignore", message=r"\[padding-waste\]", category=PerfHintWarning)
        assert hint_silenced_by_filters(_hint())
        assert not hint_silenced_by_filters(REGISTRY["gpu-unused"].make("setup", "m", "f"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PerfHintWarning)
        assert hint_silenced_by_filters(_hint())


def test_progress_safe_restores_a_rich_stderr_proxy():
    rich_console = pytest.importorskip("rich.console")
    from rich.file_proxy import FileProxy

    import io

    buffer = io.StringIO()
    console = rich_console.Console(file=buffer, width=40, force_terminal=False)
    proxy = FileProxy(console, sys.__stderr__)
    saved, sys.stderr = sys.stderr, proxy
    try:
        with output.progress_safe():
            sys.stderr.write("x" * 60 + "\n")
        assert sys.stderr is proxy
    finally:
        sys.stderr = saved
    assert "x" * 60 in buffer.getvalue()  # not folded at the console's 40 columns
