# Two commands do all set-up on a fresh machine:
#   make demo   -> creates .venv, installs glandseg, segments the bundled example (demo-out/)
#   make test   -> creates .venv, installs glandseg, runs the test suite (not the slow tests)
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
GLAS ?= ../shared/glas

.PHONY: demo test test-all lint bench evaluate

$(BIN)/glandseg: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(BIN)/glandseg
	$(BIN)/glandseg demo --out demo-out

test: $(BIN)/glandseg
	$(BIN)/python -m pytest -q

test-all: $(BIN)/glandseg
	$(BIN)/python -m pytest -q -m ""

lint: $(BIN)/glandseg
	$(BIN)/ruff check glandseg tests benchmarks

evaluate: $(BIN)/glandseg
	$(BIN)/glandseg evaluate --model glas-unet --data $(GLAS) --out runs/eval-glas-unet
