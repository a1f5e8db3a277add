"""Results of the GPU suite: ``benchmarks/gpu/results/<device-name>.json`` plus a markdown table beside it.

The JSON holds everything (environment, every claim with its raw numbers, the
timings); the ``.md`` is the short table people read and the README's GPU
column is filled from. One file pair per device name, so runs on different
GPUs sit side by side and a rerun on the same GPU replaces its own pair.

Example::

    >>> from results_io import device_slug
    >>> device_slug("NVIDIA H200"), device_slug("NVIDIA A100-SXM4-80GB")
    ('nvidia-h200', 'nvidia-a100-sxm4-80gb')
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from claims import Claim, counts

SCHEMA = "perfcallbacks/gpu-check-v1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_slug(name: str) -> str:
    """File-name form of a device name: lower case, runs of other characters as one ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return slug or "unknown-device"


def build_results(*, device: dict[str, Any], environment: dict[str, Any], claims: list[Claim],
                  timings: dict[str, Any] | None = None, tests: dict[str, Any] | None = None,
                  elapsed_s: float | None = None, created: str | None = None) -> dict[str, Any]:
    """The results document (plain JSON types only)."""
    return {
        "schema": SCHEMA,
        "created": created,
        "device": device,
        "environment": environment,
        "tests": tests or {},
        "summary": counts(claims),
        "elapsed_s": elapsed_s,
        "claims": [c.to_dict() for c in claims],
        "timings": timings or {},
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(results: dict[str, Any]) -> str:
    """The results as a markdown page: a header, the counts, one row per claim."""
    device = results.get("device") or {}
    env = results.get("environment") or {}
    summary = results.get("summary") or {}
    lines = [
        f"# GPU check: {device.get('name', 'unknown device')}",
        "",
        f"Command: `make gpu-check` (raw numbers: `{device_slug(device.get('name', ''))}.json` beside this file).",
        f"Run {results.get('created') or '-'}; torch {env.get('torch', '-')} (CUDA {env.get('cuda', '-')}), "
        f"driver {env.get('driver', '-')}, python {env.get('python', '-')}, install mode {env.get('mode', '-')}; "
        f"{results.get('elapsed_s') and round(results['elapsed_s'])} s of benchmarks.",
        "",
        "Verdicts: " + ", ".join(f"{k} {v}" for k, v in summary.items()) + ".",
    ]
    tests = results.get("tests") or {}
    if tests:
        lines.append("Tests (`tests/gpu`): " + ", ".join(f"{k} {v}" for k, v in tests.items()) + ".")
    lines += ["", "| claim | what | product says | measured | verdict | note |", "|---|---|---|---|---|---|"]
    columns = ("id", "what", "claimed", "measured", "verdict", "note")
    for c in results.get("claims") or []:
        lines.append("| " + " | ".join(_cell(c.get(k)) for k in columns) + " |")
    lines.append("")
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(results: dict[str, Any], folder: str | Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<slug>.json`` and ``<slug>.md`` into ``folder`` (created if missing); returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slug = device_slug((results.get("device") or {}).get("name", ""))
    json_path, md_path = folder / f"{slug}.json", folder / f"{slug}.md"
    _atomic_write(json_path, json.dumps(results, indent=2, sort_keys=False) + "\n")
    _atomic_write(md_path, markdown_table(results))
    return json_path, md_path


def parse_pytest_summary(text: str) -> dict[str, int]:
    """Counts from pytest's closing line (``3 passed, 21 skipped in 4.2s``); empty when none is found."""
    found: dict[str, int] = {}
    for line in reversed(text.splitlines()):
        pairs = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)", line)
        if pairs and (" in " in line or line.strip().startswith("=")):
            for number, word in pairs:
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                found[key] = found.get(key, 0) + int(number)
            break
    return found
