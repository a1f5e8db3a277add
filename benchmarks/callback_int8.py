"""auto_apply on the user's whole inference call (issue-11 acceptance), MiniLM on CPU, three front-ends.

Times the WHOLE call a user makes, the guard's own measuring included, side by side with the
plain call, in one process, interleaved (plain / guarded alternate; each guarded call is
bracketed by plain calls and its ratio is the mean of its two neighbours / its own time):

* ``lightning``: ``trainer.predict(module, loader)`` plain vs with ``PerfHintCallback(auto_apply=True)``;
* ``hf``: ``Trainer.predict(dataset)`` plain vs a Trainer built with ``HFPerfHints(auto_apply=True)``;
* ``plain``: ``model(**batch)`` per batch vs ``advisor.optimize_inference(model, first_batch,
  expected_batches=len(loader))`` + the same loop + ``advisor.finish_inference()``.

The model is the offline all-MiniLM-L6-v2 with mean pooling (sentence embeddings), real sentences
(docstrings of installed packages), batch 32, dynamic padding in arrival order. Scenarios:

a. ``short``: a 128-sentence job, cold (fresh ``PERFCALLBACKS_CACHE`` folder and in-process memo
   cleared before every guarded call), target >= 0.95x;
b. ``long``: a 1024-sentence job, cold, target >= 1.2x at embedding cosine mean >= 0.99 (all sentences
   against the plain fp32 outputs of the same pair);
c. ``repeat``: the same callback / Advisor (and Trainer) called again on the same job after its cold
   call (warm in-process decision), target >= 1.25x from the second call on;
d. ``process``: the cold long job in a fresh subprocess with a fresh cache folder, then a second
   subprocess with the same folder (warm disk cache): the warm guard cost (the fixes' ``cost_s``)
   and whole-call time against the cold one's, target <= 20%.

Run (writes ``benchmarks/results/callback_int8.json``, prints the markdown table)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/callback_int8.py           # full run
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/callback_int8.py --quick   # 64 / 128 sentences, 1 pair
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks._minilm_jobs import BATCH_SIZE, FRONT_ENDS, MAX_TOKENS, Call, Jobs, cosine, sentences  # noqa: E402

RESULTS = HERE / "results" / "callback_int8.json"
FIX = "dynamic-quantization"
TARGETS = {"short": ">= 0.95x", "long": ">= 1.2x, cosine mean >= 0.99", "repeat": ">= 1.25x from call 2 on",
           "process": "warm guard cost <= 20% of cold"}


def uptime() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {"at": time.strftime("%H:%M:%S"), "load_1m": round(one, 2), "load_5m": round(five, 2),
            "load_15m": round(fifteen, 2), "cpus": os.cpu_count()}


def source_state(path: str) -> dict[str, Any]:
    """Which version of a source file was measured: its blob hash and whether it differs from HEAD."""
    root = HERE.parent
    try:
        blob = subprocess.run(["git", "hash-object", path], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", path], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        head = subprocess.run(["git", "log", "-1", "--format=%h %s", "--", path], cwd=root, capture_output=True,
                              text=True).stdout.strip()
        return {"path": path, "blob": blob, "uncommitted_changes": bool(dirty), "last_commit": head}
    except OSError as err:
        return {"path": path, "error": str(err)}


def cold_cache(root: Path) -> Path:
    """A fresh decision-cache folder and an empty in-process memo: the guard starts from nothing."""
    from perfcallbacks.fixes.pipeline import clear_memo

    folder = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
    os.environ["PERFCALLBACKS_CACHE"] = str(folder)
    clear_memo()
    return folder


def fix_summary(call: Call) -> dict[str, Any]:
    """What the report says about the guard on this call: the int8 fix, every fix's cost, the overhead split."""
    fixes = {f["id"]: f for f in call.fixes}
    guard_cost = sum(float(f.get("cost_s") or 0.0) for f in call.fixes)
    out: dict[str, Any] = {
        "guard_cost_s": round(guard_cost, 3),
        "overhead_s": None if call.overhead_s is None else round(call.overhead_s, 3),
        "overhead_total_s": None if call.overhead_total_s is None else round(call.overhead_total_s, 3),
        "probes": call.probes,
        # Observation, checks and probes (the report's overhead_s less the fixes' measuring).
        "observation_s": None if call.overhead_s is None else round(call.overhead_s - guard_cost, 3),
        "guard_share_of_call": round(guard_cost / call.seconds, 4) if call.seconds else None,
        "overhead_share_of_call": round(call.overhead_s / call.seconds, 4) if call.seconds and call.overhead_s else None,
        "fixes": {k: {"status": f["status"], "cost_s": f.get("cost_s"), "speedup": f.get("speedup")}
                  for k, f in fixes.items()},
    }
    q = fixes.get(FIX)
    if q is not None:
        d = q.get("details") or {}
        out[FIX] = {"status": q["status"], "reason": q["reason"], "speedup": q.get("speedup"),
                    "cost_s": q.get("cost_s"), "fidelity": q.get("fidelity"),
                    **{k: d[k] for k in ("calls_measured", "ratios", "speedup_spread", "first_call_s",
                                         "expected_calls", "refinements", "reused", "backend", "layers_fp32",
                                         "build_s", "build_timing_s", "backend_choice", "estimated_cost_s",
                                         "shadow_calls_needed", "implausible_ratios_dropped") if k in d}}
    return out


def pair_row(kind: str, before: Call, guarded: Call, after: Call | None, call_no: int) -> dict[str, Any]:
    plain_s = before.seconds if after is None else (before.seconds + after.seconds) / 2
    row = {"kind": kind, "call": call_no, "plain_s": round(plain_s, 3),
           "plain_neighbours_s": [round(before.seconds, 3)] + ([] if after is None else [round(after.seconds, 3)]),
           "guarded_s": round(guarded.seconds, 3), "ratio": round(plain_s / guarded.seconds, 4),
           "setup_s": {"plain": round(before.setup_s, 3), "guarded": round(guarded.setup_s, 3)},
           "threads_after": guarded.threads_after, **cosine(before.embeddings, guarded.embeddings),
           **fix_summary(guarded), "load_1m": round(os.getloadavg()[0], 2)}
    row["guard_share_of_plain"] = round(row["guard_cost_s"] / plain_s, 4) if plain_s else None
    return row


def print_row(fe: str, row: dict[str, Any]) -> None:
    q = row.get(FIX, {})
    print(f"  {fe:9s} {row['kind']:6s} call {row['call']}: plain {row['plain_s']:.2f}s guarded {row['guarded_s']:.2f}s "
          f"ratio {row['ratio']:.3f}x cos {row['cosine_mean']:.4f}/{row['cosine_min']:.4f} "
          f"int8 {q.get('status')} cost {q.get('cost_s')} guard share {row['guard_share_of_call']} "
          f"overhead {row['overhead_s']} load {row['load_1m']}", flush=True)


def run_sequence(jobs: Jobs, fe: str, rows: list, plan: list[tuple[str, bool]], root: Path,
                 final_plain: bool = True) -> list[dict[str, Any]]:
    """``P G P G ... P``: each guarded call (``(kind, new_tool)``) between two plain calls.

    ``new_tool`` starts a new callback / Advisor (and Trainer) on a cold cache; otherwise the previous
    one is called again (its in-process decision is warm). Without ``final_plain`` the last guarded
    call is compared with the plain call before it only.
    """
    out: list[dict[str, Any]] = []
    before = jobs.plain(fe, rows)
    tool = trainer = None
    call_no = 0
    for kind, new_tool in plan:
        if new_tool or tool is None:
            cold_cache(root)
            tool, call_no = jobs.new_tool(fe), 0
            trainer = jobs.lightning_trainer(tool) if fe == "lightning" else jobs.hf_trainer(tool) if fe == "hf" else None
        call_no += 1
        guarded = jobs.guarded(fe, rows, tool, trainer=trainer)
        last = len(out) == len(plan) - 1
        after = jobs.plain(fe, rows) if final_plain or not last else None
        row = pair_row(kind, before, guarded, after, call_no)
        print_row(fe, row)
        out.append(row)
        before = after
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {}
    ratios = [r["ratio"] for r in rows]
    q = [r.get(FIX, {}) for r in rows]
    return {"pairs": len(rows), "plain_s_median": round(statistics.median(r["plain_s"] for r in rows), 3),
            "guarded_s_median": round(statistics.median(r["guarded_s"] for r in rows), 3),
            "ratio_median": round(statistics.median(ratios), 4), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cosine_mean_worst": min(r["cosine_mean"] for r in rows),
            "cosine_min_worst": min(r["cosine_min"] for r in rows),
            "int8_status": sorted({x.get("status") for x in q if x.get("status")}),
            "int8_speedup_median": _median([x.get("speedup") for x in q]),
            "int8_cost_s_median": _median([x.get("cost_s") for x in q]),
            "guard_cost_s_median": _median([r["guard_cost_s"] for r in rows]),
            "guard_share_of_call_median": _median([r["guard_share_of_call"] for r in rows]),
            "guard_share_of_plain_median": _median([r.get("guard_share_of_plain") for r in rows]),
            # The guard's own paired per-batch timings (shadow calls): int8 vs fp32 on the same batches.
            "int8_batch_ratios": [x for q_ in q for x in (q_.get("ratios") or [])],
            "overhead_s_median": _median([r["overhead_s"] for r in rows]),
            "observation_s_median": _median([r["observation_s"] for r in rows])}


def _median(values: list[Any]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


# -- scenario d: two processes sharing a cache folder ------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """One process: (a plain call, then) the guarded long job on ``--cache`` (memo empty: a new process)."""
    texts = json.loads(Path(args.texts).read_text())
    start = time.perf_counter()
    jobs = Jobs.load(texts=texts)
    os.environ["PERFCALLBACKS_CACHE"] = args.cache
    warm_up = jobs.plain(args.child, jobs.rows[: 2 * BATCH_SIZE])  # process warm-up (untimed), as in the parent
    load_s = time.perf_counter() - start
    guarded = jobs.guarded(args.child, jobs.rows, jobs.new_tool(args.child))
    if args.process_plain:
        row = pair_row("process", jobs.plain(args.child, jobs.rows), guarded, None, 1)
    else:  # no plain call in this process (time): the parent's plain medians are the reference
        row = {"kind": "process", "guarded_s": round(guarded.seconds, 3), "threads_after": guarded.threads_after,
               **fix_summary(guarded), "load_1m": round(os.getloadavg()[0], 2)}
    del warm_up
    row["load_s"] = round(load_s, 2)
    Path(args.child_out).write_text(json.dumps(row))


def run_processes(fe: str, texts_file: Path, root: Path, timeout_s: float, process_plain: bool) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="shared-cache-", dir=root))
    out: dict[str, Any] = {"cache": str(folder)}
    for which in ("cold", "warm"):
        result = root / f"{fe}-{which}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", fe, "--cache", str(folder),
               "--texts", str(texts_file), "--child-out", str(result),
               "--process-plain" if process_plain else "--no-process-plain"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "PERFCALLBACKS_CACHE": str(folder)})
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not result.exists():
            out[which] = {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
            print(f"  {fe:9s} process {which}: FAILED exit {proc.returncode}\n{proc.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(result.read_text())
        row["process_wall_s"] = round(wall, 2)
        row["cache_files"] = sorted(p.name for p in folder.iterdir())
        out[which] = row
        q = row.get(FIX, {})
        print(f"  {fe:9s} process {which}: guarded {row['guarded_s']:.2f}s int8 {q.get('status')} cost "
              f"{q.get('cost_s')} guard {row['guard_cost_s']} overhead {row['overhead_s']} "
              f"wall {row['process_wall_s']} load {row['load_1m']}", flush=True)
    cold, warm = out.get("cold", {}), out.get("warm", {})
    if "guarded_s" in cold and "guarded_s" in warm:
        cc, wc = cold.get("guard_cost_s") or 0.0, warm.get("guard_cost_s") or 0.0
        out["warm_guard_cost_share_of_cold"] = round(wc / cc, 4) if cc else None
        out["warm_guarded_s_share_of_cold"] = round(warm["guarded_s"] / cold["guarded_s"], 4)
        out["warm_overhead_share_of_cold"] = (round(warm["overhead_s"] / cold["overhead_s"], 4)
                                              if cold.get("overhead_s") else None)
    return out


# -- report ---------------------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    lines = ["| front-end | scenario | pairs | plain | guarded (whole call) | ratio median [min-max] | "
             "int8 fix: status, speedup, cost_s | guard cost / call | cosine mean / min | target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for fe, scen in result["front_ends"].items():
        for name in ("short", "long", "repeat"):
            s = scen.get(name, {}).get("summary")
            if not s:
                continue
            status = "/".join(s["int8_status"]) or "-"
            lines.append(
                f"| {fe} | {name} | {s['pairs']} | {s['plain_s_median']:.2f} s | {s['guarded_s_median']:.2f} s | "
                f"**{s['ratio_median']:.2f}x** [{s['ratio_min']:.2f}-{s['ratio_max']:.2f}] | {status}, "
                f"{_x(s['int8_speedup_median'])}, {_s(s['int8_cost_s_median'])} | "
                f"{_pct(s['guard_share_of_call_median'])} (+{_s(s['observation_s_median'])} observing) | "
                f"{s['cosine_mean_worst']:.4f} / {s['cosine_min_worst']:.4f} | {TARGETS[name]} |")
        p = scen.get("process")
        if p and "guarded_s" in p.get("cold", {}) and "guarded_s" in p.get("warm", {}):
            c, w = p["cold"], p["warm"]
            plain = (f"{c['plain_s']:.2f} s, {w['plain_s']:.2f} s" if "plain_s" in c and "plain_s" in w
                     else "(parent's long)")
            ratio = f"{c['ratio']:.2f}x, {w['ratio']:.2f}x" if "ratio" in c and "ratio" in w else "-"
            cos = (f"{w['cosine_mean']:.4f} / {w['cosine_min']:.4f}" if "cosine_mean" in w else "-")
            lines.append(
                f"| {fe} | process | cold, warm | {plain} | {c['guarded_s']:.2f} s, {w['guarded_s']:.2f} s | {ratio} | "
                f"{c.get(FIX, {}).get('status')} -> {w.get(FIX, {}).get('status')}, guard cost "
                f"{_s(c['guard_cost_s'])} -> {_s(w['guard_cost_s'])} | warm/cold guard cost "
                f"**{_pct(p.get('warm_guard_cost_share_of_cold'))}**, whole call "
                f"{_pct(p.get('warm_guarded_s_share_of_cold'))} | {cos} | {TARGETS['process']} |")
    return "\n".join(lines)


def _x(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _s(v: Any) -> str:
    return "-" if v is None else f"{v:.2f} s"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 / 128 sentences, one pair each (a smoke run)")
    parser.add_argument("--short", type=int, default=128, help="sentences in the short job")
    parser.add_argument("--long", type=int, default=1024, help="sentences in the long job")
    parser.add_argument("--short-pairs", type=int, default=3)
    parser.add_argument("--long-pairs", type=int, default=2, help="cold long calls (each a new callback / Advisor)")
    parser.add_argument("--repeat-calls", type=int, default=2, help="warm calls after each cold long call")
    parser.add_argument("--front-ends", default=",".join(FRONT_ENDS))
    parser.add_argument("--scenarios", default="short,long,process")
    parser.add_argument("--final-plain", action=argparse.BooleanOptionalAction, default=True,
                        help="end each sequence with a plain call (every guarded call between two plain ones)")
    parser.add_argument("--process-front-ends", default=",".join(FRONT_ENDS))
    parser.add_argument("--process-plain", action=argparse.BooleanOptionalAction, default=True,
                        help="a plain call in each subprocess too (else only the guarded one)")
    parser.add_argument("--max-wall-s", type=float, default=None,
                        help="start no new sequence after this many seconds (recorded as not run)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--child", choices=FRONT_ENDS, help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.short, args.long, args.short_pairs, args.long_pairs, args.repeat_calls = 64, 128, 1, 1, 1
    front_ends = [f for f in args.front_ends.split(",") if f]
    scenarios = set(args.scenarios.split(","))
    started = time.perf_counter()
    loads = [uptime()]
    root = Path(tempfile.mkdtemp(prefix="pc-int8-bench-"))
    texts = sentences(max(args.short, args.long))
    texts_file = root / "texts.json"
    texts_file.write_text(json.dumps(texts[: args.long]))
    jobs = Jobs.load(texts=texts)
    threads = torch.get_num_threads()
    short_rows, long_rows = jobs.rows[: args.short], jobs.rows[: args.long]
    lengths = [len(r["input_ids"]) for r in long_rows]
    for fe in front_ends:  # process warm-up (lazy init, first-call kernels) for both sides alike, untimed
        jobs.plain(fe, jobs.rows[: 2 * BATCH_SIZE])
    print(f"{len(texts)} sentences, tokens min/median/max {min(lengths)}/{int(statistics.median(lengths))}/"
          f"{max(lengths)}, {threads} threads, load {loads[0]}", flush=True)

    result: dict[str, Any] = {
        "benchmark": "auto_apply on the whole inference call, guard included (issue 11), MiniLM-L6 embeddings, CPU",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "capability": torch.backends.cpu.get_cpu_capability(), "threads": threads,
                    "torch": torch.__version__},
        "job": {"short_sentences": len(short_rows), "long_sentences": len(long_rows), "batch_size": BATCH_SIZE,
                "max_tokens": MAX_TOKENS, "padding": "dynamic (DataCollatorWithPadding), arrival order",
                "tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)}},
        "method": ("whole call timed (guard, observation and probes included); plain and guarded alternate "
                   "P G P G ... P, each guarded call's ratio = mean of its two plain neighbours / its time; "
                   "cold = fresh PERFCALLBACKS_CACHE folder + clear_memo() before a new callback/Advisor; "
                   "Trainer construction timed apart (setup_s); cosine over every sentence vs the plain call"),
        "targets": TARGETS, "load": loads,
    }
    not_run: list[str] = []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def time_left(what: str) -> bool:
        # Partial results reach the file after every sequence: a stopped run keeps what it measured.
        out_path.write_text(json.dumps({**result, "partial": True, "not_run": not_run}, indent=2))
        if args.max_wall_s is not None and time.perf_counter() - started > args.max_wall_s:
            not_run.append(what)
            print(f"  not run (past --max-wall-s {args.max_wall_s:g}): {what}", flush=True)
            return False
        return True

    result["front_ends"] = {fe: {} for fe in front_ends}
    if "short" in scenarios:
        for fe in front_ends:
            if time_left(f"{fe} short"):
                rows = run_sequence(jobs, fe, short_rows, [("short", True)] * args.short_pairs, root,
                                    final_plain=args.final_plain)
                result["front_ends"][fe]["short"] = {"pairs": rows, "summary": summarise(rows)}
                loads.append(uptime())
    if "long" in scenarios:
        plan = []
        for _ in range(args.long_pairs):
            plan += [("long", True)] + [("repeat", False)] * args.repeat_calls
        for fe in front_ends:
            if time_left(f"{fe} long+repeat"):
                rows = run_sequence(jobs, fe, long_rows, plan, root, final_plain=args.final_plain)
                for kind in ("long", "repeat"):
                    mine = [r for r in rows if r["kind"] == kind]
                    if mine:
                        result["front_ends"][fe][kind] = {"pairs": mine, "summary": summarise(mine)}
                loads.append(uptime())
    if "process" in scenarios:
        for fe in [f for f in args.process_front_ends.split(",") if f in front_ends]:
            if time_left(f"{fe} process"):
                result["front_ends"][fe]["process"] = run_processes(fe, texts_file, root, timeout_s=1800,
                                                                    process_plain=args.process_plain)
                loads.append(uptime())
    result["not_run"] = not_run
    result["int8_candidate_source"] = source_state("perfcallbacks/fixes/quantize.py")
    result["threads_after"] = torch.get_num_threads()
    result["threads_unchanged"] = result["threads_after"] == threads
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["table"] = table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(result["table"])
    print(f"wall {result['wall_s']} s; loads {[l['load_1m'] for l in loads]}; written {args.out}")


if __name__ == "__main__":
    main()
