#!/usr/bin/env bash
# `make gpu-check`: the accelerator suite (tests/gpu, then benchmarks/gpu/run_gpu.py) in one command.
#
# Without an NVIDIA GPU (nvidia-smi absent, or listing no GPU) it downloads nothing: it reuses the
# project's .venv (`make install` creates it when missing), runs tests/gpu, where every GPU test is
# reported as skipped and the CPU-side ones run, and exits with pytest's status (0 on a green tree).
#
# On a GPU machine it takes the first Python whose torch sees the GPU:
#   1. $GPU_PYTHON, when set;
#   2. .venvs/gpu, when an earlier run installed it;
#   3. the machine's python3, when its torch already sees the GPU and it has lightning, transformers and
#      pytest (GPU images ship them, and their machines may reach no package index): the project runs
#      from this checkout through PYTHONPATH, nothing is installed. GPU_INSTALL=1 skips this step;
#   4. else it creates .venvs/gpu and installs the pinned CUDA torch ($TORCH_PIN: the index's Linux
#      wheel of torch 2.13.0 is the CUDA 13.0 build) and the project, pip install -e ".[dev]".
# Then tests/gpu, then the benchmarks, which write benchmarks/gpu/results/<device-name>.json and .md.
# Everything aims at GPU_CHECK_BUDGET_S seconds (default 400, install included; the issue allows 480):
# sections that would start past the budget are recorded as skipped, and a hard timeout backs it up.
# Exit status: 0 when the tests pass and no benchmark claim failed; 1 otherwise; 2 when no usable
# CUDA Python could be had on a GPU machine.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
ROOT=$(pwd)
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
GPU_VENV="${GPU_VENV:-.venvs/gpu}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-400}"
START=$(date +%s)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PERFCALLBACKS_CACHE=off

log() { printf '[gpu-check %s +%ss] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - START))" "$*"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }
cuda_python() {  # $1 sees a CUDA device through torch
    [ -n "$1" ] && "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}
has_stack() {  # $1 can import what the suite needs besides torch
    "$1" -c 'import lightning, transformers, pytest' >/dev/null 2>&1
}

PYTEST_LOG=$(mktemp "${TMPDIR:-/tmp}/gpu-check-pytest.XXXXXX")
trap 'rm -f "$PYTEST_LOG"' EXIT

run_tests() {  # $1 python, $2 timeout seconds
    log "tests/gpu with $1 (timeout $2 s)"
    timeout "$2" "$1" -m pytest -q -rs -p no:cacheprovider tests/gpu 2>&1 | tee "$PYTEST_LOG"
    return "${PIPESTATUS[0]}"
}

if ! has_gpu; then
    log "no NVIDIA GPU here (nvidia-smi absent or listing none): CPU mode, reusing .venv, nothing downloaded"
    PY="$ROOT/.venv/bin/python"
    if [ ! -x "$PY" ]; then
        log ".venv missing: make install"
        make install || exit 2
    fi
    run_tests "$PY" 600
    rc=$?
    "$PY" benchmarks/gpu/run_gpu.py || rc=1
    log "done (CPU mode): exit $rc"
    exit "$rc"
fi

log "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | paste -sd';' -)"
PY=""
MODE=""
if [ -n "${GPU_PYTHON:-}" ]; then
    cuda_python "$GPU_PYTHON" || { log "GPU_PYTHON=$GPU_PYTHON does not see a CUDA device"; exit 2; }
    PY="$GPU_PYTHON"; MODE="GPU_PYTHON"
elif [ -f "$GPU_VENV/.installed" ] && cuda_python "$GPU_VENV/bin/python"; then
    PY="$ROOT/$GPU_VENV/bin/python"; MODE="venv (reused)"
elif [ "${GPU_INSTALL:-0}" != 1 ] && cuda_python "$(command -v python3)" && has_stack "$(command -v python3)"; then
    PY="$(command -v python3)"; MODE="image"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    log "using the machine's python3 ($PY): its torch sees the GPU; the project runs from the checkout"
else
    log "installing $TORCH_PIN and the project into $GPU_VENV"
    python3 -m venv "$GPU_VENV" || exit 2
    timeout 300 "$GPU_VENV/bin/python" -m pip install --quiet "$TORCH_PIN" || { log "pip: $TORCH_PIN failed"; exit 2; }
    timeout "$(( $(left) > 60 ? $(left) - 60 : 60 ))" "$GPU_VENV/bin/python" -m pip install --quiet -e ".[dev]" \
        "$TORCH_PIN" || { log "pip: the project failed"; exit 2; }
    if ! cuda_python "$GPU_VENV/bin/python"; then
        log "the installed torch sees no GPU: $("$GPU_VENV/bin/python" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"
        exit 2
    fi
    touch "$GPU_VENV/.installed"
    PY="$ROOT/$GPU_VENV/bin/python"; MODE="venv (installed)"
fi
export GPU_CHECK_MODE="$MODE"
log "python: $PY ($MODE): $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)')"

# Tests get at most 40% of what is left; the benchmarks get the rest, less a margin for writing results.
TEST_S=$(( $(left) * 2 / 5 )); [ "$TEST_S" -lt 90 ] && TEST_S=90
run_tests "$PY" "$TEST_S"
test_rc=$?
BENCH_S=$(( $(left) - 20 )); [ "$BENCH_S" -lt 60 ] && BENCH_S=60
log "benchmarks (budget $BENCH_S s)"
timeout $((BENCH_S + 50)) "$PY" benchmarks/gpu/run_gpu.py --budget-s "$BENCH_S" --pytest-log "$PYTEST_LOG"
bench_rc=$?
rc=0
[ "$test_rc" -ne 0 ] && rc=1
[ "$bench_rc" -ne 0 ] && rc=1
log "done: tests exit $test_rc, benchmarks exit $bench_rc, results in benchmarks/gpu/results/"
exit "$rc"
