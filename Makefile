# One command each: `make demo`, `make test`. Both create .venv on first use.
# torch==2.13.0 is pinned here (the CPU build); pyproject keeps a range for real users.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0

.PHONY: install test test-fast test-matrix test-tf4 test-newest demo bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# The version matrix: the fast suite on (a) the pinned stack, (b) the latest transformers 4.x, (c) the newest
# torch + torchao + the onnx extra. (b) and (c) live in their own venvs under .venvs/ (built on first use).
# (c) lifts this machine's pip cap (constraints file) for its own install only: PIP_CONSTRAINT=/dev/null.
VENVS := .venvs
TF4_SPEC ?= transformers>=4.57,<5
NEWEST_SPEC ?= torch torchao
FAST := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
FAST_ARGS ?= -q -m "not slow" -p no:cacheprovider

$(VENVS)/tf4/.installed: pyproject.toml
	test -x $(VENVS)/tf4/bin/python || $(PYTHON) -m venv $(VENVS)/tf4
	$(VENVS)/tf4/bin/python -m pip install --quiet --upgrade pip
	$(VENVS)/tf4/bin/python -m pip install --quiet "$(TORCH_PIN)"
	$(VENVS)/tf4/bin/python -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)" "$(TF4_SPEC)"
	touch $@

$(VENVS)/newest/.installed: pyproject.toml
	test -x $(VENVS)/newest/bin/python || $(PYTHON) -m venv $(VENVS)/newest
	$(VENVS)/newest/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=/dev/null $(VENVS)/newest/bin/python -m pip install --quiet --upgrade $(NEWEST_SPEC)
	PIP_CONSTRAINT=/dev/null $(VENVS)/newest/bin/python -m pip install --quiet -e ".[dev,onnx,torchao]"
	touch $@

test-tf4: $(VENVS)/tf4/.installed
	$(VENVS)/tf4/bin/python -c "import torch, transformers; print('stack: torch', torch.__version__, 'transformers', transformers.__version__)"
	$(FAST) $(VENVS)/tf4/bin/python -m pytest $(FAST_ARGS)

test-newest: $(VENVS)/newest/.installed
	$(VENVS)/newest/bin/python -c "import torch, torchao, transformers; print('stack: torch', torch.__version__, 'torchao', torchao.__version__, 'transformers', transformers.__version__)"
	$(FAST) $(VENVS)/newest/bin/python -m pytest $(FAST_ARGS)

test-matrix: test-fast test-tf4 test-newest

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python examples/demo.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

# The accelerator suite (tests/gpu, benchmarks/gpu): installs its own pinned CUDA torch on a bare GPU machine,
# reports every GPU test as skipped on a CPU-only one.
gpu-check:
	bash benchmarks/gpu/check.sh

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
