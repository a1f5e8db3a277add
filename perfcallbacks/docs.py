"""Regenerate the hint catalog table in README.md from the registry.

Run ``python -m perfcallbacks.docs`` after adding a hint; a test keeps them in sync.
"""

from __future__ import annotations

import sys
from pathlib import Path

from perfcallbacks.hints import REGISTRY

BEGIN = "<!-- hint-catalog:begin -->"
END = "<!-- hint-catalog:end -->"


def catalog_table() -> str:
    rows = ["| id | category | severity | fires when |", "|---|---|---|---|"]
    for spec in REGISTRY.values():
        rows.append(f"| `{spec.id}` | {spec.category} | {spec.severity} | {spec.what} |")
    return "\n".join(rows)


def update_readme(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    new = text[:start] + "\n" + catalog_table() + "\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("updated" if update_readme(readme) else "up to date")
