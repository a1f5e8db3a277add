"""Render a :class:`~perfcallbacks.report.Report` for people: rich when available, plain otherwise.

The end-of-warm-up table and ``perfhints report FILE`` both come from here, so
they always show the same content.
"""

from __future__ import annotations

import io
import os
import sys
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from perfcallbacks.report import Report

_MARK = {"critical": "!!", "warning": "! ", "info": "i "}


def _fmt_impact(impact: float | None) -> str:
    return "" if impact is None else f"~{impact:.2f}x"


def _fmt_evidence(evidence: dict) -> str:
    items = []
    for key, value in list(evidence.items())[:4]:
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, (list, tuple)) and len(value) > 4:
            value = f"[{', '.join(map(str, value[:4]))}, ...]"
        items.append(f"{key}={value}")
    return ", ".join(items)


def _header(report: Report) -> str:
    device = report.device or {}
    line = f"perfcallbacks ({report.framework}) on {device.get('kind', '?')}: {device.get('name', '?')}"
    if report.target:
        line += f" | judged as target: {report.target.get('name', '?')}"
    return line


def render_plain(report: Report, width: int = 100) -> str:
    out = [_header(report)]
    if not report.hints:
        out.append("No performance hints: nothing measured here looks slower than it should be.")
    else:
        out.append(f"{len(report.hints)} hint(s), most severe first:")
        for hint in sorted(report.hints, key=lambda h: -h.severity_rank):
            head = f"{_MARK.get(hint.severity, '  ')} [{hint.id}] {hint.message}"
            impact = _fmt_impact(hint.impact)
            if impact:
                head += f" (impact {impact})"
            out.extend(textwrap.wrap(head, width, subsequent_indent="     "))
            out.extend(textwrap.wrap(f"fix: {hint.fix}", width, initial_indent="     ", subsequent_indent="     "))
            if hint.evidence:
                out.extend(textwrap.wrap(f"evidence: {_fmt_evidence(hint.evidence)}", width,
                                         initial_indent="     ", subsequent_indent="     "))
    if report.fixes:
        out.append("Fixes:")
        for fix in report.fixes:
            numbers = []
            if fix.speedup is not None:
                numbers.append(f"speedup {fix.speedup:.2f}x")
            for key in ("cosine_mean", "cosine_min", "argmax_agreement"):
                if key in fix.fidelity:
                    numbers.append(f"{key} {fix.fidelity[key]:.4f}")
            line = f"  {fix.id}: {fix.status.upper()} - {fix.reason}"
            if numbers:
                line += f" ({', '.join(numbers)})"
            out.extend(textwrap.wrap(line, width, subsequent_indent="     "))
    out.append(f"advisor overhead: {report.overhead_s * 1000:.1f} ms")
    if report.check_failures:
        out.append(f"{len(report.check_failures)} check(s) failed internally and were skipped (see DEBUG log)")
    return "\n".join(out)


def render_rich(report: Report) -> str:
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    console.print(f"[bold]{_header(report)}[/bold]")
    if report.hints:
        table = Table(show_lines=True)
        for column in ("sev", "id", "finding", "fix", "impact"):
            table.add_column(column, overflow="fold")
        colours = {"critical": "red", "warning": "yellow", "info": "cyan"}
        for hint in sorted(report.hints, key=lambda h: -h.severity_rank):
            colour = colours.get(hint.severity, "white")
            finding = hint.message + (f"\n[dim]{_fmt_evidence(hint.evidence)}[/dim]" if hint.evidence else "")
            table.add_row(f"[{colour}]{hint.severity}[/{colour}]", hint.id, finding, hint.fix,
                          _fmt_impact(hint.impact))
        console.print(table)
    else:
        console.print("No performance hints: nothing measured here looks slower than it should be.")
    if report.fixes:
        fixes = Table(title="fixes")
        for column in ("fix", "status", "speedup", "fidelity", "reason"):
            fixes.add_column(column, overflow="fold")
        for fix in report.fixes:
            fidelity = ", ".join(f"{k} {v:.4f}" for k, v in fix.fidelity.items() if isinstance(v, (int, float)))
            speed = "" if fix.speedup is None else f"{fix.speedup:.2f}x"
            fixes.add_row(fix.id, fix.status, speed, fidelity, fix.reason)
        console.print(fixes)
    console.print(f"advisor overhead: {report.overhead_s * 1000:.1f} ms")
    if report.check_failures:
        console.print(f"{len(report.check_failures)} check(s) failed internally and were skipped (see DEBUG log)")
    return buffer.getvalue().rstrip()


def render_report(report: Report, color: bool | None = None) -> str:
    """Readable table; colour when asked or when stdout is a terminal and rich is installed."""
    if color is None:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if color:
        try:
            return render_rich(report)
        except ImportError:
            pass
    return render_plain(report)
