"""Render a :class:`~perfcallbacks.report.Report` for people: rich, plain text, Markdown, HTML.

The end-of-warm-up table, ``perfhints report FILE``, tracker text and notebooks all come
from here, so they show the same content:

* open hints, critical first, then the largest estimated gain first, with "(N suppressed)";
* hints resolved by an applied fix, as resolved (not as open);
* the fixes with labelled numbers (``min cosine 0.998 on 32 rows``);
* the code to paste, *below* the table, one unbroken line per line of code (a table
  column would fold ``LengthGroupedBatchSampler`` mid-name at 80 columns);
* the advisor's own cost, split into observation and fix measuring.

Widths come from the terminal (``COLUMNS`` / the tty), never a constant.
"""

from __future__ import annotations

import html
import io
import os
import shutil
import sys
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfcallbacks.hints import Hint
    from perfcallbacks.report import FixResult, Report

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
_SHORT = {"critical": "crit", "warning": "warn", "info": "info"}
_COLOURS = {"critical": "red", "warning": "yellow", "info": "cyan"}
PHASE_LABEL = {"setup": "setup", "warmup": "training", "inference": "inference", "export": "export"}
FIDELITY_LABELS = {
    "cosine_min": "min cosine",
    "cosine_mean": "mean cosine",
    "argmax_agreement": "argmax agreement",
    "max_abs_error": "max abs error",
}
NO_HINTS = "No performance hints: nothing measured here looks slower than it should be."


# -- content shared by every renderer -----------------------------------------------------------
def terminal_width(default: int = 100) -> int:
    """Columns of the terminal (``COLUMNS`` first, then the tty), ``default`` when there is none."""
    try:
        return max(40, shutil.get_terminal_size((default, 24)).columns)
    except (OSError, ValueError):
        return default


def sort_hints(hints: Iterable[Hint]) -> list[Hint]:
    """Critical first; then the largest estimated gain (``impact``) first, unknown gains last;
    ties by severity, then id.

    Example::

        >>> from perfcallbacks.hints import REGISTRY
        >>> a = REGISTRY["padding-waste"].make("warmup", "m", "f", impact=1.3)
        >>> b = REGISTRY["batch-size-small"].make("warmup", "m", "f", impact=2.0)
        >>> [h.id for h in sort_hints([a, b])]
        ['batch-size-small', 'padding-waste']
    """
    def key(h: Hint) -> tuple:
        rank = SEVERITY_RANK.get(h.severity, 0)
        impact = h.impact if isinstance(h.impact, (int, float)) else None
        return (rank < 2, impact is None, -(impact or 0.0), -rank, h.id, h.phase)

    return sorted(hints, key=key)


def fmt_impact(impact: float | None) -> str:
    return "" if impact is None else f"~{impact:.2f}x"


def fmt_evidence(evidence: dict, limit: int = 4) -> str:
    items = []
    for key, value in list(evidence.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, (list, tuple)) and len(value) > 4:
            value = f"[{', '.join(map(str, value[:4]))}, ...]"
        elif isinstance(value, dict):
            value = "{...}"
        items.append(f"{key}={value}")
    return ", ".join(items)


def fmt_fidelity(fidelity: dict[str, Any]) -> str:
    """Labelled fidelity numbers: ``min cosine 0.9981, argmax agreement 1.000 on 32 rows``.

    Example::

        >>> fmt_fidelity({"cosine_min": 0.99812, "argmax_agreement": 1.0, "rows": 32})
        'min cosine 0.9981, argmax agreement 1.000 on 32 rows'
    """
    parts = []
    for key, value in fidelity.items():
        if key == "rows" or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        label = FIDELITY_LABELS.get(key, key.replace("_", " "))
        digits = 3 if key == "argmax_agreement" else 4
        parts.append(f"{label} {value:.{digits}g}" if key == "max_abs_error" else f"{label} {value:.{digits}f}")
    text = ", ".join(parts)
    rows = fidelity.get("rows")
    if text and isinstance(rows, int):
        text += f" on {rows} rows"
    return text


def fmt_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def overhead_line(report: Report) -> str:
    """The advisor's own cost, split into observation (hooks, checks, probes) and fix measuring.

    Example::

        >>> from perfcallbacks.report import FixResult, Report
        >>> r = Report(overhead_s=1.5, fixes=[FixResult("threads", "applied", "x", cost_s=1.2)])
        >>> overhead_line(r)
        "perfcallbacks' own cost: 1.50 s = observation and checks 300 ms + measuring fixes 1.20 s (threads 1.20 s)"
    """
    total = float(report.overhead_s or 0.0)
    costs = [(f.id, f.cost_s) for f in report.fixes if f.cost_s]
    measuring = sum(c for _, c in costs)
    if not costs:
        return f"perfcallbacks' own cost: {fmt_seconds(total)} (observation and checks; no fix was measured)"
    observation = max(0.0, total - measuring)
    each = ", ".join(f"{fid} {fmt_seconds(c)}" for fid, c in costs)
    return (f"perfcallbacks' own cost: {fmt_seconds(max(total, measuring))} = observation and checks "
            f"{fmt_seconds(observation)} + measuring fixes {fmt_seconds(measuring)} ({each})")


def header_line(report: Report) -> str:
    device = report.device or {}
    line = f"perfcallbacks ({report.framework}) on {device.get('kind', '?')}: {device.get('name', '?')}"
    if report.target:
        line += f" | judged as target: {report.target.get('name', '?')}"
    return line


def hint_label(hint: Hint, report: Report) -> str:
    """The id, plus the phase when the same id was found in two phases (training and inference)."""
    phases = {h.phase for h in report.hints if h.id == hint.id and not h.suppressed}
    return f"{hint.id} ({PHASE_LABEL.get(hint.phase, hint.phase)})" if len(phases) > 1 else hint.id


def title_line(report: Report, open_hints: list[Hint]) -> str:
    suppressed = report.suppressed_count
    tail = f" ({suppressed} suppressed)" if suppressed else ""
    if not open_hints:
        return (NO_HINTS if not report.resolved_hints else "No open performance hints.") + tail
    noun = "hint" if len(open_hints) == 1 else "hints"
    return f"{len(open_hints)} open {noun}, critical first, then largest estimated gain{tail}:"


def resolved_lines(report: Report) -> list[str]:
    out = []
    for hint, fix in report.resolved_hints:
        speed = "" if fix.speedup is None else f", {fix.speedup:.2f}x"
        out.append(f"resolved: [{hint_label(hint, report)}] by the applied {fix.id} fix{speed}")
    return out


def fix_lines(fix: FixResult) -> tuple[str, str]:
    """``(headline, reason)`` of one fix outcome."""
    numbers = []
    if fix.speedup is not None:
        numbers.append(f"{fix.speedup:.2f}x")
    fidelity = fmt_fidelity(fix.fidelity)
    if fidelity:
        numbers.append(fidelity)
    if fix.cost_s:
        numbers.append(f"measured in {fmt_seconds(fix.cost_s)}")
    return f"{fix.id}: {fix.status}" + (f" ({'; '.join(numbers)})" if numbers else ""), fix.reason


def paste_blocks(report: Report, hints: list[Hint]) -> list[tuple[str, list[str]]]:
    """``(label, code lines)`` per open hint: printed below the table, never wrapped."""
    return [(hint_label(h, report), h.fix.splitlines() or [""]) for h in hints if h.fix]


# -- plain text ---------------------------------------------------------------------------------------
def render_plain(report: Report, width: int | None = None) -> str:
    from perfcallbacks.hints import gain_is_stated

    width = width or terminal_width()
    hints = sort_hints(report.open_hints)
    out = [header_line(report), title_line(report, hints)]
    for hint in hints:
        mark = {"critical": "!!", "warning": "! ", "info": "i "}.get(hint.severity, "  ")
        head = f"{mark} [{hint_label(hint, report)}] {hint.message}"
        if not gain_is_stated(hint):
            head += f" (estimated {fmt_impact(hint.impact)})"
        out.extend(textwrap.wrap(head, width, subsequent_indent="     ", break_long_words=False,
                                 break_on_hyphens=False))
        if hint.evidence:
            out.extend(textwrap.wrap(f"evidence: {fmt_evidence(hint.evidence)}", width, initial_indent="     ",
                                     subsequent_indent="     ", break_long_words=False, break_on_hyphens=False))
    out.extend(resolved_lines(report))
    if report.fixes:
        out.append("Fixes (guarded: measured here before kept):")
        for fix in report.fixes:
            head, reason = fix_lines(fix)
            out.extend(textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="     ",
                                     break_long_words=False, break_on_hyphens=False))
            if reason:
                out.extend(textwrap.wrap(reason, width, initial_indent="     ", subsequent_indent="     ",
                                         break_long_words=False, break_on_hyphens=False))
    blocks = paste_blocks(report, hints)
    if blocks:
        out.append("To fix (paste as is; lines are never wrapped):")
        for label, lines in blocks:
            out.append(f"  [{label}]")
            out.extend(f"    {line}" for line in lines)
    out.append(overhead_line(report))
    if report.check_failures:
        out.append(f"{len(report.check_failures)} check(s) failed internally and were skipped (see DEBUG log)")
    return "\n".join(out)


# -- rich ------------------------------------------------------------------------------------------------
def rich_renderables(report: Report) -> list[Any]:
    """The report as rich renderables, for a console that decides the width (e.g. Lightning's
    ``RichProgressBar`` console). Code blocks are ``Text`` with ``no_wrap`` and ``overflow="ignore"``:
    they are printed whole, one line per line of code."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    hints = sort_hints(report.open_hints)
    items: list[Any] = [Text(header_line(report), style="bold"), Text(title_line(report, hints))]
    if hints:
        table = Table(box=box.SIMPLE_HEAD, show_lines=False, pad_edge=False, expand=False)
        longest = max(len(hint_label(h, report)) for h in hints)
        table.add_column("sev", no_wrap=True)
        table.add_column("id", no_wrap=True, min_width=min(longest, 30))
        table.add_column("finding", overflow="fold", ratio=1)
        table.add_column("gain", no_wrap=True, justify="right")
        for hint in hints:
            colour = _COLOURS.get(hint.severity, "white")
            finding = Text(hint.message)
            if hint.evidence:
                finding.append("\n" + fmt_evidence(hint.evidence), style="dim")
            table.add_row(Text(_SHORT.get(hint.severity, hint.severity), style=colour),
                          hint_label(hint, report), finding, fmt_impact(hint.impact))
        items.append(table)
    items.extend(Text(line, style="green") for line in resolved_lines(report))
    if report.fixes:
        items.append(Text("Fixes (guarded: measured here before kept):", style="bold"))
        for fix in report.fixes:
            head, reason = fix_lines(fix)
            colour = "green" if fix.applied else "dim"
            items.append(Text("  " + head, style=colour))
            if reason:
                items.append(Text("     " + reason))
    blocks = paste_blocks(report, hints)
    if blocks:
        items.append(Text("To fix (paste as is; lines are never wrapped):", style="bold"))
        for label, lines in blocks:
            items.append(Text(f"  [{label}]", style="bold"))
            for line in lines:
                items.append(Text("    " + line, no_wrap=True, overflow="ignore"))
    items.append(Text(overhead_line(report), style="dim"))
    if report.check_failures:
        items.append(Text(f"{len(report.check_failures)} check(s) failed internally and were skipped "
                          "(see DEBUG log)", style="dim"))
    return items


def print_rich(report: Report, console: Any) -> None:
    """Print the report on an existing rich ``Console`` (its width, its live display)."""
    for item in rich_renderables(report):
        console.print(item, soft_wrap=getattr(item, "no_wrap", False) or False, highlight=False)


def render_rich(report: Report, width: int | None = None) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=width or terminal_width(),
                      color_system="standard", highlight=False)
    print_rich(report, console)
    return buffer.getvalue().rstrip()


def render_report(report: Report, color: bool | None = None, width: int | None = None) -> str:
    """Readable text; colour when asked or when stdout is a terminal and rich is installed."""
    if color is None:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if color:
        try:
            return render_rich(report, width=width)
        except ImportError:
            pass
    return render_plain(report, width=width)


# -- Markdown and HTML (trackers, notebooks) ---------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_markdown(report: Report) -> str:
    """Markdown: a table of open hints, resolved hints, fixes, and the code as fenced blocks."""
    hints = sort_hints(report.open_hints)
    out = [f"**{header_line(report)}**", "", title_line(report, hints)]
    if hints:
        out += ["", "| severity | id | finding | estimated gain |", "|---|---|---|---|"]
        for hint in hints:
            out.append(f"| {hint.severity} | `{hint_label(hint, report)}` | {_md_cell(hint.message)} | "
                       f"{fmt_impact(hint.impact)} |")
    resolved = resolved_lines(report)
    if resolved:
        out += [""] + [f"- {line}" for line in resolved]
    if report.fixes:
        out += ["", "| fix | outcome | reason |", "|---|---|---|"]
        for fix in report.fixes:
            head, reason = fix_lines(fix)
            out.append(f"| `{fix.id}` | {_md_cell(head.split(': ', 1)[1])} | {_md_cell(reason)} |")
    for label, lines in paste_blocks(report, hints):
        out += ["", f"`{label}`:", "", "```python", *lines, "```"]
    out += ["", overhead_line(report)]
    return "\n".join(out)


def render_html(report: Report) -> str:
    """HTML for notebooks (``Report._repr_html_``); everything escaped."""
    esc = html.escape
    hints = sort_hints(report.open_hints)
    parts = [f"<div class='perfcallbacks-report'><p><b>{esc(header_line(report))}</b></p>",
             f"<p>{esc(title_line(report, hints))}</p>"]
    if hints:
        parts.append("<table><thead><tr><th>severity</th><th>id</th><th>finding</th><th>estimated gain</th>"
                     "</tr></thead><tbody>")
        for hint in hints:
            parts.append(f"<tr><td>{esc(hint.severity)}</td><td><code>{esc(hint_label(hint, report))}</code></td>"
                         f"<td>{esc(hint.message)}</td><td>{esc(fmt_impact(hint.impact))}</td></tr>")
        parts.append("</tbody></table>")
    for line in resolved_lines(report):
        parts.append(f"<p>{esc(line)}</p>")
    if report.fixes:
        parts.append("<table><thead><tr><th>fix</th><th>outcome</th><th>reason</th></tr></thead><tbody>")
        for fix in report.fixes:
            head, reason = fix_lines(fix)
            parts.append(f"<tr><td><code>{esc(fix.id)}</code></td><td>{esc(head.split(': ', 1)[1])}</td>"
                         f"<td>{esc(reason)}</td></tr>")
        parts.append("</tbody></table>")
    for label, lines in paste_blocks(report, hints):
        parts.append(f"<p><code>{esc(label)}</code>:</p><pre>{esc(chr(10).join(lines))}</pre>")
    parts.append(f"<p><small>{esc(overhead_line(report))}</small></p></div>")
    return "".join(parts)
