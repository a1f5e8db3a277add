"""``perfhints run``: run an unmodified program with our callbacks injected into every Trainer.

Like ``coverage run`` or ``torchrun``, the program runs in a child process. The
child gets two things in its environment, both inherited by any process it
starts (torchrun / accelerate / DDP-spawn ranks):

* ``PYTHONPATH`` starts with :mod:`perfcallbacks._bootstrap`, whose
  ``sitecustomize`` installs an import hook at interpreter start-up;
* ``PERFHINTS_RUN_CONFIG`` holds the validated options as JSON. Without it the
  hook does nothing, so no other process is ever patched.

The hook wraps ``Trainer.__init__`` of Lightning (``lightning.pytorch`` and
``pytorch_lightning``) and transformers once the program imports them. Each
trainer writes its own part report; after the child exits the parent merges the
parts into one report file, prints the table and returns the child's exit code
(or 3 with ``--fail-on SEVERITY`` when the program succeeded and a hint at or above
that severity was found). No Trainer ran: no report is written, and it says so.
``PERFHINTS=off``: the program runs as if ``perfhints run`` were not there.

The parent never imports torch (it would hold ~230 MB for the whole run): it needs
only the hint registry and the report; ``--target`` is checked by the child's
start-up hook, before the program's first line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from perfcallbacks.hints import SEVERITIES, validate_suppress
from perfcallbacks.report import Report

ENV_VAR = "PERFHINTS_RUN_CONFIG"
BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")
DEFAULT_REPORT = "perf_hints.json"  # in the current directory, like coverage's .coverage
# Exit status for our own usage errors (argparse's convention); the child's status passes through.
USAGE_ERROR = 2
# Exit status when --fail-on found a hint at or above its severity and the program itself succeeded.
FAIL_ON_STATUS = 3
# Interpreter names replaced by the one running perfhints: the bootstrap needs perfcallbacks importable.
PYTHON_NAMES = ("python", "python3", f"python3.{sys.version_info[1]}")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand to the ``perfhints`` parser."""
    parser = subparsers.add_parser(
        "run",
        help="run an unmodified script with the callbacks injected into every Lightning / transformers Trainer",
        description="Run PROGRAM unchanged, adding PerfHintCallback to every Lightning Trainer and HFPerfHints "
                    "to every transformers Trainer it creates. At exit: the hint table and the report path; "
                    "the program's exit code is passed through.",
        epilog="examples:\n"
               "  perfhints run -- python train.py --epochs 1\n"
               "  perfhints run --target a100 -m my_pkg.train\n"
               "  perfhints run --report hints.json -- torchrun --nproc_per_node 2 train.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--auto-apply", action="store_true", help="apply the safe fixes after measuring them")
    parser.add_argument("--target", metavar="NAME",
                        help="judge the run as if on this preset (perfhints device --target NAME; e.g. a100, t4)")
    parser.add_argument("--suppress", metavar="ID", nargs="+", action="extend", default=[],
                        help="hint ids never to emit (end the list with --)")
    parser.add_argument("--report", metavar="FILE", default=DEFAULT_REPORT,
                        help=f"where to write the merged JSON report (default: ./{DEFAULT_REPORT})")
    parser.add_argument("--warmup-steps", metavar="N", type=int, default=20,
                        help="training steps observed (default 20)")
    parser.add_argument("--latency-budget-ms", metavar="MS", type=float, default=None,
                        help="per-batch latency budget for batch-size advice")
    parser.add_argument("--verbose", action="store_true", help="also print the callbacks' own tables during the run")
    parser.add_argument("--quiet", action="store_true",
                        help="do not print the hint table at exit (only the report path)")
    parser.add_argument("--fail-on", metavar="SEVERITY", choices=SEVERITIES, default=None,
                        help=f"exit with status {FAIL_ON_STATUS} after a program that succeeded when an open hint "
                             f"at or above SEVERITY ({', '.join(SEVERITIES)}) was found (for CI)")
    parser.add_argument("-m", dest="module", nargs=argparse.REMAINDER, metavar="MODULE ...",
                        help="run a library module as a script, like python -m")
    parser.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM ...",
                        help="python SCRIPT [ARGS], SCRIPT.py [ARGS], or any launcher (torchrun, accelerate launch)")
    parser.set_defaults(func=run)
    return parser


def build_command(program: Sequence[str], module: Sequence[str] | None = None) -> list[str]:
    """The child's argv. ``python`` means this interpreter; a bare ``*.py`` runs under it too."""
    if module:
        return [sys.executable, "-m", *module]
    argv = list(program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ValueError("no program to run: perfhints run [options] -- python SCRIPT [ARGS] (or -m MODULE)")
    if argv[0] == "-m":
        return [sys.executable, *argv]
    if argv[0] in PYTHON_NAMES:
        return [sys.executable, *argv[1:]]
    if argv[0].endswith(".py"):
        return [sys.executable, *argv]
    return argv


def build_config(args: argparse.Namespace, parts_dir: str) -> dict[str, Any]:
    """Validate the options here, in the parent, so a typo fails before the program starts.

    ``--target`` is checked by the child's start-up hook (``validate_target``): resolving a
    preset needs torch, which the parent never imports."""
    from perfcallbacks.options import env_suppress, validate_fail_on

    if args.target is not None and (not isinstance(args.target, str) or not args.target.strip()):
        raise ValueError(f"--target must name a device preset, got {args.target!r}")
    suppress = validate_suppress(args.suppress, argument="--suppress")
    env_suppress()  # PERFHINTS_SUPPRESS: a typo fails here too, not silently in every Trainer
    try:
        validate_fail_on(getattr(args, "fail_on", None))
    except ValueError as err:
        raise ValueError(f"--fail-on: {err}") from None
    if args.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if args.latency_budget_ms is not None and not args.latency_budget_ms > 0:
        raise ValueError(f"--latency-budget-ms must be a positive number of milliseconds, got {args.latency_budget_ms}")
    if Path(args.report).is_dir():
        raise ValueError(f"--report must be a file path, got the directory {args.report!r}; "
                         f"try {str(Path(args.report) / DEFAULT_REPORT)!r}")
    return {
        "version": 1,
        "auto_apply": bool(args.auto_apply),
        "target": args.target,
        "suppress": sorted(suppress),
        "warmup_steps": int(args.warmup_steps),
        "latency_budget_ms": args.latency_budget_ms,
        "verbose": bool(args.verbose),
        "parts_dir": parts_dir,
        "validate_target": args.target is not None,  # checked once, by the first Python process
    }


def child_environ(config: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment plus the gate variable and our bootstrap first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env[ENV_VAR] = json.dumps(config)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = BOOTSTRAP_DIR + (os.pathsep + old if old else "")
    return env


def merge_reports(reports: Sequence[Report]) -> Report | None:
    """One report from every trainer's part: one hint per (id, phase) (most severe, then latest),
    so a training finding and an inference finding with the same id are both kept; all fixes;
    summed overhead. A hint suppressed in any part stays suppressed."""
    if not reports:
        return None
    first = reports[0]
    hints: dict[tuple[str, str], Any] = {}
    suppressed: set[tuple[str, str]] = set()
    for report in reports:
        for hint in report.hints:
            key = (hint.id, hint.phase)
            if hint.suppressed:
                suppressed.add(key)
            kept = hints.get(key)
            if kept is None or hint.severity_rank >= kept.severity_rank:
                hints[key] = hint
    for key in suppressed:
        hints[key].suppressed = True
    frameworks = sorted({r.framework for r in reports})
    return Report(
        framework=first.framework if len(frameworks) == 1 else "+".join(frameworks),
        device=first.device,
        target=first.target,
        hints=sorted(hints.values(), key=lambda h: (-SEVERITIES.index(h.severity), h.id, h.phase)),
        fixes=[fix for report in reports for fix in report.fixes],
        overhead_s=sum(r.overhead_s for r in reports),
        check_failures=[failure for report in reports for failure in report.check_failures],
    )


def collect_parts(parts_dir: str) -> list[Report]:
    """Every readable part report, oldest first (the order the trainers finished)."""
    paths = sorted(Path(parts_dir).glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    reports = []
    for path in paths:
        try:
            reports.append(Report.load(path))
        except (OSError, ValueError, KeyError) as err:
            print(f"perfhints run: skipping unreadable part report {path.name}: {err}", file=sys.stderr)
    return reports


def run_child(command: list[str], env: dict[str, str]) -> int:
    """Run the program; Ctrl-C reaches it (same process group), SIGTERM is forwarded. Shell-style status."""
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as err:
        print(f"perfhints run: cannot start {command[0]!r}: {err}", file=sys.stderr)
        return 127 if isinstance(err, FileNotFoundError) else 126
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child decides what Ctrl-C does
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    return 128 - code if code < 0 else code  # killed by signal N -> 128+N, as shells report it


def fail_on_hints(report: Report | None, fail_on: str | None) -> list[Any]:
    """Open hints (not suppressed, not resolved by an applied fix) at or above ``fail_on``.

    Example::

        >>> fail_on_hints(None, "warning")
        []
    """
    if report is None or fail_on is None:
        return []
    floor = SEVERITIES.index(fail_on)
    return [h for h in report.open_hints if SEVERITIES.index(h.severity) >= floor]


def summarize(parts_dir: str, report_path: Path, *, quiet: bool, target: str | None = None) -> Report | None:
    """Merge the parts into ``report_path`` and print the table; returns the merged report (``None``
    when no Trainer reported: then nothing is written). Never raises."""
    try:
        merged = merge_reports(collect_parts(parts_dir))
        if merged is None:
            stale = " (the file there is from an earlier run)" if report_path.exists() else ""
            print(f"perfhints run: no Trainer ran, so no report was written to {report_path}{stale}: the program "
                  "created no Lightning or transformers Trainer, or stopped before one started (for a plain "
                  "PyTorch loop use perfcallbacks.Advisor).", file=sys.stderr)
            return None
        merged.save(report_path)
        if not quiet:
            stream = sys.stderr
            color = stream.isatty() and "NO_COLOR" not in os.environ
            from perfcallbacks.render import render_report, terminal_width

            print(render_report(Report.load(report_path), color=color, width=terminal_width()), file=stream)
        print(f"perfhints run: report written to {report_path}", file=sys.stderr)
        return merged
    except Exception as err:  # noqa: BLE001 - the program's exit code matters more than our table
        print(f"perfhints run: could not write the report to {report_path}: {err}", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Entry point of ``perfhints run``: the child's exit code, 2 for a usage error of ours, or 3 with
    ``--fail-on`` when the program succeeded and an open hint at or above that severity was found."""
    from perfcallbacks.options import enabled_by_env

    try:
        command = build_command(args.program or [], args.module)
        if not enabled_by_env():
            print("perfhints run: PERFHINTS=off: running the program without instrumentation, no report",
                  file=sys.stderr)
            return run_child(command, dict(os.environ))
        config = build_config(args, parts_dir="")
    except (ValueError, TypeError) as err:
        print(f"perfhints run: {err}", file=sys.stderr)
        return USAGE_ERROR
    parts_dir = config["parts_dir"] = tempfile.mkdtemp(prefix="perfhints-run-")
    report_path = Path(args.report).resolve()
    fail_on = getattr(args, "fail_on", None)
    try:
        code = run_child(command, child_environ(config))
        merged = summarize(parts_dir, report_path, quiet=args.quiet, target=args.target)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    found = fail_on_hints(merged, fail_on)
    if code == 0 and found:
        ids = ", ".join(sorted({h.id for h in found}))
        print(f"perfhints run: --fail-on {fail_on}: {len(found)} open hint(s) at or above {fail_on!r} ({ids}); "
              f"exit status {FAIL_ON_STATUS}", file=sys.stderr)
        return FAIL_ON_STATUS
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m perfcallbacks.launch ...`` is ``perfhints run ...``."""
    parser = argparse.ArgumentParser(prog="perfhints")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
