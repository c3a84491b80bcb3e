# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs glandseg (core: ONNX Runtime, no torch), segments
#                  the bundled example (demo-out/)
#   make test   -> creates .venv, installs glandseg with everything it tests (torch included),
#                  runs the test suite (not the slow tests)
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
GLAS ?= ../shared/glas

.PHONY: demo test test-all lint bench evaluate

CORE = $(VENV)/.glandseg-core
DEV = $(VENV)/.glandseg-dev

$(CORE): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

$(DEV): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(CORE)

demo: $(CORE)
	$(BIN)/glandseg demo --out demo-out

test: $(DEV)
	$(BIN)/python -m pytest -q

test-all: $(DEV)
	$(BIN)/python -m pytest -q -m ""

lint: $(DEV)
	$(BIN)/ruff check glandseg tests benchmarks

evaluate: $(CORE)
	$(BIN)/glandseg evaluate --model glas-unet --data $(GLAS) --out runs/eval-glas-unet
