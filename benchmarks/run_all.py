"""Run the committed benchmarks one after another (``make bench``); each writes its own results/ JSON + table.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_all.py                 # all of them (long: tens of minutes)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_all.py impacts padding # only these

Each benchmark measures its ratios side by side in one process; running them one at a time keeps
them from competing for the cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("callback_int8", "padding", "impacts", "quantization", "int8_backends", "overhead_lightning",
              "overhead_hf", "debug_mode", "cnn_fixes", "workers_restart")


def main(argv: list[str]) -> int:
    names = argv or [n for n in BENCHMARKS if (HERE / f"{n}.py").exists()]
    unknown = [n for n in names if not (HERE / f"{n}.py").exists()]
    if unknown:
        print(f"run_all: unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        print(f"== {name}: exit {code} in {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
