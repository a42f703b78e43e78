# Set-up on a fresh CPU machine: `make demo` or `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint install bench clean

# Installs through constraints/cpu.txt so that torch resolves to the local +cpu wheel and no
# CUDA build can slip in; then checks that it did not.
$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints/cpu.txt -e '.[dev]'
	$(PY) -c "import sys, torch; sys.exit(0 if torch.__version__.endswith('+cpu') else 'torch is not the CPU build: ' + torch.__version__)"
	@if $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then echo "CUDA packages slipped into $(VENV)" >&2; exit 1; fi
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/metadino demo

test: $(STAMP)
	$(PY) -m pytest -q

# ruff (lint + import order) and mypy --strict over src/metadino, as configured in pyproject.toml
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
