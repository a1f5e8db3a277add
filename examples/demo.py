"""The main demo (``make demo``): example (1) end to end on a CPU, in a few minutes.

Fine-tunes the offline MiniLM on a real text corpus (docstrings of installed
packages, labelled by library) three ways:

1. a naive Lightning setup, with ``PerfHintCallback`` printing what it measured;
2. the hints applied (dynamic padding, length-grouped batches, tokenise once),
   with the measured throughput before/after;
3. predict with ``PerfHintCallback(auto_apply=True)``: the fixes are decided on the
   predict job itself, only when measuring pays for itself on the job, and kept only
   if faster and faithful on enough of the job's rows.

Then it summarises the hints, the fixes (speedup, fidelity, what measuring cost) and
where the JSON reports went (render one again with ``perfhints report FILE``). The
CNN counterpart (channels_last, cudnn.benchmark hints on a small ResNet) is
``python examples/lightning/image_classification.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lightning"))

from text_classification import main as text_classification  # noqa: E402

# Small on purpose: the whole demo should stay within ~2-3 minutes on 2 CPU cores.
DEMO_ARGS = ["--fixed", "--auto-apply", "--steps", "10", "--warmup-steps", "5", "--per-label", "80",
             "--out", "runs/demo"]


def main() -> None:
    start = time.perf_counter()
    result = text_classification(DEMO_ARGS)
    print("\n" + "=" * 80 + "\nperfcallbacks demo summary\n" + "=" * 80)
    print(f"hints on the naive run : {', '.join(result['naive_hints']) or 'none'}")
    print(f"hints after the fixes  : {', '.join(result.get('fixed_hints', [])) or 'none'}")
    naive, fixed = result["naive_samples_per_s"], result.get("fixed_samples_per_s")
    if fixed:
        print(f"training throughput    : {naive:.1f} -> {fixed:.1f} samples/s ({fixed / naive:.2f}x, measured)")
    for fix in result.get("fixes", []):
        speed = "" if fix["speedup"] is None else f"{fix['speedup']:.2f}x"
        fid = fix.get("fidelity") or {}
        rows = f" on {int(fid['rows'])} rows" if fid.get("rows") else ""
        fidelity = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in fid.items()
                             if k in ("cosine_min", "argmax_agreement") and isinstance(v, (int, float))) + rows
        cost = f"measuring cost {fix['cost_s']:.2f}s" if fix.get("cost_s") else "nothing measured"
        print(f"auto fix {fix['id']:<21}: {fix['status']:<8} {speed:>6}  {fidelity}  {cost}  ({fix['reason']})")
    print("CNN hints and the channels-last fix: python examples/lightning/image_classification.py")
    print("reports                : " + ", ".join(str(p) for p in sorted(Path("runs/demo").rglob("perf_hints.json"))))
    print("render one             : perfhints report runs/demo/naive/perf_hints.json")
    print(f"demo wall time         : {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
