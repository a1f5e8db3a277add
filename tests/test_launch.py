"""``perfhints run``: options, the import hook, report merging, and real runs of unmodified scripts."""

from __future__ import annotations

import csv
import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from perfcallbacks import cli, launch
from perfcallbacks._bootstrap import _perfhints_hook as hook
from perfcallbacks.hints import REGISTRY
from perfcallbacks.report import FixResult, Report

SCRIPTS = Path(__file__).parent / "launch_scripts"
RUN = [sys.executable, "-m", "perfcallbacks.cli", "run"]


def perfhints_run(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ if env is None else env)
    environ.pop(hook.ENV_VAR, None)
    environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1", PYTHONWARNINGS="default")
    return subprocess.run([*RUN, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)


def hint_ids(path: Path) -> list[str]:
    return Report.load(path).hint_ids


# -- options ------------------------------------------------------------------------------
def parse(*argv: str):
    return cli.build_parser().parse_args(["run", *argv])


def test_run_subcommand_is_registered_and_keeps_program_options():
    args = parse("--target", "a100", "--suppress", "padding-waste", "gpu-unused",
                 "--", "python", "t.py", "--target", "x")
    assert args.func is launch.run
    assert args.target == "a100" and args.suppress == ["padding-waste", "gpu-unused"]
    assert launch.build_command(args.program, args.module) == [sys.executable, "t.py", "--target", "x"]


def test_module_form_keeps_its_arguments():
    args = parse("--auto-apply", "-m", "pkg.train", "--lr", "3", "-m", "x")
    assert args.auto_apply
    expected = [sys.executable, "-m", "pkg.train", "--lr", "3", "-m", "x"]
    assert launch.build_command(args.program, args.module) == expected


@pytest.mark.parametrize(("program", "expected"), [
    (["--", "python3", "a.py"], [sys.executable, "a.py"]),
    (["a.py", "1"], [sys.executable, "a.py", "1"]),
    (["--", "-m", "mod"], [sys.executable, "-m", "mod"]),
    (["torchrun", "--nproc_per_node", "2", "a.py"], ["torchrun", "--nproc_per_node", "2", "a.py"]),
    (["/opt/py/bin/python", "a.py"], ["/opt/py/bin/python", "a.py"]),
])
def test_build_command(program, expected):
    assert launch.build_command(program) == expected


@pytest.mark.parametrize("program", [[], ["--"]])
def test_no_program_is_a_usage_error(program):
    with pytest.raises(ValueError, match="no program to run"):
        launch.build_command(program)


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "a10O"], "a100"),
    (["--suppress", "paddingwaste"], "padding-waste"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--latency-budget-ms", "0"], "--latency-budget-ms"),
])
def test_bad_options_exit_2_before_the_program_starts(tmp_path, capfd, argv, message):
    marker = tmp_path / "started"
    script = tmp_path / "s.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    code = cli.main(["run", *argv, "--report", str(tmp_path / "r.json"), "--", "python", str(script)])
    assert code == 2
    err = capfd.readouterr().err  # --target is checked by the child's start-up hook: read the fd
    assert err.startswith("perfhints run:") and message in err
    assert not marker.exists() and not (tmp_path / "r.json").exists()


def test_report_that_is_a_directory_is_rejected(tmp_path):
    args = parse("--report", str(tmp_path), "--", "python", "x.py")
    with pytest.raises(ValueError, match="--report must be a file path"):
        launch.build_config(args, parts_dir="")


def test_config_round_trips_through_the_child_environment():
    args = parse("--auto-apply", "--target", "t4", "--suppress", "gpu-unused", "--warmup-steps", "5", "--", "x.py")
    config = launch.build_config(args, parts_dir="/tmp/parts")
    env = launch.child_environ(config, base={"PYTHONPATH": "/user/lib", "KEEP": "1"})
    assert env["KEEP"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [launch.BOOTSTRAP_DIR, "/user/lib"]
    loaded = hook.load_config(env)
    kwargs = hook.callback_kwargs(loaded, "/tmp/parts/1.json")
    assert kwargs == {"auto_apply": True, "warmup_steps": 5, "target": "t4", "suppress": ("gpu-unused",),
                      "report_path": "/tmp/parts/1.json", "latency_budget_ms": None, "verbose": False}
    assert launch.child_environ(config, base={})["PYTHONPATH"] == launch.BOOTSTRAP_DIR


def test_bootstrap_dir_holds_the_sitecustomize_and_hook():
    assert (Path(launch.BOOTSTRAP_DIR) / "sitecustomize.py").is_file()
    assert (Path(launch.BOOTSTRAP_DIR) / "_perfhints_hook.py").is_file()


# -- merging ------------------------------------------------------------------------------
def _hint(hint_id: str, severity: str | None = None, pad: float = 0.5):
    return REGISTRY[hint_id].make("warmup", f"{hint_id} seen", "fix it", {"pad_fraction": pad}, severity=severity)


def test_merge_reports_keeps_one_hint_per_id_and_phase():
    train = REGISTRY["padding-waste"].make("warmup", "train 64%", "group_by_length", {"pad_fraction": 0.64})
    infer = REGISTRY["padding-waste"].make("inference", "eval 40%", "length_grouped_batches", {"pad_fraction": 0.4})
    later = REGISTRY["padding-waste"].make("inference", "predict 41%", "length_grouped_batches")
    quiet = _hint("gpu-unused")
    quiet.suppressed = True
    merged = launch.merge_reports([Report(hints=[train, quiet]), Report(hints=[infer]),
                                   Report(hints=[later, _hint("gpu-unused")])])
    assert [(h.id, h.phase) for h in merged.hints] == [("gpu-unused", "warmup"), ("padding-waste", "inference"),
                                                       ("padding-waste", "warmup")]
    assert merged.hint("padding-waste", "warmup").message == "train 64%"
    assert merged.hint("padding-waste", "inference").message == "predict 41%"  # latest of the same severity
    assert merged.hint("gpu-unused").suppressed  # suppressed in one part: suppressed in the merge


def test_fail_on_counts_open_hints_at_or_above_the_severity():
    info = REGISTRY["vocab-unaligned"].make("setup", "m", "f")
    warn = _hint("padding-waste")
    resolved = REGISTRY["int8-available"].make("inference", "m", "f", severity="warning")
    report = Report(hints=[info, warn, resolved], fixes=[FixResult("dynamic-quantization", "applied", "ok")])
    assert [h.id for h in launch.fail_on_hints(report, "warning")] == ["padding-waste"]
    assert [h.id for h in launch.fail_on_hints(report, "info")] == ["vocab-unaligned", "padding-waste"]
    assert launch.fail_on_hints(report, "critical") == [] and launch.fail_on_hints(report, None) == []


def test_hook_checks_the_target_once(monkeypatch, capsys):
    codes = []
    monkeypatch.delenv(hook.ENV_VAR, raising=False)
    hook.validate_target({"target": "a10O", "validate_target": True}, exit=codes.append)
    assert codes == [2] and "a100" in capsys.readouterr().err
    hook.validate_target({"target": "a100", "validate_target": True}, exit=codes.append)
    assert codes == [2] and hook.load_config()["validate_target"] is False  # children skip the check


def test_merge_reports_keeps_one_hint_per_id_and_all_fixes():
    a = Report(framework="lightning", device={"kind": "cpu"}, overhead_s=0.1,
               hints=[_hint("padding-waste", "info", 0.3), _hint("gpu-unused")],
               fixes=[FixResult("threads", "applied", "faster", speedup=1.2)])
    b = Report(framework="lightning", device={"kind": "cpu"}, overhead_s=0.2,
               hints=[_hint("padding-waste", "warning", 0.6)],
               fixes=[FixResult("autocast", "rejected", "slower", speedup=0.9)])
    merged = launch.merge_reports([a, b])
    assert merged.hint_ids == ["gpu-unused", "padding-waste"]  # most severe first
    assert merged.hint("padding-waste").evidence["pad_fraction"] == 0.6
    assert [f.id for f in merged.fixes] == ["threads", "autocast"]
    assert merged.overhead_s == pytest.approx(0.3)
    assert merged.framework == "lightning"
    assert launch.merge_reports([a, Report(framework="hf")]).framework == "hf+lightning"
    assert launch.merge_reports([]) is None


def test_collect_parts_skips_broken_files(tmp_path, capsys):
    Report(framework="hf", hints=[_hint("gpu-unused")]).save(tmp_path / "1-0-hf.json")
    (tmp_path / "2-0-hf.json").write_text("{not json")
    reports = launch.collect_parts(str(tmp_path))
    assert [r.hint_ids for r in reports] == [["gpu-unused"]]
    assert "2-0-hf.json" in capsys.readouterr().err


# -- the import hook, in process, on stand-in trainer classes -------------------------------
class FakeCallback:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLightningTrainer:
    def __init__(self, *, callbacks=None, max_steps=1):
        self.calls = getattr(self, "calls", 0) + 1
        self.callbacks = callbacks


class FakeHFTrainer:
    def __init__(self, model=None, args=None, callbacks=None):
        self.calls = getattr(self, "calls", 0) + 1
        self.callback_handler = types.SimpleNamespace(callbacks=list(callbacks or []))

    def add_callback(self, callback):
        self.callback_handler.callbacks.append(callback)


@pytest.fixture
def fake_hook(monkeypatch, tmp_path):
    """The hook configured as in a child, with FakeCallback standing in for our adapters."""
    monkeypatch.setattr(hook, "_config", {"parts_dir": str(tmp_path), "target": "a100", "suppress": ["gpu-unused"]})
    monkeypatch.setattr(hook, "callback_class", lambda framework: FakeCallback)
    monkeypatch.setattr(hook, "_instrumented", [])
    monkeypatch.setattr(hook, "_atexit_registered", True)  # do not leave an at-exit handler behind
    return hook


def _patched(cls, framework):
    inject = hook._inject_hf if framework == "hf" else hook._inject_lightning
    patched = type(cls.__name__, (cls,), {})
    patched.__init__ = hook.make_wrapper(cls.__init__, inject, framework)
    return patched


@pytest.mark.parametrize("given", ["none", "empty", "single", "list"])
def test_lightning_trainer_gets_exactly_one_callback(fake_hook, given):
    Trainer = _patched(FakeLightningTrainer, "lightning")
    other = object()
    callbacks = {"none": None, "empty": [], "single": other, "list": [other]}[given]
    trainer = Trainer(callbacks=callbacks, max_steps=3)
    ours = [cb for cb in trainer.callbacks if isinstance(cb, FakeCallback)]
    assert len(ours) == 1 and trainer.calls == 1
    assert ours[0].kwargs["target"] == "a100" and ours[0].kwargs["suppress"] == ("gpu-unused",)
    assert ours[0].kwargs["report_path"].startswith(fake_hook._config["parts_dir"])
    assert [fake_hook._instrumented[0][0]] == ours
    if given in ("single", "list"):
        assert trainer.callbacks[0] is other
    if isinstance(callbacks, list):
        assert FakeCallback not in map(type, callbacks)  # the user's list is not mutated


def test_trainer_that_already_has_our_callback_is_not_instrumented_twice(fake_hook):
    Trainer = _patched(FakeLightningTrainer, "lightning")
    mine = FakeCallback(report_path=None)
    trainer = Trainer(callbacks=[mine])
    assert trainer.callbacks == [mine]
    assert [cb for cb, _ in fake_hook._instrumented] == [mine]  # still reported at exit

    HF = _patched(FakeHFTrainer, "hf")
    assert HF(None, None, [FakeCallback]).callback_handler.callbacks == [FakeCallback]  # a class counts too


def test_hf_trainer_positional_keyword_and_subclass_calls(fake_hook):
    HF = _patched(FakeHFTrainer, "hf")

    class Sub(HF):  # like SentenceTransformerTrainer: its own __init__, then super().__init__
        def __init__(self, model=None, *, extra=1):
            super().__init__(model, None, [])

    for trainer in (HF(), HF("m", "a", ["cb"]), HF(model="m", callbacks=("cb",)), Sub("m")):
        ours = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, FakeCallback)]
        assert len(ours) == 1 and trainer.calls == 1


def test_bad_hf_call_still_raises_the_frameworks_own_error(fake_hook):
    HF = _patched(FakeHFTrainer, "hf")
    with pytest.raises(TypeError, match="unexpected keyword"):
        HF(nonsense=1)


def test_failing_injection_never_stops_the_trainer(fake_hook, monkeypatch, capsys):
    def broken(framework):
        raise RuntimeError("adapter exploded")

    monkeypatch.setattr(hook, "callback_class", broken)
    trainer = _patched(FakeLightningTrainer, "lightning")(callbacks=None)
    assert trainer.callbacks is None and trainer.calls == 1
    assert "adapter exploded" in capsys.readouterr().err


def test_errors_of_the_original_init_propagate_unchanged(fake_hook):
    class Boom:
        def __init__(self, *, callbacks=None):
            raise KeyError("from the framework")

    with pytest.raises(KeyError, match="from the framework"):
        _patched(Boom, "lightning")()


def test_finder_patches_the_module_after_it_executes(tmp_path, monkeypatch, fake_hook):
    pkg = tmp_path / "fake_pl_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "trainer.py").write_text("class Trainer:\n    def __init__(self, *, callbacks=None):\n"
                                    "        self.callbacks = callbacks\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(hook.TARGETS, "fake_pl_pkg.trainer", ("lightning", "Trainer"))
    finder = hook.TrainerFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        import fake_pl_pkg.trainer as module

        original = getattr(module.Trainer.__init__, hook.MARK)
        assert inspect.getsourcefile(original) == str(pkg / "trainer.py")
        assert [type(cb) for cb in module.Trainer().callbacks] == [FakeCallback]
        hook.patch_module(module)  # idempotent: never wrapped twice
        assert getattr(module.Trainer.__init__, hook.MARK) is original
        assert finder.find_spec("json", None) is None  # other modules are not its business
    finally:
        for name in ("fake_pl_pkg", "fake_pl_pkg.trainer"):
            sys.modules.pop(name, None)


def test_no_config_installs_nothing(monkeypatch):
    monkeypatch.delenv(hook.ENV_VAR, raising=False)
    before = list(sys.meta_path)
    assert hook.load_config() is None and hook.install_from_env() is False
    assert sys.meta_path == before
    assert hook.load_config({hook.ENV_VAR: "  "}) is None
    with pytest.raises(ValueError, match="JSON object"):
        hook.load_config({hook.ENV_VAR: "[1]"})


class _FakeAdvisor:
    def __init__(self, rank_zero=True):
        self.is_rank_zero = rank_zero
        self.report = Report(framework="lightning", hints=[_hint("padding-waste")])


def test_at_exit_writes_reports_not_yet_written(fake_hook, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    done, pending, idle, other_rank = (tmp_path / f"{n}.json" for n in ("done", "pending", "idle", "rank1"))
    done.write_text("written by the callback")
    for callback, path in ((types.SimpleNamespace(advisor=_FakeAdvisor()), done),
                           (types.SimpleNamespace(advisor=_FakeAdvisor()), pending),
                           (types.SimpleNamespace(advisor=None, _advisor=None), idle),
                           (types.SimpleNamespace(_advisor=_FakeAdvisor(rank_zero=False)), other_rank)):
        fake_hook._instrumented.append((callback, str(path)))
    hook.write_pending_reports()
    assert done.read_text() == "written by the callback"
    assert hint_ids(pending) == ["padding-waste"]
    assert not idle.exists() and not other_rank.exists()

    pending.unlink()
    monkeypatch.setenv("RANK", "1")
    hook.write_pending_reports()
    assert not pending.exists()


# -- real processes, no framework (fast) ------------------------------------------------------
def test_plain_script_runs_unchanged_with_exit_code_and_nothing_heavy_imported(tmp_path):
    result = perfhints_run("--report", "r.json", "--", "python", str(SCRIPTS / "plain.py"), "3", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "HEAVY_IMPORTED=[]" in result.stdout  # the bootstrap imports neither torch nor any trainer
    assert "ARGS=['3']" in result.stdout
    assert f"no Trainer ran, so no report was written to {tmp_path / 'r.json'}" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_failing_plain_module_passes_its_status_and_default_report_path(tmp_path):
    (tmp_path / "perf_hints.json").write_text("stale")
    result = perfhints_run("-m", "plain", "raise", cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(SCRIPTS)})
    assert result.returncode == 1
    assert "ValueError: plain script failed" in result.stderr
    assert (tmp_path / "perf_hints.json").read_text() == "stale"  # no Trainer: nothing written, and it says so
    assert "no report was written" in result.stderr and "from an earlier run" in result.stderr


def test_perfhints_off_is_a_passthrough(tmp_path):
    env = {**os.environ, "PERFHINTS": "off"}
    result = perfhints_run("--fail-on", "info", "--", "python", str(SCRIPTS / "plain.py"), "4", cwd=tmp_path, env=env)
    assert result.returncode == 4
    assert "HOOK_LOADED=False" in result.stdout  # not instrumented at all
    assert "PERFHINTS=off" in result.stderr and not (tmp_path / "perf_hints.json").exists()


def test_parent_of_perfhints_run_does_not_import_torch(tmp_path):
    """The program (child) reads its parent's memory map: no libtorch, and a small resident set."""
    result = perfhints_run("--quiet", "--", "python", str(SCRIPTS / "parent_probe.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("PARENT"))
    fields = dict(part.split("=") for part in line.split()[1:])
    assert fields["libtorch"] == "False", line
    assert int(fields["rss_mb"]) < 100, line  # torch alone holds ~230 MB


def test_missing_program_is_127(tmp_path):
    result = perfhints_run("--", "no-such-program-perfhints", cwd=tmp_path)
    assert result.returncode == 127 and "cannot start" in result.stderr


def test_existing_sitecustomize_still_runs(tmp_path):
    user = tmp_path / "user_site"
    user.mkdir()
    (user / "sitecustomize.py").write_text("print('USER_SITECUSTOMIZE_RAN', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(user)}
    result = perfhints_run("--quiet", "--", "python", str(SCRIPTS / "plain.py"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "USER_SITECUSTOMIZE_RAN" in result.stdout and "HEAVY_IMPORTED=[]" in result.stdout


def test_bootstrap_on_path_without_the_gate_installs_nothing(tmp_path):
    code = ("import sys; print('FINDERS', [type(f).__name__ for f in sys.meta_path]); "
            "print('CONFIG', sys.modules.get('_perfhints_hook') and sys.modules['_perfhints_hook']._config)")
    env = {k: v for k, v in os.environ.items() if k != hook.ENV_VAR}
    env["PYTHONPATH"] = launch.BOOTSTRAP_DIR
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "TrainerFinder" not in out and "CONFIG None" in out


# -- real processes with Lightning / transformers (slow: each imports a framework) ------------
@pytest.mark.slow
def test_without_perfhints_run_the_trainers_are_untouched(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != hook.ENV_VAR}
    result = subprocess.run([sys.executable, str(SCRIPTS / "untouched.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["lightning"].split()[0].endswith(os.path.join("lightning", "pytorch", "utilities", "argparse.py"))
    assert lines["pytorch_lightning"].split()[0].endswith(os.path.join("pytorch_lightning", "utilities", "argparse.py"))
    assert lines["transformers"].split()[0].endswith(os.path.join("transformers", "trainer.py"))
    assert all(value.split()[1] == "False" for value in lines.values() if len(value.split()) == 2)
    assert "HOOK_LOADED=False" in result.stdout and "TrainerFinder" not in result.stdout


@pytest.mark.slow
def test_lightning_fit_gets_hints_report_and_exit_code(tmp_path):
    result = perfhints_run("--target", "a100", "--suppress", "dim-unaligned", "--report", "out/hints.json", "--",
                           "python", str(SCRIPTS / "lightning_fit.py"), "--exit-code", "3", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "CALLBACKS=['PerfHintCallback'] " in result.stdout and "FIT_DONE" in result.stdout
    # hints appear while it runs, at the user's code (Lightning drops the category name for any path with
    # "lightning" in it, such as this script's)
    assert "lightning_fit.py:32: [tensor-cores-idle]" in result.stderr.split("FIT_DONE")[0]
    assert "[tensor-cores-idle]" in result.stderr.split("FIT_DONE")[-1]  # and in the table at exit
    report = Report.load(tmp_path / "out" / "hints.json")
    assert report.framework == "lightning" and report.target["name"] == "NVIDIA A100"
    assert "tensor-cores-idle" in report.hint_ids and "dim-unaligned" not in report.hint_ids
    assert f"report written to {tmp_path / 'out' / 'hints.json'}" in result.stderr


@pytest.mark.slow
def test_pytorch_lightning_script_that_raises_still_reports(tmp_path):
    result = perfhints_run("--target", "a100", "--", "python", str(SCRIPTS / "lightning_fit.py"), "--pl", "--raise",
                           cwd=tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: boom after fit" in result.stderr
    assert "CALLBACKS=['PLPerfHintCallback'] " in result.stdout
    assert "tensor-cores-idle" in hint_ids(tmp_path / "perf_hints.json")


@pytest.mark.slow
def test_script_that_already_adds_the_callback_is_not_double_instrumented(tmp_path):
    result = perfhints_run("--target", "a100", "--", "python", str(SCRIPTS / "lightning_fit.py"), "--with-callback",
                           cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "CALLBACKS=['PerfHintCallback'] " in result.stdout
    report = Report.load(tmp_path / "perf_hints.json")
    assert report.target is None  # the script's own callback, with its own configuration, did the work
    assert "tensor-cores-idle" not in report.hint_ids


@pytest.mark.slow
def test_fail_on_warning_exits_3_on_a_padding_mistake_and_0_when_clean(tmp_path):
    script = str(SCRIPTS / "padded_fit.py")
    bad = perfhints_run("--warmup-steps", "4", "--fail-on", "warning", "--", "python", script, "--padded",
                        cwd=tmp_path)
    assert bad.returncode == 3, bad.stderr[-3000:]
    assert "FIT_DONE" in bad.stdout and "--fail-on warning" in bad.stderr and "padding-waste" in bad.stderr
    assert "padding-waste" in hint_ids(tmp_path / "perf_hints.json")
    clean = perfhints_run("--warmup-steps", "4", "--fail-on", "warning", "--", "python", script, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "--fail-on" not in clean.stderr
    quiet = perfhints_run("--warmup-steps", "4", "--fail-on", "warning", "--suppress", "padding-waste",
                          "static-padding", "--", "python", script, "--padded", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]  # suppressed hints never fail the run


@pytest.mark.slow
def test_hf_trainer_gets_hints_report_and_exit_code(tmp_path):
    result = perfhints_run("--target", "a100", "--", "python", str(SCRIPTS / "hf_train.py"), "4", cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert "TRAIN_DONE" in result.stdout
    callbacks = next(line for line in result.stdout.splitlines() if line.startswith("CALLBACKS="))
    assert callbacks.count("HFPerfHints") == 1
    ids = hint_ids(tmp_path / "perf_hints.json")
    assert {"padding-waste", "tensor-cores-idle"} <= set(ids)
    assert "[padding-waste]" in result.stderr


def _docstring_sentences(count: int) -> list[str]:
    """Real English text without downloads: first paragraphs of stdlib docstrings."""
    import argparse
    import collections
    import json as json_module
    import textwrap

    sentences = set()
    for module in (collections, argparse, textwrap, json_module, csv, inspect):
        for obj in vars(module).values():
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                first = " ".join(doc.split("\n\n")[0].split())
                if 20 < len(first) < 200:
                    sentences.add(first)
    return sorted(sentences)[:count]


@pytest.mark.slow
def test_run_glue_style_script_on_minilm_reports_padding_waste(tmp_path, minilm_dir):
    """tests/launch_scripts/hf_text_classification.py is modelled on transformers' run_glue.py
    (pad_to_max_length=True by default): run unmodified, it must get the padding-waste hint."""
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence", "label"])
        for sentence in _docstring_sentences(32):
            writer.writerow([sentence, len(sentence) % 2])
    result = perfhints_run(
        "--report", "hints.json", "--", "python", str(SCRIPTS / "hf_text_classification.py"),
        "--model_name_or_path", minilm_dir, "--train_file", "train.csv", "--do_train", "--output_dir", "out",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu",
        "--save_strategy", "no", "--disable_tqdm", "true", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = Report.load(tmp_path / "hints.json")
    assert report.framework == "hf"
    waste = report.hint("padding-waste")
    assert waste is not None, report.hint_ids
    assert waste.evidence["pad_fraction"] > 0.5  # 128-token padding of ~35-token sentences


@pytest.mark.slow
def test_torchrun_ranks_are_all_instrumented_and_write_one_report(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this interpreter")
    result = perfhints_run("--target", "a100", "--", str(torchrun), "--nproc_per_node", "2",
                           str(SCRIPTS / "lightning_fit.py"), "--devices", "2", "--strategy", "ddp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):  # every rank got exactly one callback through the inherited environment
        assert f"CALLBACKS=['PerfHintCallback'] RANK={rank}" in result.stdout
    warned = re.findall(r"lightning_fit\.py:\d+: (?:PerfHintWarning: )?\[tensor-cores-idle\]", result.stderr)
    assert len(warned) == 1  # rank zero only
    assert "tensor-cores-idle" in hint_ids(tmp_path / "perf_hints.json")
